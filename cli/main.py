"""``layersens``: list a model's layers, extract a layer's Jacobian, summarize it, benchmark it.

Each command parses its options, makes one library call and prints the result; a ``LayersensError`` becomes one
line on stderr and exit code 1, with nothing written.
"""

from __future__ import annotations

import functools
import json
import sys
import warnings
from pathlib import Path

import click
import numpy as np
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

import layersens
from layersens import LayersensError, SpecError, format_bytes

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)
CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 110}


def say(text: str):
    out.print(text, markup=False)


class CommandGroup(click.Group):
    """Click, with every error answered in one line: usage errors (a missing option, a value of the wrong kind)
    become ``error: ...`` with exit code 1 like the library's, an interrupt exits cleanly with nothing written,
    and warnings print as one ``warning: ...`` line each."""

    def main(self, *args, **kwargs):
        kwargs["standalone_mode"] = False
        previous = warnings.showwarning
        warnings.showwarning = lambda message, *rest, **kw: err.print(f"warning: {message}", markup=False)
        try:
            code = super().main(*args, **kwargs)
        except getattr(click.exceptions, "NoArgsIsHelpError", ()) as e:
            click.echo(e.ctx.get_help() if e.ctx else str(e))
            sys.exit(0)
        except click.UsageError as e:
            command = e.ctx.command_path if e.ctx is not None else "layersens"
            err.print(f"error: {e.format_message()} (see `{command} --help`)", markup=False)
            sys.exit(1)
        except click.Abort:
            err.print("error: interrupted; nothing was written.", markup=False)
            sys.exit(130)
        except click.ClickException as e:
            err.print(f"error: {e.format_message()}", markup=False)
            sys.exit(1)
        finally:
            warnings.showwarning = previous
        sys.exit(code if isinstance(code, int) else 0)


def clean_errors(command):
    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except LayersensError as e:
            err.print("error: " + " ".join(str(e).splitlines()), markup=False)  # one line, whatever it quotes
            sys.exit(1)
        except KeyboardInterrupt:
            err.print("error: interrupted; nothing was written.", markup=False)
            sys.exit(130)

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
            self.task = self.bar.add_task(escape(self.description), total=total)
        self.bar.update(self.task, completed=done, total=total)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.stop()


def _json_option(text, option: str):
    if text is None:
        return None
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as e:
        raise SpecError(f"{option} is {text!r}, which is not JSON ({e}); write e.g. '{{\"train\": false}}'.") from None
    if not isinstance(value, dict):
        raise SpecError(f"{option} is {text!r}; it must be a JSON object such as '{{\"features\": 64}}'.")
    return value


def _shape_option(text):
    if text is None:
        return None
    try:
        shape = tuple(int(d) for d in text.replace("x", ",").split(",") if d.strip())
    except ValueError:
        shape = ()
    if not shape or any(d <= 0 for d in shape):
        raise SpecError(f"--input-shape is {text!r}; write the shape of one example as positive integers, "
                        "e.g. 28,28,1.")
    return shape


def _file_name(layer: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in layer)


def _wrt(patterns):
    if not patterns:
        return None
    if patterns == ("input",):
        return "input"
    return list(patterns)


def wrt_options(command):
    command = click.option(
        "--wrt-layer", metavar="LAYER",
        help="Differentiate with respect to an earlier layer's activation instead (the model cut at both points).",
    )(command)
    return click.option(
        "--wrt", multiple=True, metavar="PATTERN",
        help="Differentiate only the upstream leaves matching this glob ('generator/*'; '*' crosses '/'); repeat "
             "for several, prefix '!' to exclude. 'input': with respect to each example's input (saliency).",
    )(command)


def model_options(command):
    """The options that say which model to load, shared by every command that loads one."""
    options = [
        click.option("--model", "model_dir", required=True, type=click.Path(path_type=Path),
                     help="Model directory: a layersens model (layersens.json + Orbax checkpoint), or a plain Orbax "
                          "checkpoint with --module."),
        click.option("--allow-import", is_flag=True,
                     help="Allow importing the model's own code named by the spec or --module (this runs that "
                          "code; each import is announced). Not needed for Flax/JAX or the shipped examples."),
        click.option("--module", "module_path", metavar="PKG.MOD:CLASS",
                     help="Flax module class that rebuilds a plain Orbax checkpoint (or replaces the spec's); "
                          "found in the model directory, beside it or in the working directory."),
        click.option("--factory", "factory_path", metavar="PKG.MOD:FUNCTION",
                     help="A function of your code returning the module, instead of --module."),
        click.option("--kwargs", "kwargs_json", metavar="JSON", help="Constructor (or factory) arguments as JSON."),
        click.option("--call-kwargs", "call_kwargs_json", metavar="JSON",
                     help="Call arguments selecting evaluation mode, e.g. '{\"train\": false}'."),
        click.option("--input-shape", "input_shape", metavar="SHAPE",
                     help="Shape of one input example for a plain checkpoint, e.g. 28,28,1."),
        click.option("--input-dtype", help="Input dtype for a plain checkpoint (default float32)."),
        click.option("--x64", is_flag=True, help="Compute in float64 end to end (enables JAX's 64-bit mode)."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def load(model_dir, allow_import, module_path, factory_path, kwargs_json, call_kwargs_json, input_shape,
         input_dtype, x64):
    if x64:
        import jax

        jax.config.update("jax_enable_x64", True)
    return layersens.load_model(
        model_dir, allow_import, module=module_path, factory=factory_path,
        kwargs=_json_option(kwargs_json, "--kwargs"), call_kwargs=_json_option(call_kwargs_json, "--call-kwargs"),
        input_shape=_shape_option(input_shape), input_dtype=input_dtype,
        announce=lambda message: err.print(message, markup=False),
    )


@click.group(cls=CommandGroup, context_settings=CONTEXT)
@click.version_option(layersens.__version__, prog_name="layersens")
def main():
    """Jacobians of a trained network's layer with respect to the parameters that feed it.

    \b
    layersens layers  --model DIR                 every layer, its shape and upstream parameters
    layersens extract --model DIR --layer relu1   the Jacobian of relu1, saved to relu1.npz
    layersens summarize relu1.npz                 norms, sparsity, rank and condition
    layersens bench   --model DIR --layer relu1   layersens against the scalar-gradient loop
    """


@main.command(short_help="List the layers: shapes, upstream parameters, Jacobian sizes.", epilog="""\b
Examples:
  layersens layers --model layersens/examples/lenet_digits
  layersens layers --model ckpt/ --module mymodels:CNN --input-shape 28,28,1 --allow-import""")
@model_options
@clean_errors
def layers(model_dir, **options):
    """List every addressable layer in execution order: its per-example shape, its upstream parameters and the
    size of its Jacobian per example. Module outputs, sown values and activations between modules (relu_0,
    softmax_0, ...) are listed."""
    x64 = options["x64"]
    model = load(model_dir, **options)
    infos = layersens.list_layers(model, dtype="float64" if x64 else None)
    table = Table(title=f"{model.name} ({model.framework}) — {model_dir}", title_justify="left")
    widest = max([len(info.name) for info in infos] + [5])
    table.add_column("layer", no_wrap=True, min_width=widest)  # names are copied from here: never cut or folded
    for column in ("shape", "outputs", "upstream params", "upstream leaves", "Jacobian / example"):
        table.add_column(column, justify="left" if column == "shape" else "right", overflow="fold")
    for info in infos:
        table.add_row(
            escape(info.name), str(info.shape), f"{info.num_outputs:,}", f"{info.num_upstream_params:,}",
            str(len(info.upstream)), format_bytes(info.jacobian_bytes_per_example),
        )
    out.print(table)
    say(f"Mode: {model.eval_mode}.")


def _leaves(names, shapes=None, verbose=False, limit=8) -> str:
    items = [f"{n} {tuple(s)}" for n, s in zip(names, shapes)] if shapes is not None else list(names)
    if verbose or len(items) <= limit:
        return ", ".join(items)
    return ", ".join(items[:limit]) + f", … and {len(items) - limit} more (--verbose lists them all)"


@main.command(short_help="Compute a layer's Jacobian and save it as .npz.", epilog="""\b
Examples:
  layersens extract --layer relu1 --model layersens/examples/lenet_digits
  layersens extract --layer relu2 --model DIR --inputs x.npy --mode structured --max-memory 256MB --out r2.npz
  layersens extract --layer conv1 --model DIR --x64 --verbose""")
@click.option("--layer", required=True, help="Layer name, as listed by `layersens layers`.")
@model_options
@click.option("--inputs", type=click.Path(path_type=Path), help="A .npy file of inputs, (examples,) + input shape.")
@click.option("--num-examples", type=int,
              help="How many examples to use (default: 4 of the model's own inputs; with --inputs, all of them).")
@click.option("--mode", type=click.Choice(["auto", "fwd", "rev", "per-leaf", "structured"]), default="auto",
              show_default=True,
              help="fwd: one JVP per parameter; rev: one pullback per output; per-leaf: the cheaper of the two per "
                   "leaf; structured: channel colouring where leaves act per channel; auto: the cheapest plan.")
@click.option("--max-memory", metavar="SIZE",
              help="Working-memory budget per chunk, e.g. 512MB or 2GiB; chunk sizes follow from it. "
                   "[default: 32 MiB on CPU, 1 GiB on accelerators]")
@click.option("--device", help="cpu or gpu [default: JAX's default device]")
@click.option("--out", "out_path", type=click.Path(path_type=Path),
              help="Output .npz file [default: <layer>.npz in the working directory]")
@click.option("--overwrite", is_flag=True, help="Replace --out if it exists (otherwise an existing file is refused).")
@click.option("--verify", is_flag=True,
              help="Spot-check the result: sampled rows against scalar gradients, sampled entries against central "
                   "finite differences; report the largest errors.")
@click.option("--verbose", is_flag=True, help="List every leaf held constant, not only the first few.")
@wrt_options
@clean_errors
def extract(layer, model_dir, inputs, num_examples, mode, max_memory, device, out_path, overwrite, verify, verbose,
            wrt, wrt_layer, **options):
    """Compute the per-example Jacobian of LAYER with respect to the parameters upstream of it (or those --wrt
    selects, the input, or an earlier layer), and save it (atomically) as .npz with its metadata."""
    budget = None if max_memory is None else layersens.parse_bytes(max_memory, "--max-memory")
    path = out_path or Path(_file_name(layer) + ".npz")
    model = load(model_dir, **options)
    with LazyProgress(f"d{layer}/dθ") as progress:
        jac = layersens.extract(
            model, layer, inputs, num_examples=num_examples, mode=mode, max_memory=budget, device=device,
            progress=progress, dtype="float64" if options["x64"] else None, wrt=_wrt(wrt), wrt_layer=wrt_layer,
            out=path, overwrite=overwrite, verify=verify,
        )
    path = layersens.results.npz_path(path)
    say(f"model       {model_dir} ({jac.model}, {jac.framework}; {jac.eval_mode})")
    say(f"layer       {jac.layer}: {jac.activation_shape} per example = {jac.num_outputs:,} outputs")
    say(f"inputs      {jac.num_examples} example(s) of shape {tuple(jac.inputs.shape[1:])}")
    what = {"parameters": "upstream   ", "input": "wrt input  "}.get(jac.wrt, "wrt layer  ")
    say(f"{what} {jac.num_params:,} {'parameters' if jac.wrt == 'parameters' else 'values'} in "
        f"{len(jac.param_names)} leaves (differentiated): {_leaves(jac.param_names, jac.param_shapes, verbose)}")
    if jac.frozen_params:
        say(f"frozen      {len(jac.frozen_params)} upstream leaves held constant: "
            f"{_leaves(jac.frozen_params, None, verbose)}")
    if jac.excluded_params:
        say(f"constant    {len(jac.excluded_params)} leaves not upstream: {_leaves(jac.excluded_params, None, verbose)}")
    say(f"jacobian    {tuple(jac.matrix.shape)} {jac.dtype} = {format_bytes(jac.nbytes)}")
    say(f"mode        {jac.mode} (asked: {mode}) on {jac.device}")
    for note in jac.notes:
        say(f"note        {note}")
    if jac.verification is not None:
        say(f"verify      {jac.verification.describe()}")
    say(f"time        {jac.seconds:.3f} s compute + {jac.compile_seconds:.3f} s compile")
    say(f"wrote       {path}  (read it back with layersens.load_jacobian)")


@main.command(short_help="Norms, sparsity, rank and condition of a saved Jacobian.", epilog="""\b
Examples:
  layersens summarize relu1.npz
  layersens summarize relu2.npz --spectrum""")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--spectrum/--no-spectrum", default=None,
              help="Compute rank and condition [default: when the smaller side is at most 2,048]")
@clean_errors
def summarize(path, spectrum):
    """Summarize a Jacobian file written by `extract`: norms, sparsity, rank and conditioning."""
    jac = layersens.load_jacobian(path)
    summary = layersens.summarize(jac, spectrum=spectrum)
    say(f"{jac.model} / {jac.layer}: {summary.shape} ({jac.mode}, {jac.dtype}, {jac.device})")
    say(f"Frobenius norm {summary.frobenius:.6g}; exact zeros {summary.zero_fraction:.1%}")
    table = Table()
    for column in ("leaf", "shape", "Frobenius", "max |J|", "zeros"):
        table.add_column(column, justify="left" if column in ("leaf", "shape") else "right", overflow="fold")
    for leaf in summary.leaves:
        table.add_row(escape(leaf.name), str(leaf.shape), f"{leaf.frobenius:.4g}", f"{leaf.max_abs:.4g}",
                      f"{leaf.zero_fraction:.1%}")
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

    @main.command(name=name, short_help=f"The {what} of a scalar readout of a layer.", help=(
        f"The {what} of a scalar readout of LAYER (its sum, or one unit) with respect to the upstream "
        "parameters (or those --wrt selects, the input, or an earlier layer), per example; saved as .npz."),
        epilog=f"""\b
Examples:
  layersens {name} --layer output --model layersens/examples/gan_digits --readout unit:0 --wrt 'generator/*'
  layersens {name} --layer relu1 --model layersens/examples/lenet_digits --readout sum --wrt 'bn1/*'""")
    @click.option("--layer", required=True, help="Layer name, as listed by `layersens layers`.")
    @model_options
    @click.option("--inputs", type=click.Path(path_type=Path), help="A .npy file of inputs, (examples,) + input shape.")
    @click.option("--num-examples", type=int, help="How many examples to use (default: 4 of the model's own).")
    @click.option("--readout", default="sum", show_default=True,
                  help="The scalar read from the layer: sum, or one unit (unit:3,5,0 or a flat unit:17).")
    @click.option("--out", "out_path", type=click.Path(path_type=Path),
                  help=f"Output .npz file [default: <layer>_{name}.npz]")
    @click.option("--overwrite", is_flag=True, help="Replace --out if it exists.")
    @click.option("--verbose", is_flag=True, help="List every leaf held constant, not only the first few.")
    @wrt_options
    @clean_errors
    def command(layer, model_dir, inputs, num_examples, readout, out_path, overwrite, verbose, wrt, wrt_layer,
                vectors=None, **options):
        path = out_path or Path(_file_name(layer) + f"_{name}.npz")
        model = load(model_dir, **options)
        result = layersens.extract_readout(
            model, layer, inputs, readout=readout, hessian=hessian and vectors is None, vectors=vectors,
            num_examples=num_examples,
            dtype="float64" if options["x64"] else None, wrt=_wrt(wrt), wrt_layer=wrt_layer, out=path,
            overwrite=overwrite)
        path = layersens.results.npz_path(path)
        say(f"model       {model_dir} ({model.name}, {model.framework}; {model.eval_mode})")
        say(f"readout     {result.readout} of {layer}: " + ", ".join(f"{v:.6g}" for v in result.values))
        say(f"wrt         {len(result.param_names)} leaves (differentiated): "
            f"{_leaves(result.param_names, result.param_shapes, verbose)}")
        if result.frozen_params:
            say(f"frozen      {len(result.frozen_params)} upstream leaves held constant: "
                f"{_leaves(result.frozen_params, None, verbose)}")
        for leaf in result.param_names:
            say(f"|grad|      {leaf}: " + ", ".join(f"{np.linalg.norm(g):.4g}" for g in result[leaf]))
        if result.hessian_vectors is not None:
            say("hvp         |H v| per example: " + ", ".join(f"{np.linalg.norm(h):.4g}" for h in result.hessian_vectors))
        if result.hessian is not None:
            say(f"hessian     {tuple(result.hessian.shape)}; largest |eigenvalue| per example: " + ", ".join(
                f"{np.abs(np.linalg.eigvalsh(h)).max():.4g}" for h in result.hessian))
        say(f"wrote       {path}")

    if hessian:
        command = click.option(
            "--vectors", type=click.Path(path_type=Path),
            help="A .npy of vectors over the differentiated leaves, (P,) or (examples, P): Hessian-vector products "
                 "instead of the full Hessian (any number of parameters).")(command)
    return command


@main.command(short_help="Products with a layer's Jacobian, from one linearization.", epilog="""\b
Examples:
  layersens products --layer relu1 --model layersens/examples/lenet_digits --tangents v.npy
  layersens products --layer fc1 --model DIR --cotangents u.npy --wrt 'fc1/*' --out p.npz""")
@click.option("--layer", required=True, help="Layer name, as listed by `layersens layers`.")
@model_options
@click.option("--inputs", type=click.Path(path_type=Path), help="A .npy file of inputs, (examples,) + input shape.")
@click.option("--num-examples", type=int, help="How many examples to use (default: 4 of the model's own).")
@click.option("--tangents", type=click.Path(path_type=Path),
              help="A .npy of vectors over the differentiated leaves: (P,), (P, k) or (examples, P, k); gives J V.")
@click.option("--cotangents", type=click.Path(path_type=Path),
              help="A .npy of vectors over the layer: (examples, M) or (examples, M, k); gives Jᵀ U.")
@click.option("--out", "out_path", type=click.Path(path_type=Path),
              help="Output .npz file [default: <layer>_products.npz]")
@click.option("--overwrite", is_flag=True, help="Replace --out if it exists.")
@wrt_options
@clean_errors
def products(layer, model_dir, inputs, num_examples, tangents, cotangents, out_path, overwrite, wrt, wrt_layer,
             **options):
    """Products of each example's Jacobian of LAYER with blocks of vectors (J V and Jᵀ U), from one linearization
    per example: the matrix is never formed."""
    path = out_path or Path(_file_name(layer) + "_products.npz")
    model = load(model_dir, **options)
    results = layersens.extract_products(
        model, layer, inputs, tangents=tangents, cotangents=cotangents, num_examples=num_examples,
        dtype="float64" if options["x64"] else None, wrt=_wrt(wrt), wrt_layer=wrt_layer, out=path,
        overwrite=overwrite)
    for name, value in results.items():
        say(f"{name:<11} {tuple(value.shape)}: " + ", ".join(f"{np.linalg.norm(v):.4g}" for v in value)
            + " (norm per example)")
    say(f"wrote       {layersens.results.npz_path(path)}")


gradient = _readout_command(hessian=False)
hessian = _readout_command(hessian=True)


def _register_bench():
    from .bench import bench

    main.add_command(bench)


_register_bench()
