"""``summarize_layer``: a layer's exact sensitivity, the top of its spectrum and its traced NTK in one result, the
M × P Jacobian never formed for the sensitivity and the spectrum (the NTK forms it only where it fits the budget).

One linearization per example serves the spectrum and the NTK; the sensitivity runs the compiled plans of
``layersens.jacobian`` through an accumulating sink. ‖J‖_F comes from the sensitivity, exactly, and replaces the
spectrum's own estimate (its probe budget is set to one probe), so that the stable rank is exact.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from typing import TYPE_CHECKING, Callable

import jax
import numpy as np

from .._errors import InputShapeError
from ..compute import resolve_device, sensitivity
from ..derivatives import layer_ntk, linearize, spectrum
from ..planning import parse_bytes
from ..results import LayerSummary
from ..tracing import require_real

if TYPE_CHECKING:
    from ..tracing import LayerSplit


Progress = Callable[[str, int, "int | None"], None]
"""``progress(step, done, total)``: the step under way (``"relu2: sensitivity"``), and its chunks done out of
``total`` (``None``: a step without counts, reported when it starts and ``(1, 1)`` when it ends)."""


def _quiet(step: str, done: int, total: int | None) -> None:
    pass


def check_k(k, split: LayerSplit) -> int:
    """``k`` as an int, refused unless 0 <= k <= min(M, P) (0: no spectrum)."""
    m, p = split.num_outputs, split.num_params
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 0 <= k <= min(m, p):
        raise InputShapeError(
            f"k is {k!r}; J of {split.layer!r} is {m:,} × {p:,} per example, so choose 0 to "
            f"{min(m, p):,} singular values (0: none)."
        )
    return int(k)


def summarize_layer(
    split: LayerSplit,
    inputs,
    *,
    k: int = 6,
    max_memory=None,
    device=None,
    ntk: bool = True,
    progress: Progress | None = None,
    devices: int | None = None,
) -> LayerSummary:
    """The exact sensitivity of ``split``'s layer (‖J_n‖_F, diag(J_nᵀJ_n) per parameter, ‖∂h_i/∂θ‖ per unit:
    :func:`layersens.sensitivity`), the ``k`` largest singular values and directions of each J_n
    (:func:`layersens.spectrum`) with the exact stable rank ‖J‖²_F / σ₁², and with ``ntk`` the traced empirical
    NTK tr(J_n J_mᵀ) across examples (:func:`layersens.layer_ntk`), as one :class:`LayerSummary`.

    ``max_memory`` bounds each chunk's working memory (and the NTK forms the dense J of all examples only when it
    fits in it); ``device`` and ``devices`` as for :func:`layersens.jacobian` (``devices`` spreads the sensitivity's
    chunks); ``progress(step, done, total)`` is told each step.
    Cost: the passes of ``jacobian`` (without its result), one forward pass per example to linearize, about
    6k–9k products per example for the spectrum (none beyond min(M, P) when J is small enough to form), and for
    the NTK the plan's passes (contraction) or min(M, P) products per example.
    """
    require_real(split, "a layer's summary without its Jacobian (summarize --layer)")
    start = time.perf_counter()
    report = progress or _quiet
    x = split.model.check_inputs(inputs, dtype=split.input_dtype)
    k = check_k(k, split)
    budget = None if max_memory is None else parse_bytes(max_memory)
    dev = resolve_device(device)
    steps = 1 + (1 if k or ntk else 0) + (1 if k else 0) + (1 if ntk else 0)
    at = iter(range(1, steps + 1))

    def numbered(text: str) -> str:
        return f"{split.layer}: step {next(at)} of {steps}, {text}"

    step = numbered("sensitivity")
    sens = sensitivity(
        split, x, max_memory=budget, device=dev, devices=devices, progress=lambda done, total: report(step, done, total)
    )
    spec = kernel = None
    notes: tuple[str, ...] = ()
    with jax.default_device(dev) if device is not None else contextlib.nullcontext():
        op = None
        if k or ntk:
            report(numbered(f"linearizing {len(x)} example(s)"), 0, None)
            op = linearize(split, x)
        if k:
            step = numbered(f"top {k} singular value(s)")
            report(step, 0, None)
            # one probe asked for ‖J‖²_F: the exact value from the sensitivity replaces its estimate
            spec = dataclasses.replace(
                spectrum(op, None, k=k, max_samples=1),
                frobenius_sq=np.square(sens.frobenius),
                frobenius_sq_stderr=np.zeros(len(x)),
                frobenius_exact=np.ones(len(x), bool),
            )
            report(step, 1, 1)
        if ntk:
            step = numbered(f"NTK across {len(x)} example(s)")
            report(step, 0, None)
            kernel = layer_ntk(op, None, max_memory=budget)  # the dense J only within the budget
            report(step, 1, 1)
    return LayerSummary(sensitivity=sens, spectrum=spec, ntk=kernel, seconds=time.perf_counter() - start, notes=notes)
