"""What every ``layersens`` command shares: consoles, the click group that answers every error in one line, the
option decorators, the progress displays and Ctrl-C.

A command is its shared options, one library call and its printout. Errors become one ``error: ...`` line on
stderr: usage errors (an unknown option, a missing one, a value that does not parse) exit with 2, as click and
argparse do; errors in the work itself (a ``LayersensError``) with 1; an interrupt with 130, nothing written.

Only click, rich and the JAX-free part of layersens (its errors, ``MODE_NAMES``, ``__version__``) are imported
here, so ``layersens --help`` starts in a fraction of a second; JAX comes with the first command that computes.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time
import warnings
from pathlib import Path

import click
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from layersens import MODE_ALIASES, MODE_NAMES, _interrupt
from layersens._errors import LayersensError, SpecError, format_bytes, format_clock

from . import STARTED_AS_PROGRAM

out = Console(highlight=False, soft_wrap=True)
if not out.is_terminal:
    # Written to a file or a pipe, tables are read later, not on an 80-column screen: room for names and numbers
    # (a terminal's own width is kept).
    out.width = max(out.width, 160)
err = Console(stderr=True, highlight=False, soft_wrap=True)
CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 110}
INTERRUPTED = "interrupted; nothing was written."


def say(text: str):
    out.print(text, markup=False)


def error_line(message: str):
    err.print("error: " + " ".join(str(message).splitlines()), markup=False)  # one line, whatever it quotes


# ------------------------------------------------------------------------------------------ errors and Ctrl-C


class Interrupted(click.ClickException):
    """Ctrl-C while click parses (a value whose conversion loads the library): reported like any interrupt,
    without click's own blank line."""

    exit_code = 130

    def __init__(self):
        super().__init__(INTERRUPTED)


def _exit_interrupted():
    _interrupt.quiet()  # a second Ctrl-C must not cut the message short
    error_line(INTERRUPTED)
    if STARTED_AS_PROGRAM:
        # Straight out: an orderly interpreter shutdown waits for, or crashes in (SIGSEGV), the threads XLA and
        # Orbax may still run (a compilation in flight). Nothing is left to clean up: partial files were removed
        # as the interrupt passed through the writers.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)
    sys.exit(130)


class CommandGroup(click.Group):
    """Click, with every error answered in one line: usage errors (a missing option, a value that does not
    parse) become ``error: ...`` with exit code 2, an interrupt exits with 130 and nothing written, and warnings
    print as one ``warning: ...`` line each. Ctrl-C is recorded from the start (:mod:`layersens._interrupt`)."""

    def main(self, *args, **kwargs):
        kwargs["standalone_mode"] = False
        previous_handler = _interrupt.install()  # keeps an interrupt recorded while the command line was imported
        previous = warnings.showwarning
        warnings.showwarning = lambda message, *rest, **kw: err.print(f"warning: {message}", markup=False)
        try:
            _interrupt.raise_if_interrupted()
            code = super().main(*args, **kwargs)
        except getattr(click.exceptions, "NoArgsIsHelpError", ()) as e:
            click.echo(e.ctx.get_help() if e.ctx else str(e))
            sys.exit(0)
        except click.UsageError as e:
            command = e.ctx.command_path if e.ctx is not None else "layersens"
            error_line(f"{e.format_message()} (see `{command} --help`)")
            sys.exit(2)
        except (click.Abort, KeyboardInterrupt, Interrupted):
            _exit_interrupted()
        except click.ClickException as e:
            error_line(e.format_message())
            sys.exit(e.exit_code)
        finally:
            warnings.showwarning = previous
            if STARTED_AS_PROGRAM:
                _interrupt.quiet()  # the work is done: a Ctrl-C while the interpreter shuts down changes nothing
            else:
                _interrupt.uninstall(previous_handler)
        code = code if isinstance(code, int) else 0
        if STARTED_AS_PROGRAM:
            # Straight out, as after an interrupt: in an orderly shutdown Python hands SIGINT back to its default
            # action, so a Ctrl-C after the result was written would end the process with -2 and nothing said
            # (and the shutdown may wait on XLA's threads). Every file is written and closed by now.
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        sys.exit(code)


def library():
    """The layersens package with JAX imported, Ctrl-C deferred meanwhile: an interrupt raised in the Python code
    jaxlib calls while it starts aborts the process (SIGABRT) instead of raising. A Ctrl-C pressed meanwhile is
    raised when the import is done."""
    with _interrupt.deferred():
        import jax  # noqa: F401

        import layersens

        layersens.extract  # noqa: B018  (the rest of the library, imported on first use)
    return layersens


def clean_errors(command):
    """Runs a command's body: a ``LayersensError`` becomes one line and exit code 1, Ctrl-C exit code 130 (also
    where a library caught the interrupt and raised an error of its own: Orbax restoring a checkpoint reports an
    ``ImportError: initialization failed`` when the interrupt lands in an import it makes)."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            library()
            return command(*args, **kwargs)
        except KeyboardInterrupt:
            _exit_interrupted()
        except Exception as e:
            if _interrupt.interrupted():  # a library turned the interrupt into an error of its own
                _exit_interrupted()
            if not isinstance(e, LayersensError):
                raise
            error_line(e)
            sys.exit(1)

    return wrapper


# ------------------------------------------------------------------------------------------ progress displays


class RunProgress:
    """The display of one run on stderr (only on a terminal, and not with ``--quiet``; a log gets no control
    characters): each step as a spinner line with its elapsed time (loading, tracing, compiling, writing), the
    computation as a bar in examples and chunks, counted as chunks land on the host, with its rate and an ETA,
    and the bytes written. One line, gone when the run ends; early errors print alone. It implements the
    library's progress protocol (``layersens._progress``): ``progress(done, total)``, ``stage``, ``wrote``,
    ``skipped``. Each call checks for a Ctrl-C that a library swallowed."""

    def __init__(self, quiet: bool = False):
        self.enabled = err.is_terminal and not quiet
        self.bar: Progress | None = None
        self.examples: int | None = None
        self.written = 0
        self.skipped_chunks = 0
        self.began = time.monotonic()

    def _show(self, **fields):
        if self.bar is None:
            self.bar = Progress(
                SpinnerColumn(),
                TextColumn("{task.description}"),
                BarColumn(),
                TextColumn("{task.fields[count]}"),
                TextColumn("{task.fields[rate]}"),
                TimeElapsedColumn(),
                console=err,
                transient=True,
            )
            self.bar.start()
            self.task = self.bar.add_task("", total=None, count="", rate="")
        self.bar.update(self.task, **fields)

    def stage(self, text: str, examples: int | None = None):
        _interrupt.raise_if_interrupted()
        self.examples, self.written, self.skipped_chunks = examples, 0, 0
        self.began = time.monotonic()
        if self.enabled:
            self._show(description=escape(text), completed=0, total=None, count="", rate="")
            if self.bar is not None:
                self.bar.reset(self.task, total=None, description=escape(text), count="", rate="")

    def skipped(self, count: int):
        self.skipped_chunks += count  # resumed chunks: done, but not part of the rate

    def __call__(self, done: int, total: int):
        _interrupt.raise_if_interrupted()
        if not self.enabled:
            return
        count = f"{done}/{total} chunks"
        if self.examples:
            count = f"{done * self.examples // max(total, 1)}/{self.examples} examples · {count}"
        computed, elapsed = done - self.skipped_chunks, time.monotonic() - self.began
        rate = ""
        if computed > 0 and elapsed > 0:
            per_second = computed / elapsed
            rate = f"{per_second:.3g} chunks/s · ETA {format_clock((total - done) / per_second)}"
        if self.written:
            rate += f" · {format_bytes(self.written)} written"
        self._show(completed=done, total=total, count=count, rate=rate)

    def wrote(self, nbytes: int):
        self.written += nbytes
        if self.enabled:
            self._show(rate=f"{format_bytes(self.written)} written")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.stop()


class StepProgress:
    """``progress(step, done, total)`` of a run in several steps (the summaries' protocol), on stderr, only on a
    terminal: the step ("step k of N" where the library numbers them), a bar (pulsing while ``total`` is
    ``None``), the step's rate and ETA once chunks are counted, and its elapsed time, on one line that is gone
    when the run ends. Each call checks for a Ctrl-C that a library swallowed."""

    def __init__(self, quiet: bool = False):
        self.enabled = err.is_terminal and not quiet
        self.bar: Progress | None = None
        self.step: str | None = None
        self.began = time.monotonic()

    def __call__(self, step: str, done: int, total: int | None):
        _interrupt.raise_if_interrupted()
        if not self.enabled:
            return
        count = f"{done}/{total}" if total else ""
        if self.bar is None:
            self.bar = Progress(
                SpinnerColumn(),
                TextColumn("{task.description}"),
                BarColumn(),
                TextColumn("{task.fields[count]}"),
                TimeElapsedColumn(),
                console=err,
                transient=True,
            )
            self.bar.start()
            self.task = self.bar.add_task(escape(step), total=total, count=count)
        elif step != self.step:
            self.bar.reset(self.task, total=total, description=escape(step), count=count)
            self.began = time.monotonic()
        self.step = step
        elapsed = time.monotonic() - self.began
        if total and 0 < done < total and elapsed > 0:
            count += f" · ETA {format_clock((total - done) * elapsed / done)}"
        self.bar.update(self.task, completed=done, total=total, count=count)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.stop()


def status_line(message: str):
    """A dim ``… message`` line on stderr: what a long run does next. Checks for a swallowed Ctrl-C."""
    _interrupt.raise_if_interrupted()
    err.print(f"[dim]… {escape(message)}[/dim]")


# ------------------------------------------------------------------------------------------ value types


class _Type(click.ParamType):
    """A value parsed at the edge; a value that does not parse is a usage error (exit code 2) in the library's
    words."""

    def parse(self, value, option: str):
        raise NotImplementedError

    def convert(self, value, param, ctx):
        if not isinstance(value, str):
            return value  # a default, or already converted
        option = param.opts[0] if param is not None else self.name
        try:
            return self.parse(value, option)
        except LayersensError as e:
            raise click.UsageError(" ".join(str(e).splitlines()), ctx) from None
        except KeyboardInterrupt:
            raise Interrupted() from None


class ByteSize(_Type):
    """A size such as ``512MB`` or ``2GiB``, as bytes (``layersens.parse_bytes``)."""

    name = "size"

    def parse(self, value, option):
        return library().parse_bytes(value, option)


class JsonObject(_Type):
    name = "json"

    def parse(self, value, option):
        try:
            parsed = json.loads(value)
        except (ValueError, RecursionError) as e:
            raise SpecError(
                f"{option} is {value!r}, which is not JSON ({e}); write e.g. '{{\"train\": false}}'."
            ) from None
        if not isinstance(parsed, dict):
            raise SpecError(f"{option} is {value!r}; it must be a JSON object such as '{{\"features\": 64}}'.")
        return parsed


class Shape(_Type):
    name = "shape"

    def parse(self, value, option):
        try:
            shape = tuple(int(d) for d in value.replace("x", ",").split(",") if d.strip())
        except ValueError:
            shape = ()
        if not shape or any(d <= 0 for d in shape):
            raise SpecError(
                f"{option} is {value!r}; write the shape of one example as positive integers, e.g. 28,28,1."
            )
        return shape


# ------------------------------------------------------------------------------------------ shared options


def options(*decorators):
    """Several click decorators as one, applied in the order given (the first is listed first in --help)."""

    def apply(command):
        for decorator in reversed(decorators):
            command = decorator(command)
        return command

    return apply


def model_dir_option(
    help: str = "Model directory: a layersens model (layersens.json + Orbax checkpoint), or a "
    "plain Orbax checkpoint with --module.",
    required: bool = True,
):
    return click.option("--model", "model_dir", required=required, type=click.Path(path_type=Path), help=help)


allow_import_option = click.option(
    "--allow-import",
    is_flag=True,
    help="Allow importing the model's own code named by the spec or --module (this runs that code; each import is "
    "announced). Not needed for Flax/JAX or the shipped examples.",
)


def _model_options(required: bool):
    return options(
        model_dir_option(required=required),
        allow_import_option,
        click.option(
            "--module",
            "module_path",
            metavar="PKG.MOD:CLASS",
            help="Flax module class that rebuilds a plain Orbax checkpoint (or replaces the spec's); found in "
            "the model directory, beside it or in the working directory.",
        ),
        click.option(
            "--factory",
            "factory_path",
            metavar="PKG.MOD:FUNCTION",
            help="A function of your code returning the module, instead of --module.",
        ),
        click.option(
            "--kwargs", "kwargs", type=JsonObject(), metavar="JSON", help="Constructor (or factory) arguments as JSON."
        ),
        click.option(
            "--call-kwargs",
            "call_kwargs",
            type=JsonObject(),
            metavar="JSON",
            help="Call arguments selecting evaluation mode, e.g. '{\"train\": false}'.",
        ),
        click.option(
            "--input-shape",
            "input_shape",
            type=Shape(),
            metavar="SHAPE",
            help="Shape of one input example for a plain checkpoint, e.g. 28,28,1.",
        ),
        click.option("--input-dtype", help="Input dtype for a plain checkpoint (default float32)."),
        click.option("--x64", is_flag=True, help="Compute in float64 end to end (enables JAX's 64-bit mode)."),
    )


model_options = _model_options(required=True)
"""The options that say which model to load, shared by every command that loads one (see :func:`load`)."""
optional_model_options = _model_options(required=False)
"""The same, ``--model`` optional (a command that reads a result file instead)."""

layer_option = click.option("--layer", required=True, help="Layer name, as listed by `layersens layers`.")

inputs_options = options(
    click.option("--inputs", type=click.Path(path_type=Path), help="A .npy file of inputs, (examples,) + input shape."),
    click.option(
        "--num-examples",
        type=int,
        help="How many examples to use (default: 4 of the model's own inputs; with --inputs, all of them).",
    ),
)


def _wrt(ctx, param, patterns):
    if not patterns:
        return None
    if patterns == ("input",):
        return "input"
    return list(patterns)


complex_option = click.option(
    "--complex",
    "complex_mode",
    type=click.Choice(["real", "complex", "holomorphic"]),
    help="For complex layers or parameters: the real part's Jacobian (complex leaves as real and imaginary "
    "columns), the complex Jacobian (Wirtinger parts w, conj(w) for complex leaves), or one complex "
    "Jacobian of a holomorphic layer (checked). See the README's 'Complex-valued models'.",
)


wrt_options = options(
    click.option(
        "--wrt",
        multiple=True,
        metavar="PATTERN",
        callback=_wrt,
        help="Differentiate only the upstream leaves matching this glob ('generator/*'; '*' crosses '/'); "
        "repeat for several, prefix '!' to exclude. 'input': with respect to each example's input "
        "(saliency).",
    ),
    click.option(
        "--wrt-layer",
        metavar="LAYER",
        help="Differentiate with respect to an earlier layer's activation instead (the model cut at both points).",
    ),
    complex_option,
)

_MODE_HELP = {
    "auto": "the cheapest plan",
    "forward": "one JVP per parameter",
    "reverse": "one pullback per output",
    "per-leaf": "the cheaper of the two per leaf",
    "structured": "channel colouring where leaves act per channel",
}
_SHORT = {name: short for short, name in MODE_ALIASES.items()}
mode_option = click.option(
    "--mode",
    type=click.Choice(MODE_NAMES + tuple(MODE_ALIASES)),
    default="auto",
    show_default=True,
    help="; ".join(
        f"{name}{f' ({_SHORT[name]})' if name in _SHORT else ''}: {_MODE_HELP.get(name, 'see the docs')}"
        for name in MODE_NAMES
    )
    + ".",
)

quiet_option = click.option("--quiet", "-q", is_flag=True, help="No progress display on the terminal.")

format_option = click.option(
    "--format",
    "layout",
    type=click.Choice(["dense", "compressed"]),
    default="dense",
    show_default=True,
    help="For a .zarr store: dense leaves, or channel-diagonal leaves kept as their diagonals (1/C of the size).",
)

device_options = options(
    click.option(
        "--device",
        help="cpu, gpu, or one device such as cpu:2 or gpu:1 [default: JAX's default device]",
    ),
    click.option(
        "--devices",
        type=click.IntRange(min=1),
        help="Spread the work over this many local devices of the platform (over examples; over chunks of one "
        "example) [default: 1]",
    ),
)

process_options = options(
    click.option(
        "--coordinator",
        metavar="HOST:PORT",
        help="Join a run of several processes (hosts) coordinated at this address (process 0's); each writes its "
        "share into the same --out store.",
    ),
    click.option("--num-processes", type=click.IntRange(min=1), help="Processes in the run (with --coordinator)."),
    click.option("--process-id", type=click.IntRange(min=0), help="This process's index, 0 to N-1 (--coordinator)."),
)


def join(coordinator, num_processes, process_id, device=None, devices=None) -> None:
    """Joins the multi-process run the options describe, if any, and on CPU makes ``--devices`` virtual devices
    (both before anything else uses JAX)."""
    if devices is not None and devices > 1 and (device is None or str(device).startswith("cpu")):
        import jax

        try:  # a CPU has one device unless asked for more before JAX starts
            jax.config.update("jax_num_cpu_devices", devices)
        except RuntimeError:  # JAX already started (a test calling the command twice): take what is there
            pass
    given = [v is not None for v in (coordinator, num_processes, process_id)]
    if any(given) and not all(given):
        raise click.UsageError("--coordinator, --num-processes and --process-id go together: give all three.")
    if all(given):
        library().join_processes(coordinator, num_processes, process_id)


max_memory_option = click.option(
    "--max-memory",
    type=ByteSize(),
    metavar="SIZE",
    help="Working-memory budget per chunk, e.g. 512MB or 2GiB; chunk sizes follow from it. "
    "[default: 32 MiB on CPU, 1 GiB on accelerators]",
)

overwrite_option = click.option(
    "--overwrite", is_flag=True, help="Replace --out if it exists (otherwise an existing one is refused)."
)

verbose_option = click.option("--verbose", is_flag=True, help="List every leaf held constant, not only the first few.")


def out_options(default: str):
    """``--out FILE`` (``.npz``, ``default`` when not given) and ``--overwrite``."""
    return options(
        click.option(
            "--out", "out_path", type=click.Path(path_type=Path), help=f"Output .npz file [default: {default}]"
        ),
        overwrite_option,
    )


def load(model_dir, allow_import, module_path, factory_path, kwargs, call_kwargs, input_shape, input_dtype, x64):
    """The model :data:`model_options` describe (announcing each import of the user's code on stderr)."""
    layersens = library()
    layersens.use_compile_cache()  # off with LAYERSENS_COMPILE_CACHE=0
    if x64:
        import jax

        jax.config.update("jax_enable_x64", True)
    return layersens.load_model(
        model_dir,
        allow_import,
        module=module_path,
        factory=factory_path,
        kwargs=kwargs,
        call_kwargs=call_kwargs,
        input_shape=input_shape,
        input_dtype=input_dtype,
        announce=lambda message: err.print(message, markup=False),
    )
