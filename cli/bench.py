"""``layersens bench``: every Jacobian method on one model's layers, verified, timed, written up as a report.

Registered on the main group by ``main``; a plain click command, usable on any click group.
"""

from __future__ import annotations

from pathlib import Path

import click
from rich.markup import escape
from rich.table import Table

from layersens.bench import available_methods

from ._common import (
    CONTEXT,
    allow_import_option,
    clean_errors,
    model_dir_option,
    out,
    overwrite_option,
    quiet_option,
    status_line,
)


@click.command(
    context_settings=CONTEXT,
    short_help="Benchmark against the scalar-gradient loop and JAX's jacrev/jacfwd.",
    epilog="""\b
Examples:
  layersens bench --layer relu1 --model layersens/examples/lenet_digits --num-examples 1
  layersens bench --layer relu1 --layer fc1 --model DIR --num-examples 1 --num-examples 8 --out report/""",
)
@click.option(
    "--layer",
    "layers",
    multiple=True,
    required=True,
    help="Layer name, as listed by `layersens layers`; repeat for several layers.",
)
@model_dir_option("Model directory: an Orbax checkpoint with its layersens.json spec.")
@click.option(
    "--num-examples",
    "num_examples",
    type=int,
    multiple=True,
    default=(1,),
    show_default=True,
    help="How many of the model's example inputs to use; repeat for several counts.",
)
@click.option("--repeats", type=int, default=5, show_default=True, help="Timed runs per method (median reported).")
@click.option(
    "--loop-budget",
    type=float,
    default=30.0,
    show_default=True,
    help="Seconds one full run of the jitted scalar loop may take; beyond it the loop is extrapolated from a sample.",
)
@click.option(
    "--method-budget",
    type=float,
    help="Seconds of timed runs any other method may take; a slow method gets fewer than --repeats "
    "(at least one). Default: no cap.",
)
@click.option(
    "--run-limit",
    type=float,
    help="Seconds compiling and one run of a method may take, tried first in a process of its own; a "
    "slower method is reported as skipped. Default: no limit.",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path),
    default=Path("bench-report"),
    show_default=True,
    help="Directory for report.md, report.json and plot.png; one that holds a report is refused unless --overwrite.",
)
@overwrite_option
@click.option(
    "--methods",
    help="Comma-separated subset of: " + ", ".join(available_methods()) + " (default: all; "
    "any layersens-<mode>@<size> too, e.g. layersens-auto@32MiB).",
)
@click.option("--no-memory", is_flag=True, help="Skip the per-method peak-memory runs (one process per method).")
@allow_import_option
@quiet_option
@clean_errors
def bench(
    layers,
    model_dir,
    num_examples,
    repeats,
    loop_budget,
    method_budget,
    run_limit,
    out_dir,
    overwrite,
    methods,
    no_memory,
    allow_import,
    quiet,
):
    """Benchmark every way of computing each --layer's Jacobian: scalar-gradient loops, jax.jacrev/jacfwd and
    each layersens strategy. Each result is verified before it is timed; writes a Markdown/JSON/PNG report."""
    from layersens.bench import format_seconds, format_speedup, run_benchmark

    report = run_benchmark(
        model_dir,
        list(layers),
        num_examples=list(num_examples),
        methods=methods,
        repeats=repeats,
        loop_budget_s=loop_budget,
        method_budget_s=method_budget,
        run_limit_s=run_limit,
        out_dir=out_dir,
        overwrite=overwrite,
        allow_import=allow_import,
        measure_memory=not no_memory,
        progress=None if quiet else status_line,
    )
    table = Table(title=escape(f"{report.model_name}: steady-state time per method (compile excluded)"))
    for column in ("layer", "N", "method", "compile", "steady", "vs loop-jit", "vs best jax"):
        table.add_column(
            column, justify="left" if column in ("layer", "method") else "right", no_wrap=column == "method"
        )
    for case in report.cases:
        for m in case.methods:
            steady = format_seconds(m.steady_seconds) + (" *" if m.extrapolated else "") if m.ok else m.status
            table.add_row(
                escape(case.layer),
                str(case.num_examples),
                m.name,
                format_seconds(m.compile_seconds),
                steady,
                format_speedup(m.speedup_vs_loop),
                format_speedup(m.speedup_vs_best_jax),
            )
    out.print(table)
    if any(m.extrapolated for case in report.cases for m in case.methods):
        out.print("* extrapolated from a sample of gradients (see the report).", markup=False)
    out.print(report.overview, markup=False)
    for path in report.files:
        out.print(f"wrote       {path}", markup=False)
