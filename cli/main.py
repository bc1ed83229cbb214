"""``layersens``: list a model's layers, extract a layer's Jacobian, summarize it, benchmark it.

Each command parses its options with the shared decorators of ``_common``, makes one library call and prints the
result; a ``LayersensError`` becomes one line on stderr and exit code 1 (usage errors 2), with nothing written.
"""

from __future__ import annotations

import os
from pathlib import Path

# XLA's C++ log lines are not for the command line's users (its errors reach them as exceptions, turned into one
# line): jax 0.10.1 logs a 10 KB line on every program loaded from the compilation cache (a machine-feature check
# that fails on the machine that compiled it). Read once, when JAX loads: set here, before it does. Set
# TF_CPP_MIN_LOG_LEVEL yourself to see them.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import click  # noqa: E402
from rich.markup import escape
from rich.table import Table

import layersens
from layersens import __version__
from layersens._errors import format_bytes

from . import bench
from ._common import (
    CONTEXT,
    CommandGroup,
    RunProgress,
    StepProgress,
    clean_errors,
    complex_option,
    device_options,
    err,
    format_option,
    inputs_options,
    join,
    layer_option,
    load,
    max_memory_option,
    mode_option,
    model_options,
    optional_model_options,
    out,
    out_options,
    overwrite_option,
    process_options,
    quiet_option,
    say,
    verbose_option,
    wrt_options,
)

__all__ = ["err", "main", "out"]


def _file_name(layer: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in layer)


@click.group(cls=CommandGroup, context_settings=CONTEXT)
@click.version_option(__version__, prog_name="layersens")
def main():
    """Jacobians of a trained network's layer with respect to the parameters that feed it.

    \b
    layersens layers  --model DIR                 every layer, its shape and upstream parameters
    layersens extract --model DIR --layer relu1   the Jacobian of relu1, saved to relu1.npz
    layersens summarize relu1.npz                 norms, sparsity, rank and condition
    layersens summarize --model DIR --layer relu2 sensitivity, spectrum, NTK without the Jacobian
    layersens bench   --model DIR --layer relu1   layersens against the scalar-gradient loop
    """


@main.command(
    short_help="List the layers: shapes, upstream parameters, Jacobian sizes.",
    epilog="""\b
Examples:
  layersens layers --model layersens/examples/lenet_digits
  layersens layers --model ckpt/ --module mymodels:CNN --input-shape 28,28,1 --allow-import""",
)
@model_options
@clean_errors
def layers(model_dir, **options):
    """List every addressable layer in execution order: its per-example shape, its upstream parameters and the
    size of its Jacobian per example. Module outputs, sown values and activations between modules (relu_0,
    softmax_0, ...) are listed."""
    x64 = options["x64"]
    model = load(model_dir, **options)
    infos = layersens.list_layers(model, dtype="float64" if x64 else None)
    table = Table(title=escape(f"{model.name} ({model.framework}) — {model_dir}"), title_justify="left")
    widest = max([len(info.name) for info in infos] + [5])
    table.add_column("layer", no_wrap=True, min_width=widest)  # names are copied from here: never cut or folded
    for column in ("shape", "outputs", "upstream params", "upstream leaves", "Jacobian / example"):
        table.add_column(column, justify="left" if column == "shape" else "right", overflow="fold")
    for info in infos:
        table.add_row(
            escape(info.name),
            str(info.shape),
            f"{info.num_outputs:,}",
            f"{info.num_upstream_params:,}",
            str(len(info.upstream)),
            format_bytes(info.jacobian_bytes_per_example),
        )
    out.print(table)
    say(f"Mode: {model.eval_mode}.")


def _leaves(names, shapes=None, verbose=False, limit=8) -> str:
    items = [f"{n} {tuple(s)}" for n, s in zip(names, shapes)] if shapes is not None else list(names)
    if verbose or len(items) <= limit:
        return ", ".join(items)
    return ", ".join(items[:limit]) + f", … and {len(items) - limit} more (--verbose lists them all)"


@main.command(
    short_help="Compute a layer's Jacobian and save it as .npz.",
    epilog="""\b
Examples:
  layersens extract --layer relu1 --model layersens/examples/lenet_digits
  layersens extract --layer relu2 --model DIR --inputs x.npy --mode structured --max-memory 256MB --out r2.npz
  layersens extract --layer conv1 --model DIR --x64 --verbose""",
)
@layer_option
@model_options
@inputs_options
@mode_option
@max_memory_option
@device_options
@out_options("<layer>.npz in the working directory; NAME.zarr streams to a store")
@format_option
@click.option(
    "--verify",
    is_flag=True,
    help="Spot-check the result: sampled rows against scalar gradients, sampled entries against central "
    "finite differences; report the largest errors.",
)
@verbose_option
@quiet_option
@process_options
@wrt_options
@clean_errors
def extract(
    layer,
    model_dir,
    inputs,
    num_examples,
    mode,
    max_memory,
    device,
    devices,
    out_path,
    overwrite,
    layout,
    verify,
    verbose,
    quiet,
    coordinator,
    num_processes,
    process_id,
    wrt,
    wrt_layer,
    complex_mode,
    **options,
):
    """Compute the per-example Jacobian of LAYER with respect to the parameters upstream of it (or those --wrt
    selects, the input, or an earlier layer), and save it (atomically) as .npz with its metadata, or stream it
    chunk by chunk into a .zarr store (any size, within --max-memory; rerun the same command to resume)."""
    path = out_path or Path(_file_name(layer) + ".npz")
    join(coordinator, num_processes, process_id, device, devices)
    with RunProgress(quiet) as progress:
        progress.stage(f"loading {model_dir}")
        model = load(model_dir, **options)
        jac = layersens.extract(
            model,
            layer,
            inputs,
            num_examples=num_examples,
            mode=mode,
            max_memory=max_memory,
            device=device,
            devices=devices,
            progress=progress,
            dtype="float64" if options["x64"] else None,
            wrt=wrt,
            wrt_layer=wrt_layer,
            complex_mode=complex_mode,
            out=path,
            overwrite=overwrite,
            verify=verify,
            compressed=layout == "compressed",
        )
    store = isinstance(jac, layersens.StoredJacobian)
    path = jac.path if store else layersens.results.npz_path(path)
    say(f"model       {model_dir} ({jac.model}, {jac.framework}; {jac.eval_mode})")
    say(f"layer       {jac.layer}: {jac.activation_shape} per example = {jac.num_outputs:,} outputs")
    say(f"inputs      {jac.num_examples} example(s) of shape {tuple(jac.inputs.shape[1:])}")
    what = {"parameters": "upstream   ", "input": "wrt input  "}.get(jac.wrt, "wrt layer  ")
    say(
        f"{what} {jac.num_params:,} {'parameters' if jac.wrt == 'parameters' else 'values'} in "
        f"{len(jac.param_names)} leaves (differentiated): {_leaves(jac.param_names, jac.param_shapes, verbose)}"
    )
    if jac.frozen_params:
        say(
            f"frozen      {len(jac.frozen_params)} upstream leaves held constant: "
            f"{_leaves(jac.frozen_params, None, verbose)}"
        )
    if jac.excluded_params:
        say(
            f"constant    {len(jac.excluded_params)} leaves not upstream: {_leaves(jac.excluded_params, None, verbose)}"
        )
    say(f"jacobian    {tuple(jac.matrix.shape)} {jac.dtype} = {format_bytes(jac.nbytes)}")
    say(f"mode        {jac.mode} (asked: {mode}) on {jac.device}")
    for note in jac.notes:
        say(f"note        {note}")
    if jac.verification is not None:
        say(f"verify      {jac.verification.describe()}")
    hits, misses = layersens.compute.compile_cache_counts()
    cached = f" ({hits} program(s) from the compilation cache, {misses} compiled)" if hits or misses else ""
    say(f"time        {jac.seconds:.3f} s compute + {jac.compile_seconds:.3f} s compile{cached}")
    if store:
        say(f"store       {jac.layout}; {format_bytes(jac.disk_bytes)} on disk (zstd; all-zero chunks not written)")
    say(f"wrote       {path}  (read it back with layersens.load_jacobian{'; lazily' if store else ''})")


@main.command(
    short_help="Sensitivity, spectrum and NTK of a layer (or every layer); or a saved result.",
    epilog="""\b
Examples:
  layersens summarize --layer relu2 --model layersens/examples/lenet_digits --num-examples 2 --max-memory 64MB
  layersens summarize --layer relu1 --model DIR --k 10 --out relu1-summary/
  layersens summarize --all-layers --model DIR --num-examples 2 --out profile/
  layersens summarize relu1.npz                    (a Jacobian, sensitivity, gradient, Hessian or products file)""",
)
@click.argument("path", required=False, type=click.Path(path_type=Path))
@click.option("--layer", help="Layer name, as listed by `layersens layers`: summarize it without its Jacobian.")
@click.option("--all-layers", is_flag=True, help="Profile every layer: ‖J‖_F, σ₁, stable rank, top leaves by depth.")
@optional_model_options
@inputs_options
@max_memory_option
@click.option(
    "--k",
    type=click.IntRange(min=0),
    metavar="K",
    help="Singular values per example (0: none) [default: 6 with --layer, 1 with --all-layers]",
)
@click.option("--no-ntk", is_flag=True, help="Skip the empirical NTK across the examples (--layer).")
@device_options
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path),
    help="Directory for the report: report.md, report.json and PNG figures (a layer's also "
    "sensitivity.npz); one that holds a report is refused unless --overwrite. [default: print only]",
)
@overwrite_option
@click.option(
    "--spectrum/--no-spectrum",
    default=None,
    help="For a saved Jacobian: compute rank and condition [default: when the smaller side is at most 2,048]",
)
@complex_option
@quiet_option
@clean_errors
def summarize(
    path,
    layer,
    all_layers,
    model_dir,
    inputs,
    num_examples,
    max_memory,
    k,
    no_ntk,
    device,
    devices,
    out_dir,
    overwrite,
    spectrum,
    complex_mode,
    quiet,
    **options,
):
    """With --layer and --model: a layer's exact sensitivity (‖J‖_F, each parameter leaf's and output channel's
    share, each unit's ‖∂h/∂θ‖), its top singular values and directions, effective ranks and the empirical NTK,
    without forming the Jacobian; with --all-layers, the same quantities for every layer against depth. With a
    FILE: what a saved result holds (Jacobian, sensitivity, readout gradient or Hessian, products)."""
    ctx = click.get_current_context()
    model_only = {
        "--layer": layer,
        "--all-layers": all_layers,
        "--inputs": inputs,
        "--num-examples": num_examples,
        "--k": k,
        "--no-ntk": no_ntk,
        "--device": device,
        "--devices": devices,
        "--out": out_dir,
        "--overwrite": overwrite,
    }
    if path is not None:
        given = [name for name, value in {**model_only, "--model": model_dir}.items() if value not in (None, False)]
        if given:
            raise click.UsageError(f"give a result FILE or --model DIR, not both ({', '.join(given)} with {path})", ctx)
        return _summarize_file(path, spectrum, max_memory, quiet)
    if model_dir is None:
        raise click.UsageError("give a result FILE to read, or --model DIR with --layer LAYER or --all-layers", ctx)
    if bool(layer) == bool(all_layers):
        raise click.UsageError("give --layer LAYER or --all-layers (one of them) with --model", ctx)
    if spectrum is not None:
        raise click.UsageError("--spectrum/--no-spectrum is for a saved Jacobian FILE; use --k with --model", ctx)
    if all_layers and (no_ntk or device or devices):
        raise click.UsageError("--no-ntk, --device and --devices go with --layer; a profile computes no NTK", ctx)
    dtype = "float64" if options["x64"] else None
    if out_dir is not None:  # before anything is loaded
        from layersens.report import check_report_dir

        check_report_dir(out_dir, "summary" if layer else "profile", overwrite)
    join(None, None, None, device, devices)
    with StepProgress(quiet) as progress:
        progress("loading the model", 0, None)
        model = load(model_dir, **options)
        if layer:
            result, files = layersens.summaries.summarize_model(
                model,
                layer,
                inputs,
                num_examples=num_examples,
                k=6 if k is None else k,
                max_memory=max_memory,
                device=device,
                devices=devices,
                ntk=not no_ntk,
                progress=progress,
                dtype=dtype,
                complex_mode=complex_mode,
                out=out_dir,
                overwrite=overwrite,
            )
        else:
            result, files = layersens.summaries.profile_model(
                model,
                inputs,
                num_examples=num_examples,
                k=1 if k is None else k,
                max_memory=max_memory,
                progress=progress,
                dtype=dtype,
                complex_mode=complex_mode,
                out=out_dir,
                overwrite=overwrite,
            )
    from ._show import show_profile, show_summary  # numpy: not imported by --help

    say(f"model       {model_dir} ({model.name}, {model.framework}; {model.eval_mode})")
    (show_summary if layer else show_profile)(result)
    for file in files:
        say(f"wrote       {file}")


def _summarize_file(path, spectrum, max_memory=None, quiet=False):
    """What a result file holds: a Jacobian's norms, sparsity, rank and condition, or another result's numbers."""
    from ._show import show_other, show_products, show_readout, show_sensitivity

    with StepProgress(quiet) as progress:
        result = layersens.summaries.read_result(
            path, max_memory, progress=lambda done, total: progress(f"reading {path}", done, total)
        )
    if isinstance(result, layersens.LayerJacobian):
        return _summarize_jacobian(result, spectrum)
    if spectrum is not None:
        raise click.UsageError(
            f"--spectrum/--no-spectrum is for a saved Jacobian; {path} holds another result",
            click.get_current_context(),
        )
    if isinstance(result, layersens.Sensitivity):
        show_sensitivity(result)
    elif isinstance(result, layersens.ReadoutDerivative):
        show_readout(result)
    elif isinstance(result, layersens.JacobianProducts):
        show_products(result)
    else:
        show_other(result)


def _summarize_jacobian(jac, spectrum):
    summary = layersens.summarize(jac, spectrum=spectrum)
    say(f"{jac.model} / {jac.layer}: {summary.shape} ({jac.mode}, {jac.dtype}, {jac.device})")
    say(f"Frobenius norm {summary.frobenius:.6g}; exact zeros {summary.zero_fraction:.1%}")
    table = Table()
    for column in ("leaf", "shape", "Frobenius", "max |J|", "zeros"):
        table.add_column(column, justify="left" if column in ("leaf", "shape") else "right", overflow="fold")
    for leaf in summary.leaves:
        table.add_row(
            escape(leaf.name),
            str(leaf.shape),
            f"{leaf.frobenius:.4g}",
            f"{leaf.max_abs:.4g}",
            f"{leaf.zero_fraction:.1%}",
        )
    out.print(table)
    if summary.rank is not None:
        for n, (rank, cond) in enumerate(zip(summary.rank, summary.condition)):
            say(f"example {n}: rank {rank} of {min(summary.shape[1:])}, condition {cond:.4g}")
    elif not summary.finite:
        say("rank and condition skipped: the matrix holds NaN or Inf.")
    else:
        say("rank and condition skipped (large); pass --spectrum to compute them.")


def _readout_command(hessian: bool):
    name = "hessian" if hessian else "gradient"
    what = "Hessian (and gradient)" if hessian else "gradient"

    @main.command(
        name=name,
        short_help=f"The {what} of a scalar readout of a layer.",
        help=(
            f"The {what} of a scalar readout of LAYER (its sum, or one unit) with respect to the upstream "
            "parameters (or those --wrt selects, the input, or an earlier layer), per example; saved as .npz."
        ),
        epilog=f"""\b
Examples:
  layersens {name} --layer output --model layersens/examples/gan_digits --readout unit:0 --wrt 'generator/*'
  layersens {name} --layer relu1 --model layersens/examples/lenet_digits --readout sum --wrt 'bn1/*'""",
    )
    @layer_option
    @model_options
    @inputs_options
    @click.option(
        "--readout",
        default="sum",
        show_default=True,
        help="The scalar read from the layer: sum, or one unit (unit:3,5,0 or a flat unit:17).",
    )
    @out_options(f"<layer>_{name}.npz")
    @verbose_option
    @wrt_options
    @clean_errors
    def command(
        layer,
        model_dir,
        inputs,
        num_examples,
        readout,
        out_path,
        overwrite,
        verbose,
        wrt,
        wrt_layer,
        complex_mode,
        vectors=None,
        **options,
    ):
        import numpy as np

        path = out_path or Path(_file_name(layer) + f"_{name}.npz")
        model = load(model_dir, **options)
        result = layersens.extract_readout(
            model,
            layer,
            inputs,
            readout=readout,
            hessian=hessian and vectors is None,
            vectors=vectors,
            num_examples=num_examples,
            dtype="float64" if options["x64"] else None,
            wrt=wrt,
            wrt_layer=wrt_layer,
            complex_mode=complex_mode,
            out=path,
            overwrite=overwrite,
        )
        path = layersens.results.npz_path(path)
        say(f"model       {model_dir} ({model.name}, {model.framework}; {model.eval_mode})")
        say(f"readout     {result.readout} of {layer}: " + ", ".join(f"{v:.6g}" for v in result.values))
        say(
            f"wrt         {len(result.param_names)} leaves (differentiated): "
            f"{_leaves(result.param_names, result.param_shapes, verbose)}"
        )
        if result.frozen_params:
            say(
                f"frozen      {len(result.frozen_params)} upstream leaves held constant: "
                f"{_leaves(result.frozen_params, None, verbose)}"
            )
        for leaf in result.param_names:
            say(f"|grad|      {leaf}: " + ", ".join(f"{np.linalg.norm(g):.4g}" for g in result[leaf]))
        if result.hessian_vectors is not None:
            say(
                "hvp         |H v| per example: "
                + ", ".join(f"{np.linalg.norm(h):.4g}" for h in result.hessian_vectors)
            )
        if result.hessian is not None:
            say(
                f"hessian     {tuple(result.hessian.shape)}; largest |eigenvalue| per example: "
                + ", ".join(f"{np.abs(np.linalg.eigvalsh(h)).max():.4g}" for h in result.hessian)
            )
        say(f"wrote       {path}")

    if hessian:
        command = click.option(
            "--vectors",
            type=click.Path(path_type=Path),
            help="A .npy of vectors over the differentiated leaves, (P,) or (examples, P): Hessian-vector products "
            "instead of the full Hessian (any number of parameters).",
        )(command)
    return command


@main.command(
    short_help="Products with a layer's Jacobian, from one linearization.",
    epilog="""\b
Examples:
  layersens products --layer relu1 --model layersens/examples/lenet_digits --tangents v.npy
  layersens products --layer fc1 --model DIR --cotangents u.npy --wrt 'fc1/*' --out p.npz""",
)
@layer_option
@model_options
@inputs_options
@click.option(
    "--tangents",
    type=click.Path(path_type=Path),
    help="A .npy of vectors over the differentiated leaves: (P,), (P, k) or (examples, P, k); gives J V.",
)
@click.option(
    "--cotangents",
    type=click.Path(path_type=Path),
    help="A .npy of vectors over the layer: (examples, M) or (examples, M, k); gives Jᵀ U.",
)
@out_options("<layer>_products.npz")
@wrt_options
@clean_errors
def products(
    layer,
    model_dir,
    inputs,
    num_examples,
    tangents,
    cotangents,
    out_path,
    overwrite,
    wrt,
    wrt_layer,
    complex_mode,
    **options,
):
    """Products of each example's Jacobian of LAYER with blocks of vectors (J V and Jᵀ U), from one linearization
    per example: the matrix is never formed."""
    import numpy as np

    path = out_path or Path(_file_name(layer) + "_products.npz")
    model = load(model_dir, **options)
    results = layersens.extract_products(
        model,
        layer,
        inputs,
        tangents=tangents,
        cotangents=cotangents,
        num_examples=num_examples,
        dtype="float64" if options["x64"] else None,
        wrt=wrt,
        wrt_layer=wrt_layer,
        complex_mode=complex_mode,
        out=path,
        overwrite=overwrite,
    )
    for name, value in results.arrays().items():
        say(
            f"{name:<11} {tuple(value.shape)}: "
            + ", ".join(f"{np.linalg.norm(v):.4g}" for v in value)
            + " (norm per example)"
        )
    say(f"wrote       {layersens.results.npz_path(path)}")


gradient = _readout_command(hessian=False)
hessian = _readout_command(hessian=True)


main.add_command(bench.bench)
