"""``layersens``: list a model's layers, extract a layer's Jacobian, summarize it, benchmark it.

Each command parses its options, makes one library call and prints the result; a ``LayersensError`` becomes one
line on stderr and exit code 1, with nothing written.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

import layersens
from layersens import LayersensError
from layersens._errors import format_bytes

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False)


def clean_errors(command):
    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except LayersensError as e:
            err.print(f"error: {e}", markup=False, soft_wrap=True)
            sys.exit(1)

    return wrapper


class LazyProgress:
    """A progress bar on stderr that appears with the first chunk, so early errors print alone."""

    def __init__(self, description: str):
        self.description = description
        self.bar = None

    def __call__(self, done: int, total: int):
        if self.bar is None:
            self.bar = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                                TimeElapsedColumn(), console=err, transient=True)
            self.bar.start()
            self.task = self.bar.add_task(self.description, total=total)
        self.bar.update(self.task, completed=done, total=total)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.stop()


model_option = click.option(
    "--model", "model_dir", required=True, type=click.Path(path_type=Path),
    help="Model directory: an Orbax checkpoint with its layersens.json spec.",
)
allow_import_option = click.option(
    "--allow-import", is_flag=True,
    help="Allow importing the module class named by the spec (runs its code). Not needed for shipped examples.",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(layersens.__version__, prog_name="layersens")
def main():
    """Jacobians of a trained network's layer with respect to the parameters that feed it."""


@main.command()
@model_option
@allow_import_option
@clean_errors
def layers(model_dir, allow_import):
    """List every addressable layer, its per-example shape and upstream parameters."""
    model = layersens.load_model(model_dir, allow_import=allow_import)
    infos = layersens.list_layers(model)
    table = Table(title=f"{model.name} ({model.framework}) — {model_dir}")
    for column in ("layer", "shape", "outputs", "upstream params", "upstream leaves", "Jacobian / example"):
        table.add_column(column, justify="left" if column in ("layer", "shape") else "right")
    for info in infos:
        table.add_row(
            info.name, str(info.shape), f"{info.num_outputs:,}", f"{info.num_upstream_params:,}",
            str(len(info.upstream)), format_bytes(info.jacobian_bytes_per_example),
        )
    out.print(table)
    out.print(f"Mode: {model.eval_mode}.")


@main.command()
@click.option("--layer", required=True, help="Layer name, as listed by `layersens layers`.")
@model_option
@click.option("--inputs", type=click.Path(path_type=Path), help="A .npy file of inputs, (examples,) + input shape.")
@click.option("--num-examples", type=int, help="How many examples to use (default: 4 of the model's own inputs).")
@click.option("--mode", type=click.Choice(["auto", "fwd", "rev", "per-leaf", "structured"]), default="auto",
              show_default=True,
              help="fwd: one JVP per parameter; rev: one pullback per output; per-leaf: the cheaper of the two per "
                   "leaf; structured: channel colouring where leaves act per channel; auto: cheapest plan.")
@click.option("--max-memory", help="Working-memory budget, e.g. 2GB; chunk sizes follow from it.")
@click.option("--device", help="cpu or gpu (default: JAX's default device).")
@click.option("--out", "out_path", type=click.Path(path_type=Path),
              help="Output .npz file (default: <layer>.npz in the current directory).")
@allow_import_option
@clean_errors
def extract(layer, model_dir, inputs, num_examples, mode, max_memory, device, out_path, allow_import):
    """Compute the per-example Jacobian of LAYER with respect to its upstream parameters and save it."""
    with LazyProgress(f"d{layer}/dθ") as progress:
        jac = layersens.extract(
            model_dir, layer, inputs, num_examples=num_examples, mode=mode, max_memory=max_memory,
            device=device, allow_import=allow_import, progress=progress,
        )
    path = jac.save(out_path or Path(layer.replace("/", "_") + ".npz"))
    leaves = ", ".join(f"{n} {tuple(s)}" for n, s in zip(jac.param_names, jac.param_shapes))
    out.print(f"model       {model_dir} ({jac.model}, {jac.framework}; {jac.eval_mode})")
    out.print(f"layer       {jac.layer}: {jac.activation_shape} per example = {jac.num_outputs:,} outputs")
    out.print(f"inputs      {jac.num_examples} example(s) of shape {tuple(jac.inputs.shape[1:])}")
    out.print(f"upstream    {jac.num_params:,} parameters in {len(jac.param_names)} leaves: {leaves}")
    if jac.excluded_params:
        out.print(f"constant    {len(jac.excluded_params)} leaves not upstream: {', '.join(jac.excluded_params)}")
    out.print(f"jacobian    {tuple(jac.matrix.shape)} {jac.dtype} = {format_bytes(jac.nbytes)}")
    out.print(f"mode        {jac.mode} (asked: {mode}) on {jac.device}")
    out.print(f"time        {jac.seconds:.3f} s compute + {jac.compile_seconds:.3f} s compile")
    out.print(f"wrote       {path}  (read it back with layersens.load_jacobian)")


@main.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--spectrum/--no-spectrum", default=None, help="Compute rank and condition (default: when cheap).")
@clean_errors
def summarize(path, spectrum):
    """Summarize a Jacobian file written by `extract`: norms, sparsity, rank and conditioning."""
    jac = layersens.load_jacobian(path)
    summary = layersens.summarize(jac, spectrum=spectrum)
    out.print(f"{jac.model} / {jac.layer}: {summary.shape} ({jac.mode}, {jac.dtype}, {jac.device})")
    out.print(f"Frobenius norm {summary.frobenius:.6g}; exact zeros {summary.zero_fraction:.1%}")
    table = Table()
    for column in ("leaf", "shape", "Frobenius", "max |J|", "zeros"):
        table.add_column(column, justify="left" if column in ("leaf", "shape") else "right")
    for leaf in summary.leaves:
        table.add_row(leaf.name, str(leaf.shape), f"{leaf.frobenius:.4g}", f"{leaf.max_abs:.4g}",
                      f"{leaf.zero_fraction:.1%}")
    out.print(table)
    if summary.rank is not None:
        for n, (rank, cond) in enumerate(zip(summary.rank, summary.condition)):
            out.print(f"example {n}: rank {rank} of {min(summary.shape[1:])}, condition {cond:.4g}")
    else:
        out.print("rank and condition skipped (large); pass --spectrum to compute them.")


def _register_bench():
    from .bench import bench

    main.add_command(bench)


_register_bench()
