"""``profile``: every addressable layer of a model, in depth order, summarized by its exact ‖J‖_F, its top
singular value(s), its stable rank and the leaves that move it most, the Jacobians never formed."""

from __future__ import annotations

import time

import numpy as np

from .._errors import InputShapeError, UnknownLayerError
from ..models import Model
from ..results import ProfileRow, SensitivityProfile
from ..tracing import list_layers, split
from ._layer import Progress, _quiet, summarize_layer

NO_PARAMETERS = "no parameter reaches it (it depends on the input alone)"


def _chosen(infos, layers) -> list:
    """The layers asked for (all by default), in depth order; an unknown name is an error naming the closest."""
    if layers is None:
        return list(infos)
    names = {layers} if isinstance(layers, str) else set(layers)
    known = [info.name for info in infos]
    for name in sorted(names - set(known)):
        raise UnknownLayerError(name, known)
    return [info for info in infos if info.name in names]


def _check_k(k) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise InputShapeError(f"k is {k!r}; a profile needs at least the top singular value (k >= 1).")
    return int(k)


def profile(
    model: Model,
    inputs,
    *,
    layers=None,
    k: int = 1,
    max_memory=None,
    progress: Progress | None = None,
    dtype=None,
    complex_mode=None,
) -> SensitivityProfile:
    """One :class:`ProfileRow` per addressable layer of ``model`` (``layers``: a subset of names), in the order
    of :func:`layersens.list_layers` (depth): ‖J_n‖_F (exact), the ``k`` largest singular values (k ≥ 1), the
    stable rank ‖J‖²_F / σ₁² and each upstream leaf's share of ‖J‖²_F, per example of ``inputs``. Layers no
    parameter reaches are skipped, and listed in ``skipped`` with the reason. ``dtype`` and ``complex_mode`` (for
    complex models: ``"real"``, the real part's Jacobian) as for :func:`layersens.split`.

    Cost per layer: that of :func:`layersens.summarize_layer` without the NTK; ``progress(step, done, total)`` as
    there, its step naming the layer and its place in the profile."""
    start = time.perf_counter()
    report = progress or _quiet
    k = _check_k(k)
    x = model.check_inputs(inputs)  # each split casts them to its dtype
    report("listing the layers", 0, None)
    infos = list_layers(model, dtype=dtype)
    depth = {info.name: i for i, info in enumerate(infos)}
    chosen = _chosen(infos, layers)
    rows, skipped = [], []
    for i, info in enumerate(chosen):
        if info.num_upstream_params == 0:
            skipped.append((info.name, NO_PARAMETERS))
            continue
        began = time.perf_counter()
        where = f"[{i + 1}/{len(chosen)}] "
        report(f"{where}{info.name}: tracing", 0, None)
        cut = split(model, info.name, dtype=dtype, complex_mode=complex_mode)

        def told(step: str, done: int, total: int | None, where: str = where) -> None:
            report(where + step, done, total)

        summary = summarize_layer(
            cut, x, k=min(k, cut.num_outputs, cut.num_params), max_memory=max_memory, ntk=False, progress=told
        )
        assert summary.spectrum is not None  # k >= 1
        shares = sorted(summary.leaf_shares().items(), key=lambda item: -item[1])
        rows.append(
            ProfileRow(
                layer=info.name,
                depth=depth[info.name],
                shape=tuple(info.shape),
                num_params=cut.num_params,
                frobenius=summary.frobenius,
                singular_values=summary.spectrum.values,
                leaf_shares=tuple(shares),
                seconds=time.perf_counter() - began,
            )
        )
    return SensitivityProfile(
        model=model.name,
        rows=tuple(rows),
        skipped=tuple(skipped),
        num_examples=len(x),
        k=int(k),
        seconds=time.perf_counter() - start,
    )
