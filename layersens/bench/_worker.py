"""Peak memory of one benchmark method, measured in a process of its own.

``ru_maxrss`` is a process-wide high-water mark: measured in the benchmark's own process it would only ever
report the hungriest method so far. So each method runs once in a fresh worker::

    python -m layersens.bench._worker --model DIR --layer L --num-examples N --method NAME \
        [--time-limit SECONDS] [--allow-import]

which loads the model, splits it and prepares its inputs, reads the resident-set high-water mark (the
baseline: Python, JAX, the model; ``VmHWM`` where Linux has it, else ``ru_maxrss``), computes the Jacobian once
(compilation included, as a first call pays it), then, where Linux lets it reset the high-water mark, once more
(what every later call adds: working memory and the result), and prints one JSON object on stdout. A loop method runs
``--loop-sample`` of its gradients into a full result buffer that is faulted in, since its memory does not grow
with the number of gradients but its result does. With ``--time-limit`` the worker ends itself (SIGALRM) if
compiling and running take longer: the benchmark's run limit, enforced where a computation can be stopped.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import resource
import signal
import subprocess
import sys

_STARTUP_ALLOWANCE_S = 600


@dataclasses.dataclass(frozen=True)
class PeakMemory:
    """Resident-set high-water marks of a worker, in bytes: after setup (``baseline``) and after the method
    (``peak``); ``peak - baseline`` is what the method added. ``error`` says why a measurement is missing."""

    baseline_bytes: int | None = None
    peak_bytes: int | None = None
    steady_baseline_bytes: int | None = None
    steady_peak_bytes: int | None = None
    seconds: float | None = None
    source: str = ""
    note: str = ""
    error: str | None = None
    timed_out: bool = False

    @property
    def added_bytes(self) -> int | None:
        if self.baseline_bytes is None or self.peak_bytes is None:
            return None
        return max(0, self.peak_bytes - self.baseline_bytes)

    @property
    def steady_added_bytes(self) -> int | None:
        """What a second call added at its peak over the resident set before it (compiled programs held)."""
        if self.steady_baseline_bytes is None or self.steady_peak_bytes is None:
            return None
        return max(0, self.steady_peak_bytes - self.steady_baseline_bytes)


def _peak_rss() -> tuple[int, str]:
    """This process's resident-set high-water mark in bytes, and where it was read.

    On Linux ``ru_maxrss`` is carried across fork and exec: a worker started by a parent holding gigabytes
    would report the parent's size. ``VmHWM`` in ``/proc/self/status`` belongs to this process image alone, so
    it is preferred where it exists.
    """
    try:
        return _status_bytes("VmHWM"), "VmHWM"
    except OSError:
        pass
    scale = 1 if sys.platform == "darwin" else 1024  # Linux reports KiB, macOS bytes
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale, "ru_maxrss"


def _work(args) -> dict:
    import numpy as np

    import layersens

    from ._methods import LOOP_METHODS, make_method, sample_pairs
    from ._timing import timed

    model = layersens.load_model(args.model, allow_import=args.allow_import)
    split = layersens.split(model, args.layer)
    xs = np.asarray(model.example_inputs[: args.num_examples])
    method = make_method(args.method, split, xs)
    baseline, _ = _peak_rss()
    if args.time_limit:
        # The default action of SIGALRM ends the process even inside a long XLA call, which no Python-level
        # handler could interrupt; the parent reads the signal as "too slow".
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
        signal.setitimer(signal.ITIMER_REAL, args.time_limit)

    def first_call():
        method.compile()
        if args.method not in LOOP_METHODS:
            return method.run()
        pairs = sample_pairs(len(xs), split.num_outputs, args.loop_sample, seed=args.seed)
        result = np.empty((len(xs), split.num_outputs, split.num_params), split.activation_dtype)
        result.fill(0.0)  # the full loop writes every row: fault the whole result in
        result[pairs[:, 0], pairs[:, 1]] = method.rows(pairs)
        return result

    seconds = timed(first_call)[1]  # the result is let go here, as a caller that only wanted it once would
    signal.setitimer(signal.ITIMER_REAL, 0)
    total, sampled = len(xs) * split.num_outputs, min(args.loop_sample, len(xs) * split.num_outputs)
    note = ""
    if args.method in LOOP_METHODS and sampled < total:
        note = f"{sampled} of {total} gradients run, full result buffer faulted in"
    peak, source = _peak_rss()
    out = {"baseline_bytes": baseline, "peak_bytes": peak, "source": source, "seconds": seconds, "note": note}
    if args.method not in LOOP_METHODS and _reset_peak_rss():
        # A second call, compiled programs already held: what each later call adds (working memory + result).
        if hasattr(method, "last"):
            method.last = None
        gc.collect()
        _reset_peak_rss()
        out["steady_baseline_bytes"] = _status_bytes("VmRSS")
        method.run()
        out["steady_peak_bytes"] = _peak_rss()[0]
    return out


def _reset_peak_rss() -> bool:
    """Resets this process's ``VmHWM`` to its current resident set (Linux ``clear_refs``); False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _status_bytes(field: str) -> int:
    """A ``kB`` field of ``/proc/self/status`` (``VmHWM``, ``VmRSS``) in bytes; ``OSError`` where there is none."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise OSError(f"no {field} in /proc/self/status")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m layersens.bench._worker", description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--layer", required=True)
    parser.add_argument("--num-examples", type=int, required=True)
    parser.add_argument("--method", required=True)
    parser.add_argument("--loop-sample", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--time-limit", type=float, help="seconds compile + one run may take (after setup)")
    parser.add_argument("--allow-import", action="store_true")
    args = parser.parse_args(argv)
    try:
        result = _work(args)
    except Exception as e:  # noqa: BLE001 - reported to the parent as data: one failed measurement must not end the benchmark
        result = {"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}
    print(json.dumps(result), flush=True)
    return 0


def measure_peak_memory(
    model_dir,
    layer: str,
    num_examples: int,
    method: str,
    *,
    allow_import: bool,
    loop_sample: int,
    seed: int,
    time_limit_s: float | None = None,
) -> PeakMemory:
    """Runs the worker for one method and reads its JSON. Cost: a fresh Python with JAX (seconds), plus one
    compilation and one computation of the method, stopped after ``time_limit_s`` (``timed_out``) if given."""
    command = [
        sys.executable,
        "-m",
        "layersens.bench._worker",
        "--model",
        str(model_dir),
        "--layer",
        layer,
        "--num-examples",
        str(num_examples),
        "--method",
        method,
        "--loop-sample",
        str(loop_sample),
        "--seed",
        str(seed),
    ]
    if time_limit_s is not None:
        command += ["--time-limit", repr(float(time_limit_s))]
    if allow_import:
        command.append("--allow-import")
    env = dict(os.environ)
    # The worker must import what this process imports (a model class on sys.path, an uninstalled checkout).
    paths = [p or os.getcwd() for p in sys.path]
    env["PYTHONPATH"] = os.pathsep.join(paths + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    # A backstop only: the worker's own timer stops the computation; start-up (imports, model) comes on top.
    timeout = None if time_limit_s is None else time_limit_s + _STARTUP_ALLOWANCE_S
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env, check=False)
    except subprocess.TimeoutExpired:
        return PeakMemory(error=f"worker did not finish within {timeout:.0f} s", timed_out=True)
    if done.returncode == -signal.SIGALRM:
        return PeakMemory(error=f"stopped after the {time_limit_s:g} s limit", timed_out=True)
    lines = done.stdout.strip().splitlines()
    try:
        data = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return PeakMemory(error=f"worker exited with code {done.returncode}: {tail}")
    if "error" in data:
        return PeakMemory(error=data["error"])
    return PeakMemory(
        baseline_bytes=data["baseline_bytes"],
        peak_bytes=data["peak_bytes"],
        steady_baseline_bytes=data.get("steady_baseline_bytes"),
        steady_peak_bytes=data.get("steady_peak_bytes"),
        seconds=data["seconds"],
        source=data.get("source", ""),
        note=data.get("note", ""),
    )


if __name__ == "__main__":
    sys.exit(main())
