"""The result of an extraction: a small frozen dataclass around the flat Jacobian, and its ``.npz`` form."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .._errors import CheckpointError, format_bytes
from .._repr import Summarized
from ._storage import read_npz, write_npz
from ._xarray import activation_dims, leaf_dims, xarray_module

if TYPE_CHECKING:
    from ..derivatives import Verification

NPZ_FORMAT = "layersens-jacobian/1"


def column_ranges(names, shapes) -> dict[str, tuple[int, int]]:
    """Column range ``(start, stop)`` of each leaf when leaves of these shapes are laid side by side in order."""
    ranges, start = {}, 0
    for name, shape in zip(names, shapes):
        stop = start + int(np.prod(shape, dtype=np.int64))
        ranges[name] = (start, stop)
        start = stop
    return ranges


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class LayerJacobian(Summarized):
    """d(activation of ``layer``)/d(upstream parameters), per example.

    Attributes:
      layer, model, framework: what was differentiated.
      matrix: the flat view, shape ``(examples, M, P)``: rows are the activation's elements (row-major over
        ``activation_shape``), columns the upstream parameters concatenated in ``param_names`` order.
      activation: the layer's values, ``(examples,) + activation_shape``.
      inputs: the examples, ``(examples,) + input_shape``.
      param_names, param_shapes: the upstream leaves, in column order.
      excluded_params: leaves that do not reach the layer (held constant, not differentiated).
      frozen_params: leaves that reach the layer but were held constant (not selected by ``wrt``).
      wrt: what the columns are: ``"parameters"``, ``"input"`` or ``"layer:<name>"``.
      verification: the spot checks' result (``layersens.verify``), or ``None``.
      mode: the method that computed each block, e.g. ``"fwd"`` or ``"rev"``.
      dtype, device: of the computation.
      eval_mode: how evaluation mode was selected.
      compile_seconds, seconds: time spent compiling, and computing after compilation.
      notes: what the user must know about these numbers (plan fallbacks, random draws, lower precision).
      complex_mode: for a layer or parameters with complex values, the convention of the Jacobian (``"real"``,
        ``"complex"``: complex with Wirtinger parts ``w`` and ``conj(w)``, ``"holomorphic"``; see the README);
        ``""`` for a real model.
    """

    layer: str
    model: str
    framework: str
    matrix: np.ndarray
    activation: np.ndarray
    inputs: np.ndarray
    param_names: tuple[str, ...]
    param_shapes: tuple[tuple[int, ...], ...]
    excluded_params: tuple[str, ...]
    mode: str
    dtype: str
    device: str
    eval_mode: str
    compile_seconds: float = 0.0
    seconds: float = 0.0
    notes: tuple[str, ...] = ()
    frozen_params: tuple[str, ...] = ()
    wrt: str = "parameters"
    verification: Verification | None = None  # a layersens.Verification when spot-checked (extract(verify=True))
    complex_mode: str = ""

    def _summary(self):
        return [
            ("layer", self.layer),
            ("model", self.model),
            ("matrix", self.matrix),
            ("size", format_bytes(self.nbytes)),
            ("activation_shape", self.activation_shape),
            ("wrt", self.wrt),
            ("params", self.param_names),
            ("mode", self.mode),
            *([("complex_mode", self.complex_mode)] if self.complex_mode else []),
            ("device", self.device),
            ("seconds", f"{self.seconds:.3g}"),
            ("compile_seconds", f"{self.compile_seconds:.3g}"),
            ("notes", len(self.notes)),
        ]

    @property
    def num_examples(self) -> int:
        return int(self.matrix.shape[0])

    @property
    def activation_shape(self) -> tuple[int, ...]:
        return tuple(self.activation.shape[1:])

    @property
    def num_outputs(self) -> int:
        return int(self.matrix.shape[1])

    @property
    def num_params(self) -> int:
        return int(self.matrix.shape[2])

    @property
    def nbytes(self) -> int:
        return int(self.matrix.nbytes)

    @property
    def column_ranges(self) -> dict[str, tuple[int, int]]:
        """Column range ``(start, stop)`` of each upstream leaf in :attr:`matrix`."""
        return column_ranges(self.param_names, self.param_shapes)

    @property
    def axes(self) -> tuple[str, ...]:
        """Names of the axes of :attr:`matrix`."""
        return ("example", f"{self.layer}_element", "parameter")

    def __getitem__(self, name: str) -> np.ndarray:
        """The Jacobian with respect to one leaf, shape ``(examples,) + activation_shape + leaf_shape`` (a view)."""
        ranges = self.column_ranges
        if name not in ranges:
            raise KeyError(f"{name!r} is not an upstream parameter of {self.layer!r}; they are {list(ranges)}.")
        start, stop = ranges[name]
        shape = self.param_shapes[self.param_names.index(name)]
        return self.matrix[:, :, start:stop].reshape((self.num_examples,) + self.activation_shape + shape)

    def per_leaf(self) -> dict[str, np.ndarray]:
        return {name: self[name] for name in self.param_names}

    def to_xarray(self):
        """The Jacobian as an ``xarray.Dataset`` with named dimensions: one variable per leaf over ``(example,
        height, width, channel, <leaf>_axis0, ...)`` (activation axes named as in :func:`activation_dims`), the
        activation over ``(example, height, width, channel)``. Views of :attr:`matrix`, no copy. Needs xarray."""
        xr = xarray_module("LayerJacobian.to_xarray")
        act = activation_dims(self.activation_shape)
        data = {
            name: (("example",) + act + leaf_dims(name, len(shape)), self[name])
            for name, shape in zip(self.param_names, self.param_shapes)
        }
        data["activation"] = (("example",) + act, self.activation)
        return xr.Dataset(
            data,
            coords={"example": np.arange(self.num_examples)},
            attrs={"layer": self.layer, "model": self.model, "mode": self.mode, "wrt": self.wrt},
        )

    def metadata(self) -> dict:
        fields = (
            "layer",
            "model",
            "framework",
            "param_names",
            "excluded_params",
            "mode",
            "dtype",
            "device",
            "eval_mode",
            "compile_seconds",
            "seconds",
            "notes",
            "frozen_params",
            "wrt",
            "complex_mode",
        )
        meta = {name: getattr(self, name) for name in fields}
        meta["param_shapes"] = [list(s) for s in self.param_shapes]
        if self.verification is not None:
            meta["verification"] = self.verification.describe()
        meta["format"] = NPZ_FORMAT
        return meta

    def save(self, path, wrote=None) -> Path:
        """Writes the Jacobian, activation, inputs and metadata to ``path`` (``.npz``), atomically;
        ``wrote(nbytes)`` is told of the bytes as they are written."""
        arrays = {"matrix": self.matrix, "activation": self.activation, "inputs": self.inputs}
        return write_npz(path, arrays, self.metadata(), wrote)


def _names(value, field: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{field} must be a list of strings")
    return tuple(value)


def _text(meta: dict, field: str) -> str:
    value = meta[field]
    if not isinstance(value, str):
        raise ValueError(f"{field} must be a string")
    value.encode("utf-8")  # a lone surrogate cannot be printed or written: refuse it here
    return value


def load_jacobian_npz(path) -> LayerJacobian:
    """Reads a file written by :meth:`LayerJacobian.save` (``layersens extract --out``), checking that its
    metadata and arrays agree."""
    arrays, meta = read_npz(
        path, NPZ_FORMAT, ("matrix", "activation", "inputs"), what="a Jacobian", others=OTHER_RESULTS
    )
    try:
        fields: dict[str, Any] = {
            f: _text(meta, f) for f in ("layer", "model", "framework", "mode", "dtype", "device", "eval_mode")
        }
        fields["wrt"] = _text(meta, "wrt") if "wrt" in meta else "parameters"
        fields["complex_mode"] = _text(meta, "complex_mode") if "complex_mode" in meta else ""
        if fields["complex_mode"] not in ("", "real", "complex", "holomorphic"):
            raise ValueError(f"complex_mode {fields['complex_mode']!r} is not real, complex or holomorphic")
        names = _names(meta["param_names"], "param_names")
        shapes = meta["param_shapes"]
        if not isinstance(shapes, list) or not all(
            isinstance(s, list) and all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2**40 for d in s)
            for s in shapes
        ):
            raise ValueError("param_shapes must be lists of non-negative integers")
        notes = meta.get("notes", [])
        jac = LayerJacobian(
            **arrays,
            **fields,
            param_names=names,
            param_shapes=tuple(tuple(s) for s in shapes),
            excluded_params=_names(meta["excluded_params"], "excluded_params"),
            frozen_params=_names(meta.get("frozen_params", []), "frozen_params"),
            notes=tuple(_text({"n": n}, "n") for n in (notes if isinstance(notes, list) else [notes])),
            compile_seconds=float(meta.get("compile_seconds", 0.0)),
            seconds=float(meta.get("seconds", 0.0)),
        )
    except (KeyError, TypeError, ValueError, UnicodeEncodeError, OverflowError) as e:
        raise CheckpointError(f"{path} has inconsistent metadata ({type(e).__name__}: {e}).") from None
    size = sum(int(np.prod(s, dtype=np.int64)) for s in jac.param_shapes)
    m, a, x = jac.matrix, jac.activation, jac.inputs
    problems = []
    stated = np.complexfloating if jac.complex_mode in ("complex", "holomorphic") else np.floating
    if m.ndim != 3 or not np.issubdtype(m.dtype, stated):
        kind = "complex" if stated is np.complexfloating else "floating"
        problems.append(f"a matrix of shape {m.shape} and dtype {m.dtype} (expected 3 axes, {kind})")
    elif m.shape[2] != size or len(jac.param_names) != len(jac.param_shapes):
        problems.append(f"a matrix of {m.shape[2]} columns for leaves {dict(zip(jac.param_names, jac.param_shapes))}")
    if len(set(jac.param_names)) != len(jac.param_names):
        problems.append(f"repeated leaf names {jac.param_names}")
    if a.ndim < 1 or x.ndim < 1 or (m.ndim == 3 and (a.shape[0] != m.shape[0] or x.shape[0] != m.shape[0])):
        problems.append(f"activations {a.shape} and inputs {x.shape} for a matrix {m.shape}")
    elif m.ndim == 3 and int(np.prod(a.shape[1:], dtype=np.int64)) != m.shape[1]:
        problems.append(f"activations of shape {a.shape} for {m.shape[1]} rows")
    if problems:
        raise CheckpointError(f"{path} has inconsistent metadata: {'; '.join(problems)}.")
    return jac


# The other .npz files layersens writes (layersens/derivatives/_second_order.py, layersens/_extract.py), named when
# one is given where a Jacobian is expected: (what it holds, the command that writes it).
OTHER_RESULTS = {
    "layersens-readout-gradient/1": ("a readout gradient", "layersens gradient"),
    "layersens-readout-hessian/1": ("a readout Hessian and gradient", "layersens hessian"),
    "layersens-products/1": ("products with a Jacobian (J V, Jᵀ U)", "layersens products"),
    "layersens-sensitivity/1": (
        "per-parameter and per-unit sensitivities (layersens.load_sensitivity reads it)",
        "layersens.sensitivity",
    ),
    "layersens-spectrum/1": ("a layer's top singular values and vectors", "layersens.spectrum"),
    "layersens-ntk/1": ("a layer's empirical NTK", "layersens.layer_ntk"),
    "layersens-estimate/1": ("an estimate with its standard error", "layersens.estimate_frobenius and its kin"),
}
