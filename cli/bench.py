"""``layersens bench``: every Jacobian method on one model's layers, verified, timed, written up as a report.

Registered on the main group with ``main.add_command(bench)``; usable on any click group.
"""

from __future__ import annotations

import functools
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from layersens.bench import available_methods
from layersens.bench import run_benchmark

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False)


def _clean_errors(command):
    """``main.clean_errors``, looked up when the command runs, so this module can be imported from ``main``
    (to register the command) in any order."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        from .main import clean_errors

        return clean_errors(command)(*args, **kwargs)

    return wrapper


def _seconds(value) -> str:
    if value is None:
        return "—"
    return f"{value:.3g} s" if value >= 1 else f"{value * 1e3:.3g} ms"


def _ratio(value) -> str:
    if value is None:
        return "—"
    return f"{value:,.0f}×" if value >= 100 else f"{value:.3g}×"


@click.command(short_help="Benchmark against the scalar-gradient loop and JAX's jacrev/jacfwd.", epilog="""\b
Examples:
  layersens bench --layer relu1 --model layersens/examples/lenet_digits --num-examples 1
  layersens bench --layer relu1 --layer fc1 --model DIR --num-examples 1 --num-examples 8 --out report/""")
@click.option("--layer", "layers", multiple=True, required=True,
              help="Layer name, as listed by `layersens layers`; repeat for several layers.")
@click.option("--model", "model_dir", required=True, type=click.Path(path_type=Path),
              help="Model directory: an Orbax checkpoint with its layersens.json spec.")
@click.option("--num-examples", "num_examples", type=int, multiple=True, default=(1,), show_default=True,
              help="How many of the model's example inputs to use; repeat for several counts.")
@click.option("--repeats", type=int, default=5, show_default=True, help="Timed runs per method (median reported).")
@click.option("--loop-budget", type=float, default=300.0, show_default=True,
              help="Seconds one full run of the jitted scalar loop may take; beyond it the loop is extrapolated "
                   "from a sample.")
@click.option("--method-budget", type=float,
              help="Seconds of timed runs any other method may take; a slow method gets fewer than --repeats "
                   "(at least one). Default: no cap.")
@click.option("--run-limit", type=float,
              help="Seconds compiling and one run of a method may take, tried first in a process of its own; a "
                   "slower method is reported as skipped. Default: no limit.")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=Path("bench-report"), show_default=True,
              help="Directory for report.md, report.json and plot.png.")
@click.option("--methods", help="Comma-separated subset of: " + ", ".join(available_methods()) + " (default: all).")
@click.option("--no-memory", is_flag=True, help="Skip the per-method peak-memory runs (one process per method).")
@click.option("--allow-import", is_flag=True,
              help="Allow importing the module class named by the spec (runs its code). Not needed for shipped "
                   "examples.")
@_clean_errors
def bench(layers, model_dir, num_examples, repeats, loop_budget, method_budget, run_limit, out_dir, methods,
          no_memory, allow_import):
    """Benchmark every way of computing each --layer's Jacobian: scalar-gradient loops, jax.jacrev/jacfwd and
    each layersens strategy. Each result is verified before it is timed; writes a Markdown/JSON/PNG report."""
    report = run_benchmark(
        model_dir, list(layers), num_examples=list(num_examples), methods=methods, repeats=repeats,
        loop_budget_s=loop_budget, method_budget_s=method_budget, run_limit_s=run_limit,
        out_dir=out_dir, allow_import=allow_import,
        measure_memory=not no_memory,
        progress=lambda message: err.print(f"[dim]… {message}[/dim]"),
    )
    table = Table(title=f"{report.model_name}: steady-state time per method (compile excluded)")
    for column in ("layer", "N", "method", "compile", "steady", "vs loop-jit", "vs best jax"):
        table.add_column(column, justify="left" if column in ("layer", "method") else "right",
                         no_wrap=column == "method")
    for case in report.cases:
        for m in case.methods:
            steady = _seconds(m.steady_seconds) + (" *" if m.extrapolated else "") if m.ok else m.status
            table.add_row(case.layer, str(case.num_examples), m.name, _seconds(m.compile_seconds), steady,
                          _ratio(m.speedup_vs_loop), _ratio(m.speedup_vs_best_jax))
    out.print(table)
    if any(m.extrapolated for case in report.cases for m in case.methods):
        out.print("* extrapolated from a sample of gradients (see the report).")
    out.print(report.overview)
    for path in report.files:
        out.print(f"wrote       {path}")
