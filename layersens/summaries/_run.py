"""The one-call paths the command line uses: a model (or its directory), inputs, a layer or all of them → the
summary or the profile, and with ``out`` its report, the directory checked before anything is computed."""

from __future__ import annotations

from pathlib import Path

from .._extract import select_inputs
from ..models import Model, load_model
from ..results import LayerSummary, SensitivityProfile
from ..tracing import split
from ._layer import Progress, _quiet, summarize_layer
from ._profile import profile


def _prepare(model, inputs, num_examples, allow_import, out, overwrite, kind: str, progress: Progress, dtype):
    if out is not None:
        from ..report import check_report_dir  # no matplotlib yet: only whether it can be imported

        out = check_report_dir(out, kind, overwrite)
    if not isinstance(model, Model):
        progress("loading the model", 0, None)
        model = load_model(model, allow_import=allow_import)
    return model, select_inputs(model, inputs, num_examples, dtype), out


def summarize_model(
    model,
    layer: str,
    inputs=None,
    *,
    num_examples: int | None = None,
    k: int = 6,
    max_memory=None,
    device=None,
    devices: int | None = None,
    ntk: bool = True,
    progress: Progress | None = None,
    dtype=None,
    allow_import: bool = False,
    out=None,
    overwrite: bool = False,
    complex_mode=None,
) -> tuple[LayerSummary, tuple[Path, ...]]:
    """Loads ``model`` (a directory) if needed, takes ``inputs`` (an array, a ``.npy`` path, or the first
    ``num_examples`` of the model's own, default 4), splits it at ``layer`` (in ``dtype``, e.g. ``"float64"``;
    ``complex_mode`` for complex values, as :func:`layersens.split`),
    runs :func:`summarize_layer` and, with ``out`` (a directory, refused if it holds a report unless
    ``overwrite``, checked first), writes the report there. Returns the summary and the files written."""
    progress = progress or _quiet
    model, x, out = _prepare(model, inputs, num_examples, allow_import, out, overwrite, "summary", progress, dtype)
    progress(f"{layer}: tracing", 0, None)
    summary = summarize_layer(
        split(model, layer, dtype=dtype, complex_mode=complex_mode),
        x,
        k=k,
        max_memory=max_memory,
        device=device,
        devices=devices,
        ntk=ntk,
        progress=progress,
    )
    if out is None:
        return summary, ()
    from ..report import write_summary_report

    progress("writing the report", 0, None)
    return summary, write_summary_report(summary, out)


def profile_model(
    model,
    inputs=None,
    *,
    layers=None,
    num_examples: int | None = None,
    k: int = 1,
    max_memory=None,
    progress: Progress | None = None,
    dtype=None,
    allow_import: bool = False,
    out=None,
    overwrite: bool = False,
    complex_mode=None,
) -> tuple[SensitivityProfile, tuple[Path, ...]]:
    """:func:`profile` from a model or its directory, as :func:`summarize_model` does for one layer."""
    progress = progress or _quiet
    model, x, out = _prepare(model, inputs, num_examples, allow_import, out, overwrite, "profile", progress, dtype)
    result = profile(
        model, x, layers=layers, k=k, max_memory=max_memory, progress=progress, dtype=dtype, complex_mode=complex_mode
    )
    if out is None:
        return result, ()
    from ..report import write_profile_report

    progress("writing the report", 0, None)
    return result, write_profile_report(result, out)
