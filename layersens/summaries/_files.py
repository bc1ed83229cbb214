"""``read_result``: any ``.npz`` file layersens writes, read back as its result object, so that one command
(``layersens summarize FILE``) can say what each holds: Jacobians, sensitivities, readout gradients and Hessians,
products with J, and (shown by their arrays and metadata) the other results.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np

from .._atomic import sniff
from .._errors import CheckpointError
from ..derivatives import PRODUCTS_FORMAT, JacobianProducts, ReadoutDerivative
from ..results import is_store, load_jacobian, load_sensitivity, open_store, read_npz

SENSITIVITY_FORMAT = "layersens-sensitivity/1"
READOUT_FORMATS = {
    "layersens-readout-gradient/1": "a readout gradient",
    "layersens-readout-hessian/1": "a readout Hessian and gradient",
}
# Results read back as their arrays and metadata (their classes have no reader yet).
OTHER_FORMATS = ("layersens-spectrum/1", "layersens-ntk/1", "layersens-estimate/1")


@dataclasses.dataclass(frozen=True)
class OtherResult:
    """A layersens result without a reader of its own (a spectrum, an NTK, an estimate): its ``format``, its
    ``metadata`` and its arrays."""

    path: str
    format: str
    metadata: dict
    arrays: dict[str, np.ndarray]


def _peek(path) -> tuple[str | None, list[str]]:
    """The ``format`` of a layersens ``.npz`` and its members, or ``(None, [])`` for anything else (whose reader
    then says what it is)."""
    try:
        if sniff(path) != "npz":
            return None, []
        with np.load(path, allow_pickle=False) as data:
            members = [m for m in data.files if m != "metadata"]
            meta = json.loads(bytes(data["metadata"]).decode()) if "metadata" in data.files else None
    except Exception:  # noqa: BLE001 - unreadable in any way: the Jacobian reader reports it as it always has
        return None, []
    found = meta.get("format") if isinstance(meta, dict) else None
    return (found if isinstance(found, str) else None), members


def _leaves(meta: dict) -> tuple[tuple[str, ...], tuple[tuple[int, ...], ...], int]:
    names, shapes = meta["param_names"], meta["param_shapes"]
    if not (isinstance(names, list) and all(isinstance(n, str) for n in names) and len(set(names)) == len(names)):
        raise ValueError("param_names must be a list of distinct strings")
    if not (
        isinstance(shapes, list)
        and len(shapes) == len(names)
        and all(isinstance(s, list) and all(type(d) is int and 0 <= d < 2**40 for d in s) for s in shapes)
    ):
        raise ValueError("param_shapes must be lists of non-negative integers, one per leaf")
    return tuple(names), tuple(tuple(s) for s in shapes), sum(int(np.prod(s, dtype=np.int64)) for s in shapes)


def _strings(meta: dict, field: str) -> tuple[str, ...]:
    value = meta.get(field, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{field} must be a list of strings")
    return tuple(value)


def _floating(arrays: dict, shapes: dict) -> None:
    for name, shape in shapes.items():
        a = arrays.get(name)
        if a is not None and (not np.issubdtype(a.dtype, np.floating) or a.shape != shape):
            raise ValueError(f"{name} is {a.dtype} {a.shape}, expected floating {shape}")


def _readout(path, fmt: str, members: list[str]) -> ReadoutDerivative:
    names = [m for m in ("values", "gradient", "hessian", "hessian_vectors") if m in members]
    arrays, meta = read_npz(path, fmt, names, what=READOUT_FORMATS[fmt])
    leaves, shapes, size = _leaves(meta)
    count = len(arrays["values"]) if np.ndim(arrays["values"]) == 1 else -1
    _floating(
        arrays,
        {
            "values": (count,),
            "gradient": (count, size),
            "hessian": (count, size, size),
            "hessian_vectors": (count, size),
        },
    )
    if not isinstance(meta["layer"], str) or not isinstance(meta["readout"], str):
        raise ValueError("layer and readout must be strings")
    return ReadoutDerivative(
        layer=meta["layer"],
        readout=meta["readout"],
        param_names=leaves,
        param_shapes=shapes,
        frozen_params=_strings(meta, "frozen_params"),
        values=arrays["values"],
        gradient=arrays["gradient"],
        hessian=arrays.get("hessian"),
        hessian_vectors=arrays.get("hessian_vectors"),
    )


def _products(path, members: list[str]) -> JacobianProducts:
    arrays, meta = read_npz(path, PRODUCTS_FORMAT, [m for m in ("jvp", "vjp") if m in members], what="products")
    leaves, shapes, size = _leaves(meta)
    for name, axis in (("jvp", None), ("vjp", size)):
        a = arrays.get(name)
        if a is not None and (
            a.ndim != 3 or not np.issubdtype(a.dtype, np.floating) or (axis is not None and a.shape[1] != axis)
        ):
            raise ValueError(f"{name} is {a.dtype} {a.shape}; expected (examples, {axis or 'M'}, k), floating")
    if not isinstance(meta["layer"], str):
        raise ValueError("layer must be a string")
    return JacobianProducts(
        layer=meta["layer"],
        param_names=leaves,
        param_shapes=shapes,
        frozen_params=_strings(meta, "frozen_params"),
        jvp=arrays.get("jvp"),
        vjp=arrays.get("vjp"),
    )


def read_result(path, max_memory: int | None = None, progress=None):
    """The result a layersens ``.npz`` holds: a ``LayerJacobian``, a ``Sensitivity``, a ``ReadoutDerivative``
    (gradient, Hessian, Hessian-vector products), ``JacobianProducts``, or an :class:`OtherResult` for the other
    layersens formats; any other file is an error saying what it is (``CheckpointError``). A Jacobian store
    (``.zarr``) gives its ``Sensitivity``, streamed within ``max_memory`` (``progress(done, total)`` told of the
    reads): it may be far larger than memory."""
    if is_store(path):
        return open_store(path).sensitivity(max_memory, progress)
    fmt, members = _peek(path)
    if fmt == SENSITIVITY_FORMAT:
        return load_sensitivity(path)
    if fmt not in READOUT_FORMATS and fmt != PRODUCTS_FORMAT and fmt not in OTHER_FORMATS:
        return load_jacobian(path)  # a Jacobian, or its reader's error saying what the file is
    try:
        if fmt in READOUT_FORMATS:
            return _readout(path, fmt, members)
        if fmt == PRODUCTS_FORMAT:
            return _products(path, members)
        arrays, meta = read_npz(path, fmt, members)
        return OtherResult(path=str(path), format=fmt, metadata=meta, arrays=arrays)
    except CheckpointError:
        raise
    except (KeyError, TypeError, ValueError, OverflowError) as e:
        raise CheckpointError(f"{path} has inconsistent metadata ({type(e).__name__}: {e}).") from None
