"""Answers without the matrix: what ``layersens.sensitivity`` (and ``summarize_layer``, where it exists) cost in
memory and time against forming the dense Jacobian and summarizing it, each in a fresh process, each verified first.

    python benchmarks/run_summaries.py --overwrite      # (re)writes benchmarks/reports/summaries-cpu/
    python benchmarks/run_summaries.py --out DIR --rounds 2 --repeats 3 --spectrum-sample 1

Cases (see benchmarks/README.md, "Answers without the matrix"):

1. The shipped LeNet (``layersens.examples.LENET_DIGITS``), layer ``relu2``, 8 examples, ``max_memory="64MB"``:
   (a) ``layersens.sensitivity`` (exact diag(JᵀJ), unit norms, ‖J‖_F; never the matrix), ``summarize_layer(k=6)``
   and the CLI ``layersens summarize --layer`` when they exist; against (b) ``layersens.extract`` of the dense
   Jacobian (1.1 GiB) followed by ``layersens.summarize(jac, spectrum=True)``.
2. Flax's MNIST-example CNN (``benchmarks/flax_mnist_cnn.py``), layer ``conv2`` (944 MB of dense Jacobian per
   example), ``layersens.sensitivity(max_memory="128MB")`` for 1 and 2 examples. Built here (briefly fitted on
   scikit-learn's digits, or ``--random-weights``) and saved with ``layersens.save_model`` into a temporary
   directory that is removed at the end.

Every measurement runs in a process of its own (``python benchmarks/run_summaries.py --worker JSON``; the CLI
under ``/usr/bin/time -v``), which reports the resident set after importing JAX and loading the model (the fixed
overhead), then per call its wall time and resident-set high-water mark (``VmHWM``, reset between calls through
``/proc/self/clear_refs``). Before anything is timed, one verification process per model compares every method's
numbers with the dense Jacobian (itself spot-checked by ``layersens.verify``); each timed worker's result is then
checked against those verified numbers, and a mismatch is reported as a failure, not a time.

Methods are run in interleaved rounds (order reversed every other round) so that the machine's drift hits all of
them alike; the report gives medians over all steady-state calls (every call after a worker's first, compiled
programs held) and the first call (compilation included) apart.

The dense baseline's spectrum (``summarize(spectrum=True)``: an eigendecomposition of a 6,096² Gram matrix per
example, about 1–2 minutes per example on a loaded 2-core CPU) is timed in the first round on ``--spectrum-sample``
examples (default 1; 8 runs it in full) and scaled to 8; the report says which. ``summarize(jac, spectrum=True)`` is
``summarize(jac, spectrum=False)`` plus ``layersens.results._summary.singular_values`` of each example (its
per-example loop, the same function), which is how the worker times it, phase by phase.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DEFAULT_OUT = HERE / "reports" / "summaries-cpu"
LENET_LAYER, LENET_EXAMPLES, LENET_BUDGET = "relu2", 8, "64MB"
CNN_LAYER, CNN_BUDGET = "conv2", "128MB"
SPECTRUM_K = 6
RTOL = 1e-4  # relative agreement required between a timed result and the verified numbers
WORKER_TIMEOUT_S = 900
MiB = 2**20

# ----------------------------------------------------------------------------------------------------------------
# Memory: the benchmark harness's own readers of the resident set. They are private helpers of
# layersens.bench._worker (not public API), imported rather than copied so that both benchmarks measure the same
# way; if they are renamed this script fails at import and must follow.


def _rss_tools():
    from layersens.bench._worker import _peak_rss, _reset_peak_rss, _status_bytes

    return _peak_rss, _reset_peak_rss, _status_bytes


# ----------------------------------------------------------------------------------------------------------------
# Workers (run in fresh processes)


class _Meter:
    """Per-call wall time and high-water mark of the resident set, the mark reset before each call."""

    def __init__(self):
        self.peak_rss, self.reset, self.status = _rss_tools()
        self.process_peak = 0
        self.calls: list[dict] = []
        self.resettable = True

    def rss(self) -> int:
        return self.status("VmRSS")

    def _note_peak(self):
        self.process_peak = max(self.process_peak, self.peak_rss()[0])

    def setup_done(self) -> dict:
        self._note_peak()
        gc.collect()
        return {"setup_rss_bytes": self.rss(), "setup_hwm_bytes": self.peak_rss()[0], "source": self.peak_rss()[1]}

    def call(self, fn, **extra):
        gc.collect()
        self._note_peak()
        self.resettable = self.reset() and self.resettable
        before = self.rss()
        start = time.perf_counter()
        result = fn()
        seconds = time.perf_counter() - start
        peak = self.peak_rss()[0]
        self.process_peak = max(self.process_peak, peak)
        self.calls.append(
            {
                "seconds": seconds,
                "rss_before_bytes": before,
                "hwm_bytes": peak,
                "added_bytes": max(0, peak - before),
                **extra,
            }
        )
        return result

    def report(self, **extra) -> dict:
        self._note_peak()
        return {
            "calls": self.calls,
            "process_peak_bytes": self.process_peak,
            "hwm_resettable": self.resettable,
            **extra,
        }


def _lenet(layersens):
    model = layersens.load_model(layersens.examples.LENET_DIGITS)
    split = layersens.split(model, LENET_LAYER)
    return model, split, model.example_inputs[:LENET_EXAMPLES]


def _cnn(layersens, model_dir, num_examples):
    sys.path.insert(0, str(HERE))  # flax_mnist_cnn
    model = layersens.load_model(model_dir, allow_import=True)
    split = layersens.split(model, CNN_LAYER)
    return model, split, model.example_inputs[:num_examples]


def _sens_fingerprint(sens) -> dict:
    return {"frobenius": [float(v) for v in sens.frobenius]}


def worker(spec: dict) -> dict:
    meter = _Meter()
    kind, repeats = spec["kind"], spec.get("repeats", 3)
    import jax
    import numpy as np

    jax.numpy.zeros(1).block_until_ready()  # the backend initialized: what JAX alone holds
    jax_rss = meter.rss()

    import layersens

    if kind.startswith("cnn-"):
        model, split, x = _cnn(layersens, spec["model_dir"], spec["num_examples"])
        budget = CNN_BUDGET
    else:
        model, split, x = _lenet(layersens)
        budget = LENET_BUDGET
    setup = meter.setup_done()
    out: dict = {
        "kind": kind,
        **setup,
        "jax_rss_bytes": jax_rss,
        "num_examples": len(x),
        "M": split.num_outputs,
        "P": split.num_params,
    }

    if kind in ("lenet-sensitivity", "cnn-sensitivity"):
        for _ in range(1 + repeats):
            sens = meter.call(lambda: layersens.sensitivity(split, x, max_memory=budget))
            meter.calls[-1]["compile_seconds"] = float(sens.compile_seconds)
            out["fingerprint"] = _sens_fingerprint(sens)
            out["mode"] = sens.mode
            del sens
    elif kind == "lenet-summarize-layer":
        ntk = spec.get("ntk", True)
        for _ in range(1 + repeats):
            s = meter.call(lambda: layersens.summarize_layer(split, x, k=SPECTRUM_K, max_memory=budget, ntk=ntk))
            out["fingerprint"] = {
                **_sens_fingerprint(s.sensitivity),
                "singular_values": np.asarray(s.singular_values).tolist(),
                "ntk": None if s.ntk is None else np.asarray(s.ntk.values).tolist(),
                "ntk_method": None if s.ntk is None else s.ntk.method,
            }
            del s
    elif kind == "lenet-dense":
        from layersens.results._summary import singular_values  # summarize's own per-example step

        sample = spec["spectrum_sample"]
        for call in range(2):  # the first call compiles; the second is the steady state (compiled plan held)

            def pipeline(call=call):
                t0 = time.perf_counter()
                jac = layersens.extract(model, LENET_LAYER, num_examples=LENET_EXAMPLES, max_memory=budget)
                extract_seconds = time.perf_counter() - t0
                t0 = time.perf_counter()
                summary = layersens.summarize(jac, spectrum=False)
                phases = {
                    "extract_seconds": extract_seconds,
                    "summarize_seconds": time.perf_counter() - t0,
                    "dense_bytes": int(jac.matrix.nbytes),
                    "frobenius": float(summary.frobenius),
                }
                if call == 0:  # the spectrum step of summarize(spectrum=True), on `sample` examples
                    times, top = [], []
                    for n in range(min(sample, len(jac.matrix))):
                        t1 = time.perf_counter()
                        s = singular_values(jac.matrix[n])
                        times.append(time.perf_counter() - t1)
                        top.append(s[:SPECTRUM_K].tolist())
                    phases.update(spectrum_seconds_per_example=times, singular_values=top)
                return phases

            phases = meter.call(pipeline)
            meter.calls[-1].update(phases)
        first = meter.calls[0]
        out["fingerprint"] = {"frobenius_total": first["frobenius"], "singular_values": first["singular_values"]}
    else:
        raise ValueError(f"unknown worker kind {kind!r}")
    return meter.report(**out)


def verify_lenet(spec: dict) -> dict:
    """The dense Jacobian of relu2 × 8 (spot-checked against JAX autodiff), and from it, in float64, what every
    LeNet method must return: diag(JᵀJ), unit norms, ‖J‖_F, the top singular values (ARPACK on the dense matrix,
    independent of layersens' spectrum), the traced NTK."""
    import numpy as np
    from scipy.sparse.linalg import svds

    import layersens

    _, split, x = _lenet(layersens)
    t0 = time.perf_counter()
    jac = layersens.jacobian(split, x, max_memory=LENET_BUDGET)
    ver = layersens.verify(jac, split)
    checks = {
        "dense: rows against scalar gradients (layersens.verify), error / max|J|": (
            ver.row_error,
            ver.row_error <= 1e-4,
        )
    }
    n_ex = jac.matrix.shape[0]
    flat64 = [jac.matrix[n].astype(np.float64) for n in range(n_ex)]
    col = np.stack([(a * a).sum(axis=0) for a in flat64])
    row = np.stack([np.sqrt((a * a).sum(axis=1)) for a in flat64])
    fro = np.sqrt(col.sum(axis=1))
    top = []
    for a in flat64:
        s = svds(a, k=SPECTRUM_K, return_singular_vectors=False, random_state=0)
        top.append(np.sort(s)[::-1])
    top = np.asarray(top)
    ntk = np.array([[float(np.vdot(flat64[n], flat64[m])) for m in range(n_ex)] for n in range(n_ex)])
    # (b)'s own singular values (summarize's eigendecomposition, 1–2 minutes per example here) are not computed
    # here: each (b) worker's are checked against these ARPACK values after it ran (check_result).
    del flat64

    sens = layersens.sensitivity(split, x, max_memory=LENET_BUDGET)
    got_col = np.concatenate([sens.parameter[n].reshape(n_ex, -1) for n in sens.param_names], axis=1)
    checks["sensitivity: diag(JᵀJ) (rel. to max)"] = _rel_check(got_col, col, 1e-5)
    checks["sensitivity: unit norms (rel. to max)"] = _rel_check(sens.unit.reshape(n_ex, -1), row, 1e-5)
    checks["sensitivity: ‖J‖_F (rel.)"] = _rel_check(sens.frobenius, fro, 1e-5)
    has_summarize_layer = "summarize_layer" in layersens.__all__
    if has_summarize_layer:
        s = layersens.summarize_layer(split, x, k=SPECTRUM_K, max_memory=LENET_BUDGET)
        checks["summarize_layer: ‖J‖_F (rel.)"] = _rel_check(s.frobenius, fro, 1e-5)
        checks["summarize_layer: top-6 singular values vs ARPACK (rel.)"] = _rel_check(
            np.asarray(s.singular_values), top, 1e-3
        )
        if s.ntk is not None:
            checks[f"summarize_layer: NTK ({s.ntk.method}) vs dense contraction (rel. to max)"] = _rel_check(
                np.asarray(s.ntk.values), ntk, 1e-4
            )
    return {
        "checks": {k: {"error": float(e), "ok": bool(ok)} for k, (e, ok) in checks.items()},
        "frobenius": fro.tolist(),
        "singular_values": top.tolist(),
        "ntk": ntk.tolist(),
        "dense_bytes": int(jac.matrix.nbytes),
        "M": split.num_outputs,
        "P": split.num_params,
        "has_summarize_layer": has_summarize_layer,
        "seconds": time.perf_counter() - t0,
        "verify": ver.describe(),
    }


def verify_cnn(spec: dict) -> dict:
    """The CNN's conv2 sensitivity for ``num_examples`` against each example's dense Jacobian (944 MB, one at a
    time, spot-checked by ``layersens.verify``), reduced in float64 a slab of rows at a time."""
    import numpy as np

    import layersens

    _, split, x = _cnn(layersens, spec["model_dir"], spec["num_examples"])
    t0 = time.perf_counter()
    sens = layersens.sensitivity(split, x, max_memory=CNN_BUDGET)
    checks = {}
    fro = []
    for n in range(len(x)):
        jac = layersens.jacobian(split, x[n : n + 1], max_memory=CNN_BUDGET)
        ver = layersens.verify(jac, split)
        checks[f"dense example {n}: rows against scalar gradients, error / max|J|"] = (
            ver.row_error,
            ver.row_error <= 1e-4,
        )
        m = jac.matrix[0]
        col = np.zeros(m.shape[1])
        row = np.zeros(m.shape[0])
        for a in range(0, m.shape[0], 1024):
            slab = m[a : a + 1024].astype(np.float64) ** 2
            col += slab.sum(axis=0)
            row[a : a + 1024] = slab.sum(axis=1)
        got = np.concatenate([sens.parameter[k][n].reshape(-1) for k in sens.param_names])
        checks[f"sensitivity example {n}: diag(JᵀJ) (rel. to max)"] = _rel_check(got, col, 1e-5)
        checks[f"sensitivity example {n}: unit norms (rel. to max)"] = _rel_check(
            sens.unit[n].reshape(-1), np.sqrt(row), 1e-5
        )
        fro.append(float(np.sqrt(col.sum())))
        del jac, m
        gc.collect()
    checks["sensitivity: ‖J‖_F (rel.)"] = _rel_check(sens.frobenius, np.asarray(fro), 1e-5)
    return {
        "checks": {k: {"error": float(e), "ok": bool(ok)} for k, (e, ok) in checks.items()},
        "frobenius": fro,
        "M": split.num_outputs,
        "P": split.num_params,
        "seconds": time.perf_counter() - t0,
        "param_names": list(split.param_names),
    }


def _rel_check(got, want, tol):
    import numpy as np

    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    if got.shape != want.shape:
        return float("inf"), False
    err = float(np.max(np.abs(got - want)) / max(float(np.max(np.abs(want))), 1e-300))
    return err, err <= tol


# ----------------------------------------------------------------------------------------------------------------
# The CNN model directory


def build_cnn(directory: Path, random_weights: bool, seed: int = 0) -> dict:
    """Builds Flax's MNIST CNN, fits it briefly (one epoch of Adam on scikit-learn's digits resized to 28×28, as
    the shipped LeNet was trained) unless ``random_weights``, and saves it with ``layersens.save_model``."""
    sys.path.insert(0, str(HERE))
    import jax
    import numpy as np
    from flax_mnist_cnn import INPUT_SHAPE, FlaxMnistCNN

    import layersens

    model = FlaxMnistCNN()
    heldout = np.asarray(layersens.load_model(layersens.examples.LENET_DIGITS).example_inputs)
    variables = model.init(jax.random.key(seed), np.zeros((1,) + INPUT_SHAPE, np.float32))
    info = {"weights": "random (flax default initialization, seed 0)"}
    if not random_weights:
        import optax

        from layersens.examples.train_lenet import load_digits_split

        (xt, yt), (xv, yv) = load_digits_split(seed)
        opt = optax.adam(1e-3)
        params = variables["params"]
        state = opt.init(params)

        @jax.jit
        def step(params, state, x, y):
            def loss(p):
                return optax.softmax_cross_entropy_with_integer_labels(model.apply({"params": p}, x), y).mean()

            value, grads = jax.value_and_grad(loss)(params)
            updates, state = opt.update(grads, state, params)
            return optax.apply_updates(params, updates), state, value

        order = np.random.default_rng(seed).permutation(len(xt))
        for a in range(0, len(xt) - 63, 64):
            idx = order[a : a + 64]
            params, state, _ = step(params, state, xt[idx], yt[idx])
        variables = {"params": params}
        accuracy = float(np.mean(np.argmax(model.apply(variables, xv), axis=-1) == yv))
        info = {
            "weights": f"briefly fitted: one epoch of Adam (lr 1e-3, batch 64, {len(xt) // 64} steps) on "
            f"scikit-learn's digits resized to 28×28; held-out accuracy {accuracy:.3f} on {len(xv)}",
            "heldout_accuracy": accuracy,
        }
    layersens.save_model(
        directory,
        model,
        variables,
        input_shape=INPUT_SHAPE,
        example_inputs=heldout[:4],
        description="Flax MNIST-example CNN (benchmarks/flax_mnist_cnn.py); " + info["weights"],
    )
    return info


# ----------------------------------------------------------------------------------------------------------------
# Running processes


def _env() -> dict:
    env = dict(os.environ)
    paths = [str(HERE), str(ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


def run_worker(spec: dict, timeout=WORKER_TIMEOUT_S) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)]
    start = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=_env(), check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"did not finish within {timeout} s"}
    wall = time.perf_counter() - start
    lines = done.stdout.strip().splitlines()
    try:
        data = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"exit code {done.returncode}: {tail}", "process_seconds": wall}
    data["process_seconds"] = wall
    return data


def _time_v(command: list[str]) -> dict:
    """Runs ``command`` under ``/usr/bin/time -v``: wall seconds, maximum resident set, exit code, stdout."""
    done = subprocess.run(
        ["/usr/bin/time", "-v", *command],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=WORKER_TIMEOUT_S,
        check=False,
    )
    peak = re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr)
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", done.stderr)
    seconds = None
    if wall:
        parts = [float(p) for p in wall.group(1).split(":")]
        seconds = sum(p * 60**i for i, p in enumerate(reversed(parts)))
    out = {
        "returncode": done.returncode,
        "peak_rss_bytes": int(peak.group(1)) * 1024 if peak else None,
        "seconds": seconds,
        "stdout": done.stdout,
    }
    if done.returncode:
        out["error"] = (done.stderr.strip().splitlines() or ["?"])[0][:300]
    return out


def cli_available() -> bool:
    exe = shutil.which("layersens", path=str(Path(sys.executable).parent)) or shutil.which("layersens")
    if not exe:
        return False
    done = subprocess.run([exe, "summarize", "--help"], capture_output=True, text=True, env=_env(), check=False)
    return "--layer" in done.stdout


def run_cli(kind: str) -> dict:
    """``summarize --layer`` (the method), or ``layers`` (the CLI's fixed overhead: JAX imported, the model loaded
    and traced, nothing differentiated)."""
    exe = shutil.which("layersens", path=str(Path(sys.executable).parent)) or "layersens"
    model = str(ROOT / "layersens" / "examples" / "lenet_digits")
    if kind == "cli-summarize":
        command = [
            exe,
            "summarize",
            "--layer",
            LENET_LAYER,
            "--model",
            model,
            "--num-examples",
            str(LENET_EXAMPLES),
            "--max-memory",
            LENET_BUDGET,
        ]
    else:
        command = [exe, "layers", "--model", model]
    return {"kind": kind, "command": " ".join(command[1:]), **_time_v(command)}


# ----------------------------------------------------------------------------------------------------------------
# Checking timed results against the verified numbers


def _close(a, b, tol=RTOL) -> bool:
    import numpy as np

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return a.shape == b.shape and bool(np.max(np.abs(a - b)) <= tol * max(float(np.max(np.abs(b))), 1e-300))


def check_result(result: dict, ref: dict, cnn_ref: dict | None) -> str | None:
    """Why ``result`` disagrees with the verified numbers, or None."""
    import numpy as np

    if "error" in result:
        return result["error"]
    kind, fp = result["kind"], result.get("fingerprint", {})
    if kind == "cli-summarize":  # the CLI prints each example's ‖J‖_F (4 significant digits) and σ's in its tables
        missing = [
            f"{v:.4g}"
            for v in ref["frobenius"] + [row[0] for row in ref["singular_values"]]
            if f"{v:.4g}" not in result["stdout"]
        ]
        return f"verified values not in its output: {missing}" if missing else None
    if kind == "cli-layers":
        return None
    if kind == "cnn-sensitivity":
        want = cnn_ref["frobenius"][: result["num_examples"]]
        return None if _close(fp["frobenius"], want) else f"‖J‖_F {fp['frobenius']} != verified {want}"
    if kind in ("lenet-sensitivity", "lenet-summarize-layer"):
        if not _close(fp["frobenius"], ref["frobenius"]):
            return f"‖J‖_F {fp['frobenius']} != verified {ref['frobenius']}"
        if kind == "lenet-summarize-layer":
            if not _close(fp["singular_values"], ref["singular_values"], 1e-3):
                return "top singular values differ from the verified ones"
            if fp["ntk"] is not None and not _close(fp["ntk"], ref["ntk"]):
                return "NTK differs from the verified one"
        return None
    if kind == "lenet-dense":
        total = float(np.sqrt(np.sum(np.square(ref["frobenius"]))))
        if not _close(fp["frobenius_total"], total):
            return f"‖J‖_F {fp['frobenius_total']} != verified {total}"
        sv = fp["singular_values"]
        if sv and not _close(sv, ref["singular_values"][: len(sv)], 1e-3):
            return "singular values differ from the verified ones"
        return None
    return None


# ----------------------------------------------------------------------------------------------------------------
# Report


def _med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _mib(b):
    return None if b is None else b / MiB


def _fmt_mib(b):
    return "–" if b is None else f"{b / MiB:,.0f} MiB" if b >= 10 * MiB else f"{b / MiB:,.1f} MiB"


def _fmt_s(s):
    return "–" if s is None else f"{s:.3g} s"


def summarize_method(results: list[dict]) -> dict:
    """Medians over the verified workers of one method: steady-state calls (all after each worker's first) and
    first calls apart; memory: the largest of each quantity over the workers."""
    good = [r for r in results if r.get("ok")]
    out = {
        "workers": len(results),
        "verified_workers": len(good),
        "errors": sorted({r["why"] for r in results if not r.get("ok") and r.get("why")}),
    }
    if not good:
        return out
    if "calls" in good[0]:
        steady = [c["seconds"] for r in good for c in r["calls"][1:]]
        first = [r["calls"][0]["seconds"] for r in good]
        out.update(
            steady_seconds_median=_med(steady),
            steady_calls=len(steady),
            first_seconds_median=_med(first),
            setup_rss_bytes=max(r["setup_rss_bytes"] for r in good),
            jax_rss_bytes=max(r["jax_rss_bytes"] for r in good),
            process_peak_bytes=max(r["process_peak_bytes"] for r in good),
            first_added_bytes=max(r["calls"][0]["added_bytes"] for r in good),
            steady_added_bytes=max((c["added_bytes"] for r in good for c in r["calls"][1:]), default=None),
        )
    else:  # the CLI: whole processes
        out.update(
            process_seconds_median=_med([r["seconds"] for r in good]),
            process_peak_bytes=max(r["peak_rss_bytes"] for r in good),
        )
    return out


def dense_totals(results: list[dict], num_examples: int) -> dict:
    """The dense pipeline's time: extract + summarize(spectrum=False) measured per call, plus the spectrum step per
    example (median over every example timed) × ``num_examples``: exact when all were timed, else scaled."""
    good = [r for r in results if r.get("ok")]
    if not good:
        return {}
    spectrum_times = [t for r in good for t in r["calls"][0].get("spectrum_seconds_per_example", [])]
    per_example = _med(spectrum_times)
    spectrum = (per_example or 0.0) * num_examples
    first = _med([r["calls"][0]["seconds"] - sum(r["calls"][0].get("spectrum_seconds_per_example", [])) for r in good])
    steady = _med([r["calls"][1]["seconds"] for r in good])
    return {
        "spectrum_seconds_per_example": per_example,
        "spectrum_seconds_total": spectrum,
        "spectrum_examples_timed": len(spectrum_times),
        "extract_summarize_first_median": first,
        "extract_summarize_steady_median": steady,
        "extract_steady_median": _med([r["calls"][1]["extract_seconds"] for r in good]),
        "summarize_nospectrum_steady_median": _med([r["calls"][1]["summarize_seconds"] for r in good]),
        "first_total": first + spectrum,
        "steady_total": steady + spectrum,
        "dense_bytes": good[0]["calls"][0]["dense_bytes"],
    }


def write_report(out_dir: Path, data: dict) -> list[Path]:
    from layersens._atomic import write_bytes

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [write_bytes(out_dir / "report.json", (json.dumps(data, indent=1, default=str) + "\n").encode())]
    paths.append(write_bytes(out_dir / "report.md", render_markdown(data).encode()))  # after the data is safe
    return paths


def render_markdown(d: dict) -> str:
    env, s = d["environment"], d["summary"]
    L = [
        f"# Answers without the matrix: memory and time ({d['date']})",
        "",
        f"Reproduce: `{d['command']}` ({d['total_seconds']:.0f} s for this run).",
        "",
        "## Machine",
        "",
        f"- {env.get('cpu_model')}, {env.get('cpu_count')} CPUs ({env.get('usable_cpus')} usable), "
        f"{_fmt_mib(env.get('available_memory_bytes'))} available at start; devices "
        f"{', '.join(env.get('devices', []))}.",
        f"- **Shared machine**: load average {env.get('load_average')} at the start and "
        f"{d.get('load_average_end')} at the end (other engineers' test runs on the same 2 cores). Times are "
        "noisy; compare the methods of this one interleaved run with each other, not with other reports.",
        f"- {env.get('platform')}, Python {env.get('python')}; "
        + ", ".join(f"{k} {v}" for k, v in env.get("versions", []))
        + ".",
        f"- Thread settings: {', '.join(f'{k}={v}' for k, v in env.get('thread_settings', []) if v) or 'none set'}.",
        "",
        "## How it was measured",
        "",
        "Each method ran in fresh processes, "
        f"{d['settings']['rounds']} interleaved round(s) (order reversed every other round), each process one first "
        f"call (compilation included) then {d['settings']['repeats']} steady call(s) (compiled programs held; 1 for "
        "`summarize_layer` with its NTK and for (b), whose spectrum step runs once, in round 1). "
        "Peak memory is the resident-set high-water mark (`VmHWM`, reset per call); *fixed overhead* is the "
        "process's resident set after importing JAX and loading the model; *added* is a call's peak over the "
        "resident set just before it. Every timed result was checked against numbers verified first against the "
        "dense Jacobian (below). Times are medians.",
        "",
    ]
    lenet = s["lenet"]
    dense = lenet.get("dense_totals", {})
    db = lenet["dense_bytes"]
    L += [
        '## 1. LeNet `relu2`, 8 examples, `max_memory="64MB"`',
        "",
        f"J is {lenet['M']:,} outputs × {lenet['P']:,} parameters per example: dense "
        f"8 × {lenet['M']:,} × {lenet['P']:,} × 4 bytes = {db:,} bytes = {db / 2**30:.2f} GiB.",
        "",
        "| method | steady time | first call | ratio (b)/method, steady | fixed overhead | added, first call | "
        "added, steady | process peak RSS | peak vs dense size |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, m in lenet["methods"].items():
        if m.get("verified_workers", 0) == 0:
            L.append(f"| {name} | failed or not run: {'; '.join(m.get('errors', [])) or '–'} | | | | | | | |")
            continue
        if "steady_seconds_median" in m:
            steady, first = m["steady_seconds_median"], m["first_seconds_median"]
            if name.startswith("(b)"):
                steady, first = dense.get("steady_total"), dense.get("first_total")
            ratio = m.get("ratio_b_steady")
            L.append(
                f"| {name} | {_fmt_s(steady)} | {_fmt_s(first)} | "
                f"{'–' if ratio is None else f'{ratio:,.1f}×'} | {_fmt_mib(m['setup_rss_bytes'])} | "
                f"{_fmt_mib(m['first_added_bytes'])} | {_fmt_mib(m['steady_added_bytes'])} | "
                f"{_fmt_mib(m['process_peak_bytes'])} | {m['process_peak_bytes'] / db:.2f}× |"
            )
        else:
            ratio = m.get("ratio_b_steady")
            L.append(
                f"| {name} | {_fmt_s(m['process_seconds_median'])} (whole process) | | "
                f"{'–' if ratio is None else f'{ratio:,.1f}× ((b) first call + CLI start-up)'} | "
                f"{_fmt_mib(s.get('cli_overhead_bytes'))} (`layersens layers`) | | | "
                f"{_fmt_mib(m['process_peak_bytes'])} | {m['process_peak_bytes'] / db:.2f}× |"
            )
    L.append("")
    if dense:
        how = (
            f"timed on {dense['spectrum_examples_timed']} of the 8 examples "
            f"({_fmt_s(dense['spectrum_seconds_per_example'])} per example, median) and scaled to 8: "
            f"{_fmt_s(dense['spectrum_seconds_total'])}"
        )
        L += [
            f"(b) = `extract` ({_fmt_s(dense['extract_steady_median'])} steady) + `summarize(spectrum=False)` "
            f"({_fmt_s(dense['summarize_nospectrum_steady_median'])}) + the spectrum step of "
            f"`summarize(spectrum=True)`, {how}. Its memory columns include the spectrum step (first call) and "
            "not (steady call).",
            "",
        ]
    for line in s.get("lenet_notes", []):
        L.append(f"- {line}")
    L += ["", '## 2. Flax MNIST-example CNN, layer `conv2`, `max_memory="128MB"`', ""]
    cnn = s["cnn"]
    L += [
        f"Weights: {cnn['weights']}. J is {cnn['M']:,} × {cnn['P']:,} per example "
        f"({' + '.join(cnn.get('param_names', []))}): dense {cnn['M']:,} × {cnn['P']:,} × 4 bytes = "
        f"{cnn['dense_bytes_per_example']:,} bytes ({cnn['dense_bytes_per_example'] / 1e6:,.0f} MB) per example.",
        "",
        "| examples | steady time | first call | fixed overhead (JAX + model) | added, first call | added, steady | "
        "process peak RSS | dense J of these examples | peak vs dense |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for n, m in cnn["methods"].items():
        dense_n = cnn["dense_bytes_per_example"] * int(n)
        if m.get("verified_workers", 0) == 0:
            L.append(f"| {n} | failed or not run: {'; '.join(m.get('errors', [])) or '–'} | | | | | | | |")
            continue
        L.append(
            f"| {n} | {_fmt_s(m['steady_seconds_median'])} | {_fmt_s(m['first_seconds_median'])} | "
            f"{_fmt_mib(m['setup_rss_bytes'])} | {_fmt_mib(m['first_added_bytes'])} | "
            f"{_fmt_mib(m['steady_added_bytes'])} | {_fmt_mib(m['process_peak_bytes'])} | "
            f"{dense_n / 1e6:,.0f} MB | {m['process_peak_bytes'] / dense_n:.2f}× |"
        )
    L.append("")
    for line in s.get("cnn_notes", []):
        L.append(f"- {line}")
    L += [
        "",
        "*Added, steady* is a call's peak over the resident set the first call left behind (XLA's compiled "
        "programs and the buffers it keeps): near zero means the steady call reused that memory. The process peak "
        "is the number to hold against the dense size; *fixed overhead* includes "
        f"{_fmt_mib(s.get('jax_rss_bytes'))} for Python, NumPy and JAX with its CPU backend initialized (before "
        "layersens and the model).",
        "",
        "## Verification (before timing)",
        "",
    ]
    for name, v in d["verification"].items():
        if "error" in v:
            L.append(f"- {name}: **failed**: {v['error']}")
            continue
        for check, c in v["checks"].items():
            L.append(f"- {name}: {check}: {c['error']:.2g} {'✓' if c['ok'] else '**✗**'}")
    L += [
        "",
        "Each timed worker's ‖J‖_F (and, where returned, top singular values and NTK) was compared with these "
        f"verified numbers to a relative {RTOL:g} (1e-3 for singular values); failures are listed in the tables.",
        "",
        "## Findings",
        "",
    ]
    for line in s.get("findings", []):
        L.append(f"- {line}")
    return "\n".join(L) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument(
        "--render",
        action="store_true",
        help="only recompute the summary and rewrite the report from --out's report.json",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="steady calls per worker after its first call")
    parser.add_argument(
        "--spectrum-sample",
        type=int,
        default=1,
        help="examples (of 8) on which (b)'s spectrum step is timed, in the first round, and "
        "scaled to 8 (8: in full, about 8× as long)",
    )
    parser.add_argument("--cnn-examples", default="1,2")
    parser.add_argument("--random-weights", action="store_true", help="do not fit the CNN (random weights)")
    parser.add_argument(
        "--budget-s",
        type=float,
        default=840.0,
        help="rounds after the first skip a method whose round-1 time would take the run past this",
    )
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)

    if args.worker:
        spec = json.loads(args.worker)
        try:
            fn = {"verify-lenet": verify_lenet, "verify-cnn": verify_cnn}.get(spec["kind"], worker)
            result = fn(spec)
        except Exception as e:  # noqa: BLE001 - reported to the parent as data
            result = {"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}
        print(json.dumps(result), flush=True)
        return 0

    out_dir = args.out.resolve()
    if args.render:
        data = json.loads((out_dir / "report.json").read_text())
        verification, cnn_counts = data["verification"], data["settings"]["cnn"][1]
        data["summary"] = build_summary(
            data["results"],
            verification["lenet relu2 ×8"],
            verification[f"cnn conv2 ×{max(cnn_counts)}"],
            {"weights": data["summary"]["cnn"]["weights"]},
            cnn_counts,
            args,
            "(a) summarize_layer k=6" in data["results"],
            "(a) CLI summarize --layer" in data["results"],
        )
        for path in write_report(out_dir, data):
            print(f"wrote {path}")
        return 0
    if (out_dir / "report.json").exists() and not args.overwrite:
        parser.error(f"{out_dir} already holds a report; pass --overwrite to replace it")
    start = time.perf_counter()

    def log(message):
        print(f"[{time.perf_counter() - start:6.1f} s] {message}", file=sys.stderr, flush=True)

    from layersens.bench._env import environment  # what the LeNet report records about the machine

    env = dataclasses.asdict(environment())
    env["available_memory_bytes"] = int(env["available_memory_bytes"])
    import layersens

    has_summarize_layer = "summarize_layer" in layersens.__all__
    has_cli = cli_available()
    log(
        f"summarize_layer: {'yes' if has_summarize_layer else 'no'}; CLI summarize --layer: "
        f"{'yes' if has_cli else 'no'}"
    )
    cnn_counts = [int(n) for n in args.cnn_examples.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="layersens-cnn-"))
    try:
        model_dir = tmp / "flax_mnist_cnn"
        log("building the CNN")
        cnn_info = build_cnn(model_dir, args.random_weights)
        log(cnn_info["weights"])

        log("verifying LeNet methods against the dense Jacobian")
        verification = {"lenet relu2 ×8": run_worker({"kind": "verify-lenet"})}
        log("verifying the CNN sensitivity against the dense Jacobian")
        verification[f"cnn conv2 ×{max(cnn_counts)}"] = run_worker(
            {"kind": "verify-cnn", "model_dir": str(model_dir), "num_examples": max(cnn_counts)}
        )
        for name, v in verification.items():
            log(
                f"{name}: "
                + (
                    "; ".join(
                        f"{k} {c['error']:.2g} {'ok' if c['ok'] else 'FAIL'}" for k, c in v.get("checks", {}).items()
                    )
                    or v.get("error", "?")
                )
            )
        ref = verification["lenet relu2 ×8"]
        cnn_ref = verification[f"cnn conv2 ×{max(cnn_counts)}"]
        lenet_ok = "checks" in ref and all(c["ok"] for c in ref["checks"].values())
        cnn_ok = "checks" in cnn_ref and all(c["ok"] for c in cnn_ref["checks"].values())

        methods = [("(a) sensitivity", {"kind": "lenet-sensitivity", "repeats": args.repeats})]
        if has_summarize_layer:
            # one steady call: a call takes about 40 s on a loaded 2-core machine (its NTK step, see the report)
            methods.append(("(a) summarize_layer k=6", {"kind": "lenet-summarize-layer", "repeats": 1}))
            methods.append(
                (
                    "(a) summarize_layer k=6, ntk=False",
                    {"kind": "lenet-summarize-layer", "ntk": False, "repeats": args.repeats},
                )
            )
        if has_cli:
            methods += [
                ("(a) CLI summarize --layer", {"kind": "cli-summarize"}),
                ("CLI overhead (layers)", {"kind": "cli-layers"}),
            ]
        methods.append(
            ("(b) extract + summarize(spectrum=True)", {"kind": "lenet-dense", "spectrum_sample": args.spectrum_sample})
        )
        for n in cnn_counts:
            methods.append(
                (
                    f"cnn ×{n}",
                    {
                        "kind": "cnn-sensitivity",
                        "model_dir": str(model_dir),
                        "num_examples": n,
                        "repeats": args.repeats,
                    },
                )
            )
        results: dict[str, list[dict]] = {name: [] for name, _ in methods}
        durations: dict[str, float] = {}  # each method's process time in round 1 (spectrum step excluded)
        for r in range(args.rounds):
            order = methods if r % 2 == 0 else methods[::-1]
            for name, spec in order:
                elapsed = time.perf_counter() - start
                if r > 0 and elapsed + durations.get(name, 0.0) > args.budget_s:
                    results[name].append({"ok": False, "why": f"round {r + 1} not run: --budget-s {args.budget_s:g}"})
                    log(f"round {r + 1}: {name} not run (time budget)")
                    continue
                verified = cnn_ok if spec["kind"].startswith("cnn") else lenet_ok
                if not verified:
                    results[name].append({"ok": False, "why": "not timed: verification failed"})
                    continue
                if spec["kind"] == "lenet-dense" and r > 0:
                    spec = {**spec, "spectrum_sample": 0}  # the spectrum step: round 1 only
                log(f"round {r + 1}: {name}")
                res = run_cli(spec["kind"]) if spec["kind"].startswith("cli") else run_worker(spec)
                why = check_result(res, ref, cnn_ref)
                res.update(ok=why is None, why=why, round=r + 1)
                results[name].append(res)
                if r == 0:
                    spent = res.get("process_seconds", res.get("seconds")) or 0.0
                    spent -= sum(res.get("calls", [{}])[0].get("spectrum_seconds_per_example", []))
                    durations[name] = spent
                log(f"  {'ok' if why is None else 'FAILED: ' + why}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    load_end = tuple(round(v, 2) for v in os.getloadavg())
    summary = build_summary(results, ref, cnn_ref, cnn_info, cnn_counts, args, has_summarize_layer, has_cli)
    command = (
        "python benchmarks/run_summaries.py --overwrite"
        + (f" --rounds {args.rounds}" if args.rounds != 2 else "")
        + (f" --repeats {args.repeats}" if args.repeats != 3 else "")
        + (f" --spectrum-sample {args.spectrum_sample}" if args.spectrum_sample != 1 else "")
        + (" --random-weights" if args.random_weights else "")
    )
    data = {
        "format": "layersens-summaries-benchmark/1",
        "date": time.strftime("%Y-%m-%d"),
        "command": command,
        "environment": env,
        "load_average_end": load_end,
        "total_seconds": time.perf_counter() - start,
        "settings": {
            "rounds": args.rounds,
            "repeats": args.repeats,
            "spectrum_sample": args.spectrum_sample,
            "lenet": [LENET_LAYER, LENET_EXAMPLES, LENET_BUDGET],
            "cnn": [CNN_LAYER, cnn_counts, CNN_BUDGET],
            "rtol": RTOL,
        },
        "verification": verification,
        "results": results,
        "summary": summary,
    }
    for path in write_report(out_dir, data):
        log(f"wrote {path}")
    print((out_dir / "report.md").read_text())
    return 0


def build_summary(results, ref, cnn_ref, cnn_info, cnn_counts, args, has_summarize_layer, has_cli) -> dict:
    methods = {name: summarize_method(rs) for name, rs in results.items() if not name.startswith("cnn")}
    dense_name = "(b) extract + summarize(spectrum=True)"
    dense = dense_totals(results[dense_name], LENET_EXAMPLES)
    db = ref.get("dense_bytes") or dense.get("dense_bytes") or LENET_EXAMPLES * 6272 * 6096 * 4
    cli_overhead = methods.pop("CLI overhead (layers)", {}).get("process_peak_bytes")
    cli_overhead_s = summarize_method(results.get("CLI overhead (layers)", [])).get("process_seconds_median")
    b_steady, b_first = dense.get("steady_total"), dense.get("first_total")
    for name, m in methods.items():
        if name == dense_name or not m.get("verified_workers"):
            continue
        if "steady_seconds_median" in m and b_steady:
            m["ratio_b_steady"] = b_steady / m["steady_seconds_median"]
            m["ratio_b_first"] = b_first / m["first_seconds_median"]
        elif "process_seconds_median" in m and b_first and cli_overhead_s is not None:
            # the CLI pays its process start (JAX, model) and compilation: compare it with (b)'s first call plus
            # the same start-up, measured by `layersens layers`
            m["ratio_b_steady"] = (b_first + cli_overhead_s) / m["process_seconds_median"]
    lenet_notes = []
    if not has_summarize_layer:
        lenet_notes.append("`layersens.summarize_layer` was not in `layersens.__all__` at run time: not measured.")
    if not has_cli:
        lenet_notes.append(
            "`layersens summarize --layer` did not exist at run time (its `--help` has no `--layer`): not measured."
        )
    sens = methods.get("(a) sensitivity", {})
    like = None
    if sens.get("steady_seconds_median") and dense.get("extract_summarize_steady_median"):
        like = dense["extract_summarize_steady_median"] / sens["steady_seconds_median"]
        lenet_notes.append(
            f"Like for like (norms only, no spectrum): `extract` + `summarize(spectrum=False)` took "
            f"{_fmt_s(dense['extract_summarize_steady_median'])} steady, {like:.1f}× `sensitivity`."
        )
    if cli_overhead is not None:
        lenet_notes.append(
            f"CLI fixed overhead: `layersens layers --model ...` (JAX imported, model loaded and "
            f"traced, nothing differentiated) peaked at {_fmt_mib(cli_overhead)} RSS in "
            f"{_fmt_s(cli_overhead_s)}."
        )
    cnn_methods = {str(n): summarize_method(results[f"cnn ×{n}"]) for n in cnn_counts}
    dense_cnn = cnn_ref.get("M", 12544) * cnn_ref.get("P", 18816) * 4
    summary = {
        "lenet": {
            "M": ref.get("M"),
            "P": ref.get("P"),
            "dense_bytes": db,
            "methods": methods,
            "dense_totals": dense,
            "like_for_like_ratio": like,
        },
        "cli_overhead_bytes": cli_overhead,
        "lenet_notes": lenet_notes,
        "cnn": {
            "M": cnn_ref.get("M"),
            "P": cnn_ref.get("P"),
            "param_names": cnn_ref.get("param_names", []),
            "dense_bytes_per_example": dense_cnn,
            "weights": cnn_info["weights"],
            "methods": cnn_methods,
        },
        "cnn_notes": [],
        "findings": [],
        "jax_rss_bytes": max(
            (m.get("jax_rss_bytes") or 0 for m in list(methods.values()) + list(cnn_methods.values())), default=None
        ),
    }
    f = summary["findings"]
    if sens.get("verified_workers"):
        f.append(
            f"(a) `sensitivity`: process peak {_fmt_mib(sens['process_peak_bytes'])} "
            f"({sens['process_peak_bytes'] / db:.2f}× the {db / 2**30:.2f} GiB dense size), of which "
            f"{_fmt_mib(sens['setup_rss_bytes'])} ({sens['setup_rss_bytes'] / sens['process_peak_bytes']:.0%}) "
            f"is the fixed overhead (JAX alone {_fmt_mib(sens['jax_rss_bytes'])}); the first call adds "
            f"{_fmt_mib(sens['first_added_bytes'])} (compilation included), a steady call "
            f"{_fmt_mib(sens['steady_added_bytes'])}. "
            + (
                f"(b)/(a) time: {sens['ratio_b_steady']:,.0f}× steady, {sens['ratio_b_first']:,.0f}× first calls "
                f"(target ≥ 10×: {'✓' if sens['ratio_b_steady'] >= 10 else '✗'})."
                if "ratio_b_steady" in sens
                else ""
            )
        )
    sl = methods.get("(a) summarize_layer k=6", {})
    if sl.get("verified_workers") and "ratio_b_steady" in sl:
        f.append(
            f"(a) `summarize_layer(k=6)`: process peak {_fmt_mib(sl['process_peak_bytes'])} "
            f"({sl['process_peak_bytes'] / db:.2f}× dense), steady {_fmt_s(sl['steady_seconds_median'])}; "
            f"(b)/it {sl['ratio_b_steady']:,.1f}× steady (target ≥ 10×: "
            f"{'✓' if sl['ratio_b_steady'] >= 10 else '✗'})."
        )
    sl0 = methods.get("(a) summarize_layer k=6, ntk=False", {})
    if sl.get("verified_workers") and sl0.get("verified_workers"):
        share = 1 - sl0["steady_seconds_median"] / sl["steady_seconds_median"]
        f.append(
            f"Without its NTK, `summarize_layer(k=6, ntk=False)` took {_fmt_s(sl0['steady_seconds_median'])} "
            f"steady and peaked at {_fmt_mib(sl0['process_peak_bytes'])}: the NTK step is {share:.0%} of "
            f"`summarize_layer`'s time and {_fmt_mib(sl['process_peak_bytes'] - sl0['process_peak_bytes'])} "
            "of its peak."
        )
    cli = methods.get("(a) CLI summarize --layer", {})
    if cli.get("verified_workers"):
        f.append(
            f"(a) CLI `layersens summarize --layer relu2 ... --max-memory 64MB` (k=6 and the NTK by default): "
            f"{_fmt_s(cli['process_seconds_median'])} for the whole process, peak "
            f"{_fmt_mib(cli['process_peak_bytes'])} ({cli['process_peak_bytes'] / db:.2f}× dense) against "
            f"{_fmt_mib(cli_overhead)} for `layersens layers` on the same model"
            + (
                f"; ((b)'s first call + the CLI's start-up) / it: {cli['ratio_b_steady']:,.1f}×."
                if "ratio_b_steady" in cli
                else "."
            )
        )
    for n, m in cnn_methods.items():
        if m.get("verified_workers"):
            f.append(
                f"CNN conv2 ×{n}: process peak {_fmt_mib(m['process_peak_bytes'])} against "
                f"{dense_cnn * int(n) / 1e6:,.0f} MB of dense Jacobian; fixed overhead (JAX + model) "
                f"{_fmt_mib(m['setup_rss_bytes'])}, a call adds {_fmt_mib(m['steady_added_bytes'])} steady "
                f"({_fmt_mib(m['first_added_bytes'])} first, compiling); {_fmt_s(m['steady_seconds_median'])} "
                f"steady, {_fmt_s(m['first_seconds_median'])} first."
            )
    return summary


if __name__ == "__main__":
    sys.exit(main())
