"""Benchmarks: layersens against the scalar-gradient loop and JAX's own Jacobians, with every result checked.

``run_benchmark(model_dir, "relu1")`` computes the same per-example Jacobian with every method of
``_methods`` on the model's own example inputs. Each method is first checked against one reference
computation and only then timed; compile time and steady-state time are kept apart; peak memory comes from a
fresh process per method (``_worker``); the machine's memory-write bandwidth is measured in the same run.
:func:`write_report` (``_report``) turns the result into Markdown, JSON and a plot.

Cost: for each layer and example count, one reference Jacobian, then per method one compilation, one
verification run and ``repeats`` timed runs (the scalar loops are capped by ``loop_budget_s`` and extrapolated
from a sample beyond it), and one worker process per method for its memory (and the run limit).
"""

from __future__ import annotations

import dataclasses
import datetime
import gc
import statistics
import time
from collections.abc import Callable, Sequence

import numpy as np

import layersens
from layersens import (
    BudgetError,
    InputShapeError,
    JacobianTooLargeError,
    ModeError,
    SelectionError,
    available_memory,
    format_bytes,
)
from layersens._errors import format_clock

from ._env import DEFAULT_BANDWIDTH_BYTES, Bandwidth, environment, measure_bandwidth
from ._methods import (
    COMPRESSED_METHOD,
    DENSE_METHODS,
    LOOP_METHODS,
    DenseMethod,
    available_methods,
    compare,
    is_method,
    make_method,
    sample_pairs,
)
from ._report import check_report_dir, describe_case, describe_overview, write_report
from ._results import BenchmarkReport, CaseResult, MethodResult, Settings
from ._timing import time_calls, timed
from ._worker import measure_peak_memory

__all__ = ["BenchmarkReport", "CaseResult", "MethodResult", "Settings", "run_benchmark", "write_report"]


def _median(values) -> float:
    return float(statistics.median(values))


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"


def _reference(split, xs, budget: float) -> tuple[np.ndarray, str]:
    """One Jacobian every method is checked against: ``jax.jit(jax.jacfwd)`` per example when the upstream
    parameters are fewer than the outputs, else ``jax.jacrev``, or layersens' chunked mode of the same kind
    when that would not fit in memory."""
    kind = "jacfwd" if split.num_params <= split.num_outputs else "jacrev"
    method = DenseMethod(kind, split, xs)
    method.compile()
    need = method.working_bytes()
    if need is None or need <= budget:
        return method.full(), f"jax.jit(jax.{kind}) per example"
    mode = "fwd" if kind == "jacfwd" else "rev"
    return layersens.jacobian(split, xs, mode=mode).matrix, f"layersens.jacobian(mode={mode!r})"


def _bench_loop(name, method, compile_s, split, xs, reference, settings: Settings) -> MethodResult:
    total = len(xs) * split.num_outputs
    k = settings.loop_sample if name == "loop-jit" else settings.nojit_sample
    pairs = sample_pairs(len(xs), split.num_outputs, k, settings.seed)
    rows = method.rows(pairs)  # also the warm-up
    ok, error = compare(rows[None], reference[pairs[:, 0], pairs[:, 1]][None], settings.rtol, settings.atol)
    common = {
        "compile_seconds": compile_s,
        "max_abs_error": error,
        "checked_entries": rows.size,
        "total_gradients": total,
    }
    if not ok:
        return MethodResult(
            name, "failed", reason=f"sampled rows differ from the reference (max |error| {error:.3g})", **common
        )
    runs = time_calls(lambda: method.rows(pairs), settings.repeats)
    estimate = _median(runs) / len(pairs) * total
    if len(pairs) == total:
        return MethodResult(
            name,
            "ok",
            steady_seconds=_median(runs),
            runs_seconds=tuple(runs),
            timing=f"all {total} gradients, median of {len(runs)}",
            **common,
        )
    if name == "loop-jit" and estimate <= settings.loop_budget_s:
        repeats = max(1, min(settings.repeats, int(settings.loop_budget_s // estimate)))
        full, first = timed(method.full)
        runs = [first]
        ok, error = compare(full, reference, settings.rtol, settings.atol)
        common.update(max_abs_error=error, checked_entries=full.size)
        del full
        if not ok:
            return MethodResult(
                name, "failed", reason=f"differs from the reference (max |error| {error:.3g})", **common
            )
        runs += time_calls(method.full, repeats - 1)
        return MethodResult(
            name,
            "ok",
            steady_seconds=_median(runs),
            runs_seconds=tuple(runs),
            timing=f"all {total} gradients, median of {len(runs)}",
            **common,
        )
    return MethodResult(
        name,
        "ok",
        steady_seconds=estimate,
        runs_seconds=tuple(runs),
        extrapolated=True,
        sampled_gradients=len(pairs),
        timing=f"extrapolated from {len(pairs)} of {total} gradients (median of {len(runs)})",
        **common,
    )


def _too_big(name, method, compile_s, settings: Settings, memory_budget: float) -> MethodResult | None:
    """A dense JAX method whose compiled program would not fit, as a skipped result; ``None`` if it fits."""
    need = method.working_bytes() if name in DENSE_METHODS else None
    if need is None or need <= memory_budget:
        return None
    return MethodResult(
        name,
        "skipped",
        compile_seconds=compile_s,
        working_bytes=need,
        reason=(
            f"its compiled program needs {format_bytes(need)} (XLA's count), over {settings.memory_fraction:.0%} "
            f"of the {format_bytes(available_memory())} available"
        ),
    )


def _capped(times, settings: Settings) -> str:
    if len(times) >= settings.repeats:
        return ""
    return f" (capped by the {settings.method_budget_s:g} s budget)"


def _bench_full(name, method, compile_s, split, xs, reference, settings: Settings) -> MethodResult:
    need = method.working_bytes() if name in DENSE_METHODS else None
    result = method.full()  # also the warm-up
    ok, error = compare(result, reference, settings.rtol, settings.atol)
    common = {"max_abs_error": error, "checked_entries": result.size, "working_bytes": need}
    del result
    if not ok:
        return MethodResult(
            name,
            "failed",
            compile_seconds=compile_s,
            reason=f"differs from the reference (max |error| {error:.3g})",
            **common,
        )
    if name in DENSE_METHODS:
        times = time_calls(method.run, settings.repeats, settings.method_budget_s)
        return MethodResult(
            name,
            "ok",
            compile_seconds=compile_s,
            steady_seconds=_median(times),
            runs_seconds=tuple(times),
            timing=f"median of {len(times)}{_capped(times, settings)}",
            **common,
        )
    # Kernels are compiled by the first (verification) call and kept on the split: that call's compile time is
    # the method's, and the timed calls that follow measure the steady state.
    first_compile = method.first_compile_seconds
    computes = []

    def run():
        result = method.run()
        computes.append(method.last_seconds)
        return result

    walls = time_calls(run, settings.repeats, settings.method_budget_s)
    if name == COMPRESSED_METHOD:
        common["result_bytes"] = method.last.nbytes
    method.last = None
    return MethodResult(
        name,
        "ok",
        compile_seconds=first_compile,
        steady_seconds=_median(walls),
        runs_seconds=tuple(walls),
        compute_seconds=_median(computes),
        timing=f"median of {len(walls)} whole calls{_capped(walls, settings)}",
        **common,
    )


def _with_ratios(methods: list[MethodResult], jacobian_bytes: int, bandwidth: Bandwidth) -> list[MethodResult]:
    def steady(name):
        m = next((m for m in methods if m.name == name and m.ok), None)
        return m.steady_seconds if m else None

    loop = steady("loop-jit")
    dense = [t for t in (steady("jacrev"), steady("jacfwd")) if t is not None]
    best = min(dense) if dense else None
    out = []
    for m in methods:
        if m.ok and m.steady_seconds and m.steady_seconds > 0:
            # The compressed method writes fewer bytes than the dense matrix: no dense write rate for it.
            rate = None if m.name == COMPRESSED_METHOD else jacobian_bytes / m.steady_seconds
            m = dataclasses.replace(
                m,
                bytes_per_second=rate,
                write_fraction=None if rate is None else rate / bandwidth.fill,
                speedup_vs_loop=loop / m.steady_seconds if loop else None,
                speedup_vs_best_jax=best / m.steady_seconds if best else None,
            )
        out.append(m)
    return out


class _Steps:
    """Numbers the benchmark's steps for ``progress(message)`` and estimates the time left."""

    def __init__(self, progress, total: int):
        self.progress, self.total, self.done, self.began = progress, total, 0, time.perf_counter()

    def __call__(self, message: str, step: bool = True) -> None:
        if self.progress is None:
            return
        if not step:  # a part of the current step
            self.progress(f"step {self.done} of {self.total}: {message}")
            return
        elapsed = time.perf_counter() - self.began
        left = ""
        if self.done:
            left = f" (ETA ~{format_clock(int(elapsed / self.done * (self.total - self.done)))}, rough)"
        self.done += 1
        self.progress(f"step {self.done} of {self.total}: {message}{left}")


def _bench_case(model, model_dir, layer, n, settings, bandwidth, progress, measure_memory, allow_import):
    split = layersens.split(model, layer)
    xs = np.asarray(model.example_inputs[:n])
    nbytes = n * split.num_outputs * split.num_params * np.dtype(split.activation_dtype).itemsize
    if 3 * nbytes > available_memory():  # the reference, one method's result and its verification
        raise JacobianTooLargeError(
            f"the Jacobian of {layer!r} for {n} example(s) is {format_bytes(nbytes)}; benchmarking holds about three "
            f"of them and only {format_bytes(available_memory())} is available. Use fewer examples (num_examples)."
        )
    memory_budget = settings.memory_fraction * available_memory()
    progress(f"{layer} ×{n}: reference")
    reference, reference_name = _reference(split, xs, memory_budget)
    results = []
    for name in settings.methods:
        progress(f"{layer} ×{n}: {name}")
        own = None
        try:
            method = make_method(name, split, xs)
            compile_s = method.compile()
            result = _too_big(name, method, compile_s, settings, memory_budget)
            if result is not None:  # never run, here or in a worker
                results.append(result)
                continue
            # Its own process next: peak memory, and a method too slow for the run limit is stopped there,
            # where it can be (a JAX computation in this process cannot be interrupted).
            guard = settings.run_limit_s if name not in LOOP_METHODS else None
            if measure_memory or guard is not None:
                progress(f"{layer} ×{n}: {name} (own process)", step=False)
                own = measure_peak_memory(
                    model_dir,
                    layer,
                    n,
                    name,
                    allow_import=allow_import,
                    seed=settings.seed,
                    time_limit_s=guard,
                    loop_sample=settings.loop_sample if name == "loop-jit" else settings.nojit_sample,
                )
                if own.timed_out:
                    results.append(
                        MethodResult(
                            name,
                            "skipped",
                            compile_seconds=compile_s,
                            reason=(
                                f"too slow: compiling and one run in a process of its own did not finish within the "
                                f"{settings.run_limit_s:g} s run limit"
                            ),
                        )
                    )
                    continue
            bench = _bench_loop if name in LOOP_METHODS else _bench_full
            result = bench(name, method, compile_s, split, xs, reference, settings)
        except Exception as e:  # noqa: BLE001 - a method that raises is a failed method, not a failed benchmark
            result = MethodResult(name, "failed", reason=_first_line(e))
        method = None  # release its compiled programs and buffers before the next method compiles
        gc.collect()
        if result.ok and measure_memory:
            result = dataclasses.replace(result, memory=own)
        results.append(result)
    del reference
    gc.collect()
    case = CaseResult(
        layer=layer,
        num_examples=n,
        num_outputs=split.num_outputs,
        num_params=split.num_params,
        num_leaves=len(split.param_names),
        jacobian_bytes=nbytes,
        reference=reference_name,
        methods=tuple(_with_ratios(results, nbytes, bandwidth)),
    )
    return dataclasses.replace(case, summary=describe_case(case, bandwidth))


def _as_tuple(value, kind) -> tuple:
    if isinstance(value, (str, int, np.integer)):
        return (kind(value),)
    return tuple(kind(v) for v in value)


def _check_methods(methods) -> tuple[str, ...]:
    known = available_methods()
    if methods is None:
        return known
    if isinstance(methods, str):
        methods = [m.strip() for m in methods.split(",") if m.strip()]
    methods = tuple(dict.fromkeys(methods))
    unknown = [m for m in methods if not is_method(m)]
    if unknown or not methods:
        raise ModeError(
            f"methods {list(methods)}: unknown {unknown or 'none given'}; choose from {', '.join(known)} "
            "(any layersens-<mode>@<size> too, e.g. layersens-auto@32MiB)."
        )
    return methods


def run_benchmark(
    model_dir,
    layer: str | Sequence[str],
    *,
    num_examples: int | Sequence[int] = 1,
    methods: Sequence[str] | str | None = None,
    repeats: int = 5,
    loop_budget_s: float = 30,
    method_budget_s: float | None = None,
    run_limit_s: float | None = None,
    out_dir=None,
    overwrite: bool = False,
    allow_import: bool = False,
    progress: Callable[[str], None] | None = None,
    measure_memory: bool = True,
    bandwidth_bytes: int = DEFAULT_BANDWIDTH_BYTES,
    loop_sample: int = 256,
    nojit_sample: int = 20,
    seed: int = 0,
) -> BenchmarkReport:
    """Benchmarks every method (default: all of :func:`available_methods`) on each layer in
    ``layer`` and each count in ``num_examples`` of the model's example inputs; see the module docstring.

    ``loop_budget_s`` caps the time spent on full runs of the jitted scalar loop; beyond it the loop is timed on
    ``loop_sample`` random gradients and extrapolated (and labelled so). ``method_budget_s`` caps every other
    method's timed runs likewise (at least one; default: always ``repeats``). With ``run_limit_s``, each method
    but the loops first compiles and runs once in a process of its own; one that does not finish within the limit
    is stopped there and reported as skipped. With
    ``out_dir`` the report is also written there (:func:`write_report`) and ``files`` lists what was written;
    ``out_dir`` is checked before anything runs: a file there, or a report already there (unless
    ``overwrite``), is an :class:`~layersens.OutputError`.
    ``progress(message)`` is told what runs next: ``"step k of N: ..."``, with an estimate of the time left once a
    step has run (the mean step so far, times the steps left: methods differ, so it is labelled as rough).
    """
    if out_dir is not None:
        check_report_dir(out_dir, overwrite)
    layers = _as_tuple(layer, str)
    counts = _as_tuple(num_examples, int)
    if not layers:
        raise SelectionError("no layer given; name at least one (run `layersens layers --model DIR` to list them).")
    if (
        repeats < 1
        or loop_budget_s <= 0
        or loop_sample < 1
        or nojit_sample < 1
        or any(v is not None and v <= 0 for v in (method_budget_s, run_limit_s))
    ):
        raise BudgetError(
            f"repeats ({repeats}), loop_budget_s ({loop_budget_s}), method_budget_s ({method_budget_s}), "
            f"run_limit_s ({run_limit_s}) and the sample sizes ({loop_sample}, {nojit_sample}) must be "
            "positive; the defaults are 5, 300, none, none, 256 and 20."
        )
    settings = Settings(
        repeats=repeats,
        loop_budget_s=float(loop_budget_s),
        loop_sample=loop_sample,
        nojit_sample=nojit_sample,
        seed=seed,
        rtol=1e-4,
        atol=1e-4,
        methods=_check_methods(methods),
        method_budget_s=None if method_budget_s is None else float(method_budget_s),
        run_limit_s=None if run_limit_s is None else float(run_limit_s),
    )
    model = layersens.load_model(model_dir, allow_import=allow_import)
    if model.example_inputs is None:
        raise InputShapeError(
            f"model {model_dir} ships no example inputs; the benchmark runs on them. Save the "
            "model with example_inputs= (layersens.save_model)."
        )
    available = len(model.example_inputs)
    bad = [n for n in counts if not 1 <= n <= available]
    if bad or not counts:
        raise InputShapeError(
            f"num_examples {list(counts)}: the model ships {available} example inputs, so "
            f"choose counts from 1 to {available}."
        )
    for name in layers:  # unknown layers fail before minutes of benchmarking, not after
        layersens.split(model, name)
    steps = _Steps(progress, 1 + len(layers) * len(counts) * (1 + len(settings.methods)))
    env = environment()
    steps("memory-write bandwidth")
    bandwidth = measure_bandwidth(bandwidth_bytes)
    cases = tuple(
        _bench_case(model, model_dir, name, n, settings, bandwidth, steps, measure_memory, allow_import)
        for name in layers
        for n in counts
    )
    report = BenchmarkReport(
        model_dir=str(model_dir),
        model_name=model.name,
        framework=model.framework,
        eval_mode=model.eval_mode,
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        settings=settings,
        environment=env,
        bandwidth=bandwidth,
        cases=cases,
    )
    report = dataclasses.replace(report, overview=describe_overview(report))
    if out_dir is not None:
        report = dataclasses.replace(report, files=tuple(str(p) for p in write_report(report, out_dir)))
    return report
