"""Sensitivity: the squared column and row norms of a layer's Jacobian J (M outputs × P parameters), per example,
without J: diag(JᵀJ) shaped like each parameter leaf, ‖∂h_i/∂θ‖ shaped like the activation, and ‖J‖_F.

Made by :func:`layersens.compute.sensitivity` (a sink that accumulates chunks); memory is P + M float64 numbers
per example instead of M·P, so it works for layers whose dense Jacobian does not fit.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from .._errors import CheckpointError
from .._repr import Summarized
from ._result import NPZ_FORMAT as JACOBIAN_FORMAT
from ._result import OTHER_RESULTS
from ._storage import read_npz, write_npz
from ._xarray import activation_dims, leaf_dims, xarray_module

NPZ_FORMAT = "layersens-sensitivity/1"
_META = ("layer", "model", "wrt", "mode", "device")


@dataclasses.dataclass(frozen=True)
class Entry:
    """One ranked parameter (``leaf``, ``index`` into it) or unit (``leaf`` is the layer, ``index`` into the
    activation), with its ``value``: its share of ‖J‖²_F summed over examples."""

    leaf: str
    index: tuple[int, ...]
    value: float


def _top(named: list[tuple[str, np.ndarray]], k: int) -> list[Entry]:
    """The ``k`` largest entries of the arrays, largest first (ties in array order)."""
    flat = np.concatenate([a.reshape(-1) for _, a in named]) if named else np.zeros(0)
    k = max(0, min(int(k), flat.size))
    order = np.argsort(-flat, kind="stable")[:k] if k else np.zeros(0, np.int64)
    bounds = np.cumsum([0] + [a.size for _, a in named])
    entries = []
    for at in order:
        i = int(np.searchsorted(bounds, at, side="right") - 1)
        name, array = named[i]
        index = tuple(int(j) for j in np.unravel_index(int(at - bounds[i]), array.shape))
        entries.append(Entry(name, index, float(flat[at])))
    return entries


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class Sensitivity(Summarized):
    """Exact per-parameter and per-unit sensitivity of ``layer``, per example.

    Attributes:
      layer, model, wrt, mode, device, seconds, compile_seconds, notes: as in :class:`LayerJacobian`.
      param_names, param_shapes: the differentiated leaves (J's columns, in order).
      activation_shape: the layer's per-example shape (J's rows).
      parameter: leaf → ``(examples,) + leaf_shape``: diag(JᵀJ), Σ_i J[i, p]², float64.
      unit: ``(examples,) + activation_shape``: ‖∂h_i/∂θ‖ = sqrt(Σ_p J[i, p]²), float64.
      frobenius: ``(examples,)``: ‖J‖_F.
    """

    layer: str
    model: str
    param_names: tuple[str, ...]
    param_shapes: tuple[tuple[int, ...], ...]
    activation_shape: tuple[int, ...]
    wrt: str
    mode: str
    device: str
    parameter: dict[str, np.ndarray]
    unit: np.ndarray
    frobenius: np.ndarray
    seconds: float = 0.0
    compile_seconds: float = 0.0
    notes: tuple[str, ...] = ()

    def _summary(self):
        return [
            ("layer", self.layer),
            ("model", self.model),
            ("examples", self.num_examples),
            ("activation_shape", self.activation_shape),
            ("wrt", self.wrt),
            ("params", self.param_names),
            ("frobenius", tuple(float(f"{v:.4g}") for v in self.frobenius)),
            ("mode", self.mode),
            ("device", self.device),
            ("seconds", f"{self.seconds:.3g}"),
            ("compile_seconds", f"{self.compile_seconds:.3g}"),
            ("notes", len(self.notes)),
        ]

    @property
    def num_examples(self) -> int:
        return int(self.frobenius.shape[0])

    def leaf_totals(self) -> dict[str, float]:
        """Leaf → its share of ‖J‖²_F, summed over examples (the shares add up to Σ frobenius²)."""
        return {name: float(np.sum(self.parameter[name])) for name in self.param_names}

    def per_channel(self, leaf: str) -> np.ndarray:
        """``(examples, C)``: diag(JᵀJ) summed over all but ``leaf``'s last axis (its channels; a 0-d leaf is one
        channel). Each row sums to the leaf's share of that example's ‖J‖²_F."""
        if leaf not in self.parameter:
            raise KeyError(
                f"{leaf!r} is not a differentiated leaf of {self.layer!r}; they are {list(self.param_names)}."
            )
        values = self.parameter[leaf]
        channels = values.shape[-1] if values.ndim > 1 else 1
        return values.reshape(self.num_examples, -1, channels).sum(axis=1)

    def unit_channels(self) -> np.ndarray:
        """``(examples, C)``: Σ unit² over all but the activation's last axis, i.e. each channel's share of
        ‖J‖²_F (squared, like :meth:`per_channel`, so that the row sums are ``frobenius ** 2``)."""
        squares = np.square(self.unit)
        channels = squares.shape[-1] if squares.ndim > 1 else 1
        return squares.reshape(self.num_examples, -1, channels).sum(axis=1)

    def top_parameters(self, k: int = 10) -> list[Entry]:
        """The ``k`` parameters with the largest diag(JᵀJ) summed over examples, largest first."""
        return _top([(n, self.parameter[n].sum(axis=0)) for n in self.param_names], k)

    def top_units(self, k: int = 10) -> list[Entry]:
        """The ``k`` units with the largest Σ_examples unit², largest first (``Entry.leaf`` is the layer)."""
        return _top([(self.layer, np.square(self.unit).sum(axis=0))], k)

    def metadata(self) -> dict:
        meta = {name: getattr(self, name) for name in _META}
        meta.update(
            param_names=list(self.param_names),
            param_shapes=[list(s) for s in self.param_shapes],
            activation_shape=list(self.activation_shape),
            seconds=self.seconds,
            compile_seconds=self.compile_seconds,
            notes=list(self.notes),
            format=NPZ_FORMAT,
        )
        return meta

    def save(self, path) -> Path:
        """Writes the arrays (the leaves concatenated as ``parameter``, ``(examples, P)``) and metadata to ``path``
        (``.npz``), atomically."""
        flat = [self.parameter[n].reshape(self.num_examples, -1) for n in self.param_names]
        parameter = np.concatenate(flat, axis=1) if flat else np.zeros((self.num_examples, 0))
        return write_npz(
            path, {"parameter": parameter, "unit": self.unit, "frobenius": self.frobenius}, self.metadata()
        )

    def to_xarray(self):
        """An ``xarray.Dataset``: ``unit`` over ``(example, height, width, channel)`` (3-axis activations) or
        ``(example, unit_axis0, ...)``, ``frobenius`` over ``example``, one variable per leaf over
        ``(example, <leaf>_axis0, ...)``. Needs xarray."""
        xr = xarray_module("Sensitivity.to_xarray")
        axes = activation_dims(self.activation_shape)
        data = {"unit": (("example",) + axes, self.unit), "frobenius": (("example",), self.frobenius)}
        for name in self.param_names:
            values = self.parameter[name]
            data[name] = (("example",) + leaf_dims(name, values.ndim - 1), values)
        attrs = {name: getattr(self, name) for name in _META}
        return xr.Dataset(data, coords={"example": np.arange(self.num_examples)}, attrs=attrs)

    def plot(self, kind: str = "parameters"):
        """A matplotlib ``Figure`` (no pyplot state): ``"parameters"`` (each leaf's share of ‖J‖²_F, and per output
        channel for leaves with channels) or ``"units"`` (‖∂h/∂θ‖ averaged over examples: one image per channel
        of an (H, W, C) activation, bars over the units of a vector). Needs matplotlib."""
        from ..report import sensitivity_figure

        return sensitivity_figure(self, kind)


def _checked(meta: dict, arrays: dict) -> Sensitivity:
    if not all(isinstance(meta[f], str) for f in _META):
        raise ValueError(f"{_META} must be strings")
    names, shapes, act = meta["param_names"], meta["param_shapes"], meta["activation_shape"]
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names) or len(set(names)) != len(names):
        raise ValueError("param_names must be a list of distinct strings")

    def dims(s):
        return isinstance(s, list) and all(type(d) is int and 0 <= d < 2**40 for d in s)

    if not isinstance(shapes, list) or len(shapes) != len(names) or not all(dims(s) for s in shapes) or not dims(act):
        raise ValueError("param_shapes and activation_shape must be lists of non-negative integers, one per leaf")
    p, u, f = (np.asarray(arrays[k]) for k in ("parameter", "unit", "frobenius"))
    sizes = [int(np.prod(s, dtype=np.int64)) for s in shapes]
    if (
        any(not np.issubdtype(a.dtype, np.floating) for a in (p, u, f))
        or f.ndim != 1
        or p.shape != (len(f), sum(sizes))
        or u.shape != (len(f),) + tuple(act)
    ):
        raise ValueError(
            f"arrays parameter {p.shape}, unit {u.shape}, frobenius {f.shape} do not fit the leaves "
            f"{dict(zip(names, shapes))} and activation {tuple(act)}"
        )
    bounds = np.cumsum([0] + sizes)
    parameter = {n: p[:, a:b].reshape((len(f),) + tuple(s)) for n, s, a, b in zip(names, shapes, bounds, bounds[1:])}
    notes = meta.get("notes", [])
    if not isinstance(notes, list) or not all(isinstance(n, str) for n in notes):
        raise ValueError("notes must be a list of strings")
    return Sensitivity(
        **{k: meta[k] for k in _META},
        param_names=tuple(names),
        param_shapes=tuple(tuple(s) for s in shapes),
        activation_shape=tuple(act),
        parameter=parameter,
        unit=u,
        frobenius=f,
        seconds=float(meta.get("seconds", 0.0)),
        compile_seconds=float(meta.get("compile_seconds", 0.0)),
        notes=tuple(notes),
    )


def load_sensitivity(path) -> Sensitivity:
    """Reads a file written by :meth:`Sensitivity.save`, checking that its metadata and arrays agree."""
    others = {**OTHER_RESULTS, JACOBIAN_FORMAT: ("a Jacobian", "layersens extract --out")}
    arrays, meta = read_npz(path, NPZ_FORMAT, ("parameter", "unit", "frobenius"), what="a sensitivity", others=others)
    try:
        return _checked(meta, arrays)
    except (KeyError, TypeError, ValueError, OverflowError) as e:
        raise CheckpointError(f"{path} has inconsistent metadata ({type(e).__name__}: {e}).") from None
