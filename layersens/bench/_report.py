"""Benchmark reports: a paragraph of findings derived from the numbers, and the Markdown, JSON and PNG files.

Every sentence in a report is computed from the measurements of that run: which method won, by how much, how
close it came to the memory-write floor. Nothing is claimed that the numbers do not show. Files are written
atomically (a temporary file in the same directory, renamed into place: ``layersens._atomic``).
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np

from layersens import LayersensError, format_bytes

from .._atomic import check_report_dir as check_directory
from .._atomic import write_bytes
from . import _format as fmt
from ._names import COMPRESSED_METHOD, method_budget

FORMAT = "layersens-benchmark/1"
FILES = ("report.md", "report.json", "plot.png")
_GB = 1e9


def _ok(case):
    """The verified methods that return the dense matrix, fastest first (the compressed result is ranked apart:
    it writes fewer bytes, so it answers a different question)."""
    return sorted((m for m in case.methods if m.ok and m.name != COMPRESSED_METHOD), key=lambda m: m.steady_seconds)


def _compressed_ratio(case):
    """``(compressed, fastest dense layersens method, its time ÷ compressed time)``, or ``None``."""
    compressed = case.method(COMPRESSED_METHOD)
    dense = [m for m in _ok(case) if m.name.startswith("layersens-")]
    if compressed is None or not compressed.ok or not dense or not compressed.steady_seconds:
        return None
    return compressed, dense[0], dense[0].steady_seconds / compressed.steady_seconds


def _compressed_sentence(case) -> str:
    found = _compressed_ratio(case)
    if found is None:
        return ""
    compressed, dense, ratio = found
    size = (
        f" ({format_bytes(compressed.result_bytes)} of per-channel blocks instead of the dense "
        f"{format_bytes(case.jacobian_bytes)})"
        if compressed.result_bytes
        else ""
    )
    return (
        f"{COMPRESSED_METHOD} (compressed_jacobian{size}) took {fmt.seconds(compressed.steady_seconds)}: "
        f"{fmt.speedup(max(ratio, 1 / ratio))} {'faster' if ratio >= 1 else 'slower'} than the fastest "
        f"dense layersens strategy ({dense.name}, {fmt.seconds(dense.steady_seconds)})."
    )


def spread(m) -> tuple[float, float] | None:
    """The interquartile range of a method's timed runs (``None`` for fewer than three runs)."""
    if len(m.runs_seconds) < 3:
        return None
    q1, q3 = np.percentile(m.runs_seconds, [25, 75])
    return float(q1), float(q3)


def tied(a, b) -> bool:
    """Whether two methods' times are within noise of each other: medians within 10%, or overlapping
    interquartile ranges."""
    if b.steady_seconds <= 1.1 * a.steady_seconds and a.steady_seconds <= 1.1 * b.steady_seconds:
        return True
    sa, sb = spread(a), spread(b)
    return sa is not None and sb is not None and sa[0] <= sb[1] and sb[0] <= sa[1]


def describe_case(case, bandwidth) -> str:
    """What one case's numbers show, in words."""
    ok = _ok(case)
    where = (
        f"For {case.layer} at {case.num_examples} example(s) (M = {case.num_outputs:,} outputs, "
        f"P = {case.num_params:,} upstream parameters, {format_bytes(case.jacobian_bytes)} dense)"
    )
    if not ok:
        return f"{where}, no method produced a verified result."
    win, loop = ok[0], case.method("loop-jit")
    text = [f"{where}, {win.name} was fastest: {fmt.seconds(win.steady_seconds)} after compilation"]
    if loop is not None and loop.ok and win is not loop:
        label = ", extrapolated" if loop.extrapolated else ""
        text[-1] += (
            f", {fmt.speedup(win.speedup_vs_loop)} the jitted scalar loop ({fmt.seconds(loop.steady_seconds)}{label})"
        )
    if win.speedup_vs_best_jax is not None and win.name not in ("jacrev", "jacfwd"):
        text[-1] += f" and {fmt.speedup(win.speedup_vs_best_jax)} the better of jax.jacrev/jax.jacfwd"
    text[-1] += "."
    close = [m.name for m in ok[1:] if tied(win, m)]
    if close:
        text.append(
            f"{', '.join(close)} tied with it (within 10%, or their runs' interquartile ranges overlap: this "
            "machine's run-to-run noise), so they are not ranked against it."
        )
    fwd, rev = case.method("jacfwd"), case.method("jacrev")
    if fwd is not None and rev is not None and fwd.ok and rev.ok:
        ratio = rev.steady_seconds / fwd.steady_seconds
        shape_says = case.num_params < case.num_outputs
        agrees = (ratio > 1) == shape_says
        text.append(
            f"Forward mode pushes P = {case.num_params:,} tangents per example and reverse mode pulls back "
            f"M = {case.num_outputs:,} cotangents; jacfwd was {fmt.speedup(ratio if ratio >= 1 else 1 / ratio)} "
            f"{'faster' if ratio >= 1 else 'slower'} than jacrev, "
            f"{'as that count predicts' if agrees else 'against what that count alone predicts'}."
        )
    elif fwd is not None and fwd.status == "skipped":
        text.append(f"jacfwd was not run: {fwd.reason}.")
    if rev is not None and rev.ok and loop is not None and loop.ok:
        r = rev.speedup_vs_loop
        if r < 1:
            text.append(
                f"jax.jacrev took {fmt.speedup(1 / r)} as long as the jitted loop: vectorizing the same "
                "pullbacks bought nothing over a compiled loop here."
            )
        else:
            text.append(
                f"jax.jacrev was {fmt.speedup(r)} as fast as the jitted loop"
                + (": vectorizing the same pullbacks gains little over a compiled loop here." if r < 3 else ".")
            )
    nojit = case.method("loop-nojit")
    if nojit is not None and nojit.ok and loop is not None and loop.ok:
        text.append(
            f"Without jit the loop took {fmt.speedup(nojit.steady_seconds / loop.steady_seconds)} as long as with it."
        )
    if win.write_fraction is not None:
        floor = case.jacobian_bytes / bandwidth.fill
        fresh = case.jacobian_bytes / bandwidth.first_touch
        text.append(
            f"{win.name} produced the dense matrix at {win.bytes_per_second / _GB:.3g} GB/s: "
            f"{fmt.percent(win.write_fraction)} of this machine's write bandwidth into memory already in use "
            f"({bandwidth.fill / _GB:.3g} GB/s; {fmt.seconds(floor)} for this result) and "
            f"{fmt.percent(win.bytes_per_second / bandwidth.first_touch)} of its first-touch bandwidth into fresh "
            f"memory ({bandwidth.first_touch / _GB:.3g} GB/s; {fmt.seconds(fresh)}), which any call returning a new "
            "matrix pays"
            + (
                ". That is within 2× of the floor set by writing the result: further gains on the dense matrix must "
                "come from writing less of it."
                if win.steady_seconds <= 2 * fresh
                else "; computing, not writing, still dominates its time."
            )
        )
    if win.compile_seconds and win.compile_seconds > win.steady_seconds:
        text.append(
            f"Its compilation ({fmt.seconds(win.compile_seconds)}) takes longer than its computation, so a "
            "single call is dominated by compiling."
        )
    compressed = _compressed_sentence(case)
    if compressed:
        text.append(compressed)
    memory = _memory_sentence(case)
    if memory:
        text.append(memory)
    missing = [f"{m.name} {m.status} ({m.reason})" for m in case.methods if not m.ok]
    if missing:
        text.append("Not timed: " + "; ".join(missing) + ".")
    return " ".join(text)


def describe_overview(report) -> str:
    """Which method won where, across every case."""
    wins: dict[str, list[str]] = {}
    for case in report.cases:
        ok = _ok(case)
        if ok:
            wins.setdefault(ok[0].name, []).append(f"{case.layer} ×{case.num_examples}")
    if not wins:
        return "No method produced a verified result."
    parts = [
        f"{name} in {len(where)} ({', '.join(where)})"
        for name, where in sorted(wins.items(), key=lambda kv: -len(kv[1]))
    ]
    text = [f"Fastest method per case, over {len(report.cases)} case(s): " + "; ".join(parts) + "."]
    best = []
    for case in report.cases:
        ours = [m for m in _ok(case) if m.name.startswith("layersens-") and m.speedup_vs_loop is not None]
        if ours:
            best.append((ours[0].speedup_vs_loop, ours[0].speedup_vs_best_jax, case))
    if best:
        text.append(
            f"The best layersens strategy per case was {fmt.span([b[0] for b in best])} as fast as the jitted "
            "scalar loop"
        )
        jax_ratios = [b[1] for b in best if b[1] is not None]
        if jax_ratios:
            text[-1] += f" and {fmt.span(jax_ratios)} as fast as the better of jacrev/jacfwd"
        text[-1] += "."
    ratios = [found[2] for case in report.cases if (found := _compressed_ratio(case)) is not None]
    if ratios:
        text.append(
            f"{COMPRESSED_METHOD}, which writes per-channel blocks instead of the dense matrix, took "
            f"{fmt.span([1 / r for r in ratios])} the time of the fastest dense layersens strategy."
        )
    extrapolated = [c for c in report.cases if (m := c.method("loop-jit")) is not None and m.extrapolated]
    if extrapolated:
        text.append(f"The jitted loop was extrapolated from a sample in {len(extrapolated)} case(s) (marked).")
    return " ".join(text)


def _jsonable(value):
    if dataclasses.is_dataclass(value):
        out = {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if hasattr(value, "added_bytes"):
            out["added_bytes"] = value.added_bytes
        return out
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no infinity
    return value


def report_json(report) -> dict:
    data = _jsonable(report)
    data["format"] = FORMAT
    data.pop("files", None)
    return data


def _memory_sentence(case) -> str:
    """layersens-auto's peak memory against the result's size and, for budgeted runs, against the budget."""
    parts = []
    for m in sorted((m for m in case.methods if m.ok), key=lambda m: m.steady_seconds):
        steady = m.memory.steady_added_bytes if m.memory is not None else None
        if not (m.name.startswith("layersens-auto") or m.name == COMPRESSED_METHOD) or steady is None:
            continue
        budget = method_budget(m.name)
        beyond = steady - case.jacobian_bytes
        text = (
            f"{m.name} added {format_bytes(steady)} per call at its peak "
            f"({steady / case.jacobian_bytes:.2g}× the result; {format_bytes(max(0, beyond))} beyond it"
        )
        if budget is not None:
            text += f", {'within' if beyond <= budget else 'over'} its {format_bytes(budget)} working-memory budget"
        parts.append(text + f"; {format_bytes(m.memory.added_bytes)} for the first call, compilation included)")
    return ("Peak memory: " + "; ".join(parts) + ".") if parts else ""


def _method_row(m) -> list[str]:
    memory = m.memory.added_bytes if m.memory is not None else None
    memory_text = (
        format_bytes(memory)
        if memory is not None
        else ("not measured (see JSON)" if m.memory is not None and m.memory.error else "—")
    )
    steady = m.memory.steady_added_bytes if m.memory is not None else None
    if steady is not None:
        memory_text += f" / {format_bytes(steady)}"
    steady_text = fmt.seconds(m.steady_seconds) + (" *" if m.extrapolated else "")
    quartiles = None if m.extrapolated else spread(m)
    if quartiles is not None:
        steady_text += f" ({fmt.seconds(quartiles[0])}–{fmt.seconds(quartiles[1])})"
    return [
        m.name,
        m.status,
        fmt.seconds(m.compile_seconds),
        steady_text,
        m.timing or m.reason,
        fmt.speedup(m.speedup_vs_loop),
        fmt.speedup(m.speedup_vs_best_jax),
        "—" if m.bytes_per_second is None else f"{m.bytes_per_second / _GB:.3g}",
        fmt.percent(m.write_fraction),
        memory_text,
        "—" if m.max_abs_error is None else f"{m.max_abs_error:.2g}",
    ]


def _table(header, rows) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(str(c).replace("|", "/") for c in row) + " |" for row in rows]


def report_markdown(report) -> str:
    env, bw, s = report.environment, report.bandwidth, report.settings
    threads = ", ".join(f"{k}={v}" for k, v in env.thread_settings if v is not None) or "none set"
    lines = [
        f"# layersens benchmark: {report.model_name} ({report.framework})",
        "",
        f"Model `{report.model_dir}` ({report.eval_mode.rstrip('.')}). Created {report.created}.",
        "",
        "## Findings",
        "",
        report.overview,
        "",
    ]
    for case in report.cases:
        lines += [f"- **{case.layer} ×{case.num_examples}.** {case.summary}"]
    bandwidth = (
        f"fill {bw.fill / _GB:.3g} GB/s, copy {bw.copy / _GB:.3g} GB/s written, first touch "
        f"{bw.first_touch / _GB:.3g} GB/s ({format_bytes(bw.buffer_bytes)} float32, median of {bw.repeats})"
    )
    lines += ["", "## Machine", ""] + _table(
        ["", ""],
        [
            ["devices", ", ".join(env.devices)],
            ["CPU", f"{env.cpu_model}; os.cpu_count() = {env.cpu_count}, usable = {env.usable_cpus}"],
            ["load average at start", str(env.load_average)],
            ["available memory", format_bytes(env.available_memory_bytes)],
            ["versions", ", ".join(f"{k} {v}" for k, v in env.versions) + f", python {env.python}"],
            ["platform", env.platform],
            ["thread settings", threads],
            ["memory-write bandwidth", bandwidth],
        ],
    )
    budget = (
        f"; a method whose runs are long gets only as many as fit in {s.method_budget_s:g} s (at least one; "
        "the timing column says so)."
        if s.method_budget_s is not None
        else "."
    )
    run_limit = (
        [
            (
                f"- Run limit: each method but the loops first compiled and ran once in a process of its own; one "
                f"that did not finish within {s.run_limit_s:g} s there was stopped and is reported as skipped, "
                "not run here."
            )
        ]
        if s.run_limit_s is not None
        else []
    )
    lines += [
        "",
        "## How it was measured",
        "",
        (
            f"- Every method's result is compared with one reference (named per case) before it is timed: "
            f"|result − reference| ≤ {s.atol:g} + {s.rtol:g}·|reference| everywhere (loops: on their sampled "
            "rows, and on the whole matrix when run in full). A method that differs or raises is reported as "
            "failed and not timed; a dense JAX method whose compiled program (XLA's count) needs more than "
            f"{s.memory_fraction:.0%} of available memory is skipped."
        ),
        (
            "- Compile time is `jax.jit(f).lower(...).compile()`; steady-state time is the median of "
            f"{s.repeats} runs after one warm-up run, for all examples, results copied to host memory{budget}"
        ),
        *run_limit,
        (
            "- layersens plans and compiles on its first `layersens.jacobian` call and keeps both on the split; "
            "its compile time is that call's `.compile_seconds` and its steady state the median wall time of "
            "whole later calls (input checks, dispatch, computation and the host result included); the "
            "`.seconds` those calls report are in the JSON (`compute_seconds`)."
        ),
        (
            f"- `{COMPRESSED_METHOD}` is `layersens.compressed_jacobian` (per-channel blocks for channel-diagonal "
            "leaves): verified through its lossless `to_dense()`, timed and measured as it is called, without "
            "that conversion. It is ranked apart from the methods that return the dense matrix, and has no "
            "dense write rate."
        ),
        (
            f"- loop-jit runs in full while one full loop is estimated to take at most {s.loop_budget_s:g} s "
            f"(with as many repeats as fit, at least one); beyond that it is timed on {s.loop_sample} random "
            f"gradients (seed {s.seed}) and extrapolated. loop-nojit is timed on {s.nojit_sample} random "
            "gradients. Extrapolated times are marked *."
        ),
        (
            "- Peak memory: each method runs once (compilation included) in a fresh process before it is timed "
            "here; the column is the growth of its peak resident set over the baseline after loading the model, "
            "for that first call and (after resetting the high-water mark) for a second call with the compiled "
            "programs held: what each later call adds, the result included. Loops run their sample into a "
            "faulted-in full result buffer. `layersens-auto@SIZE` is auto with `max_memory=SIZE`."
        ),
        (
            "- `steady` is the median of the timed runs, with their interquartile range in brackets (three runs "
            "or more); methods within 10% of each other, or whose ranges overlap, are tied, not ranked.\n"
            "- Ratios are steady-state times: `vs loop-jit` = loop-jit time ÷ method time, `vs best jax` = the "
            "faster of jacrev/jacfwd ÷ method time. `% write bw` = dense Jacobian bytes per second ÷ the fill "
            "bandwidth above."
        ),
        "",
    ]
    header = [
        "method",
        "status",
        "compile",
        "steady",
        "timing",
        "vs loop-jit",
        "vs best jax",
        "GB/s",
        "% write bw",
        "peak added (first / later call)",
        "max abs err",
    ]
    for case in report.cases:
        lines += [
            f"## {case.layer}, {case.num_examples} example(s)",
            "",
            (
                f"Jacobian {case.num_examples} × {case.num_outputs:,} × {case.num_params:,} "
                f"({case.num_leaves} upstream leaves) = {format_bytes(case.jacobian_bytes)}; reference: "
                f"{case.reference}."
            ),
            "",
        ]
        lines += _table(header, [_method_row(m) for m in case.methods]) + ["", case.summary, ""]
    lines += ["## Plot", "", "![steady-state time per method](plot.png)", ""]
    return "\n".join(lines)


def check_report_dir(out_dir, overwrite: bool = False, option: str = "--out") -> Path:
    """Checks, before a benchmark runs, that its report can be written into ``out_dir``: not a file (nor inside
    one), and holding no earlier report unless ``overwrite``. Returns the directory."""
    return check_directory(out_dir, FILES, overwrite, option, what="a benchmark report")


def write_report(report, out_dir) -> tuple[Path, Path, Path]:
    """Writes ``report.md``, ``report.json`` and ``plot.png`` into ``out_dir`` (created if needed), each
    atomically, and returns their paths."""
    out_dir = Path(out_dir)
    paths = tuple(out_dir / name for name in FILES)
    try:
        import matplotlib  # noqa: F401  (imported only when a report is written)
    except ImportError:
        raise LayersensError("the benchmark report's plot needs matplotlib: pip install 'layersens[bench]'.") from None
    from ._plot import report_plot

    contents = (
        report_markdown(report).encode(),
        (json.dumps(report_json(report), indent=2) + "\n").encode(),
        report_plot(report),
    )
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        for path, data in zip(paths, contents):
            write_bytes(path, data)  # the project's one atomic writer
    except OSError as e:
        raise LayersensError(
            f"cannot write the benchmark report into {out_dir} ({e.strerror or e}); choose a "
            "writable directory (--out DIR)."
        ) from None
    return paths
