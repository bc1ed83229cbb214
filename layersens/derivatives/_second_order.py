"""Scalar readouts of a layer: their gradients, Hessian-vector products and (for few parameters) full Hessians.

A readout turns one example's activation into one number: ``"sum"``, a unit (an index into the activation,
``(3, 5, 0)`` or a flat ``17``), or any function ``f(activation) -> scalar``. For each example n, with θ the
differentiated values (``split.param_names``):

* ``readout_gradient``: ∇θ r(h_n(θ)), one pullback per example;
* ``hvp``: ∇²θ r(h_n(θ)) v, forward-over-reverse (one JVP of the gradient), the Hessian never formed;
* ``hessian``: the full P × P matrix, P JVPs of the gradient per example: only for few parameters
  (``MAX_HESSIAN_PARAMS``), an error that says so otherwise.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np

from .._errors import InputShapeError, JacobianTooLargeError, SelectionError, format_bytes
from .._repr import Summarized
from ..results import write_npz
from ._flat import as_examples, flat_function

if TYPE_CHECKING:
    from ..tracing import LayerSplit

MAX_HESSIAN_PARAMS = 4096
GRADIENT_FORMAT = "layersens-readout-gradient/1"
HESSIAN_FORMAT = "layersens-readout-hessian/1"


def readout_function(readout, activation_shape):
    """``f(activation) -> scalar`` from ``"sum"``, a unit index, or a callable; says which were expected."""
    if callable(readout):
        return readout, getattr(readout, "__name__", "function")
    if isinstance(readout, str) and readout == "sum":
        return jnp.sum, "sum"
    index = readout
    if isinstance(readout, str) and readout.startswith("unit:"):
        try:
            index = tuple(int(i) for i in readout[5:].split(","))
        except ValueError:
            index = None
    if isinstance(index, (int, np.integer)):
        index = (
            tuple(int(i) for i in np.unravel_index(int(index), activation_shape))
            if 0 <= index < int(np.prod(activation_shape))
            else None
        )
    if isinstance(index, tuple) and len(index) == 1 and len(activation_shape) > 1:
        flat = index[0]
        index = (
            tuple(int(i) for i in np.unravel_index(flat, activation_shape))
            if 0 <= flat < int(np.prod(activation_shape))
            else None
        )
    if (
        isinstance(index, tuple)
        and len(index) == len(activation_shape)
        and all(0 <= i < d for i, d in zip(index, activation_shape))
    ):
        return (lambda h: h[index]), f"unit {index}"
    raise SelectionError(
        f"readout is {readout!r}; use 'sum', a unit of the activation {tuple(activation_shape)} "
        "('unit:3,5,0' or a flat index such as 'unit:17'), or a function of the activation."
    )


def _scalar(split: LayerSplit, readout):
    fn, name = readout_function(readout, split.activation_shape)

    def value(params, x):
        theta, f = flat_function(split, params, x)
        return theta, lambda t: fn(f(t).reshape(split.activation_shape))

    return value, name


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class ReadoutDerivative(Summarized):
    """Per-example derivatives of a scalar readout of a layer.

    Attributes:
      layer, readout: what was differentiated (the readout described in words).
      param_names, param_shapes: the differentiated leaves (``split.param_names``), in order.
      frozen_params: upstream leaves held constant.
      values: the readout per example, ``(examples,)``.
      gradient: ``(examples, P)``.
      hessian: ``(examples, P, P)`` or ``None``.
      hessian_vectors: ``(examples, P)``, Hessian-vector products, or ``None``.
    """

    layer: str
    readout: str
    param_names: tuple[str, ...]
    param_shapes: tuple[tuple[int, ...], ...]
    frozen_params: tuple[str, ...]
    values: np.ndarray
    gradient: np.ndarray
    hessian: np.ndarray | None = None
    hessian_vectors: np.ndarray | None = None  # ∇²r v per example, for the vectors asked for (``hvp``)

    def _summary(self):
        return [
            ("layer", self.layer),
            ("readout", self.readout),
            ("params", self.param_names),
            ("gradient", self.gradient),
            ("hessian", self.hessian),
            ("hessian_vectors", self.hessian_vectors),
        ]

    def __getitem__(self, name: str) -> np.ndarray:
        """One leaf's gradient, ``(examples,) + leaf_shape``."""
        start = 0
        for leaf, shape in zip(self.param_names, self.param_shapes):
            size = int(np.prod(shape, dtype=np.int64))
            if leaf == name:
                return self.gradient[:, start : start + size].reshape((len(self.gradient),) + tuple(shape))
            start += size
        raise KeyError(f"{name!r} was not differentiated; the leaves are {list(self.param_names)}.")

    def total(self) -> dict[str, np.ndarray]:
        """The gradient summed over examples, per leaf: the gradient of Σ_n r(h_n)."""
        return {name: self[name].sum(axis=0) for name in self.param_names}

    def save(self, path):
        arrays = {"values": self.values, "gradient": self.gradient}
        if self.hessian is not None:
            arrays["hessian"] = self.hessian
        if self.hessian_vectors is not None:
            arrays["hessian_vectors"] = self.hessian_vectors
        meta = {
            "format": HESSIAN_FORMAT if self.hessian is not None else GRADIENT_FORMAT,
            "layer": self.layer,
            "readout": self.readout,
            "param_names": list(self.param_names),
            "param_shapes": [list(s) for s in self.param_shapes],
            "frozen_params": list(self.frozen_params),
        }
        return write_npz(path, arrays, meta)


def _result(split: LayerSplit, name, values, gradient, hessian=None) -> ReadoutDerivative:
    return ReadoutDerivative(
        layer=split.layer,
        readout=name,
        param_names=split.param_names,
        param_shapes=split.param_shapes,
        frozen_params=split.frozen,
        values=np.asarray(values),
        gradient=np.asarray(gradient),
        hessian=None if hessian is None else np.asarray(hessian),
    )


def readout_gradient(split: LayerSplit, inputs, readout="sum") -> ReadoutDerivative:
    """∇θ r(h_n) for each example (one pullback each); ``.total()`` sums them (the gradient of a loss that sums
    over examples; divide by their number for a mean)."""
    x = as_examples(split, inputs)
    value, name = _scalar(split, readout)

    @jax.jit
    def one(params, xn):
        theta, r = value(params, xn)
        return jax.value_and_grad(r)(theta)

    results = [one(split.params, xn) for xn in x]
    return _result(split, name, [v for v, _ in results], np.stack([np.asarray(g) for _, g in results]))


def hvp(split: LayerSplit, inputs, vectors, readout="sum") -> np.ndarray:
    """``(examples, P)``: ∇²θ r(h_n) v for each example, ``vectors`` ``(P,)`` or ``(examples, P)``. Cost: one
    JVP of the gradient (about two forward and two backward passes) per example; the Hessian is never formed."""
    x = as_examples(split, inputs)
    value, _ = _scalar(split, readout)
    v = np.asarray(vectors, split.activation_dtype)
    given = v.shape
    if v.ndim == 1:
        v = np.broadcast_to(v, (len(x),) + v.shape)
    if v.shape != (len(x), split.num_params):
        raise InputShapeError(
            f"vectors have shape {given}; expected ({split.num_params},) or "
            f"({len(x)}, {split.num_params}) over the leaves {list(split.param_names)}."
        )

    @jax.jit
    def one(params, xn, vn):
        theta, r = value(params, xn)
        return jax.jvp(jax.grad(r), (theta,), (vn,))[1]

    return np.stack([np.asarray(one(split.params, xn, vn)) for xn, vn in zip(x, v)])


def hessian(split: LayerSplit, inputs, readout="sum", max_params: int = MAX_HESSIAN_PARAMS) -> ReadoutDerivative:
    """The full Hessian ∇²θ r(h_n) (and the gradient) for each example, when the differentiated leaves are few
    (at most ``max_params``). Cost: P JVPs of the gradient per example, a P × P matrix each."""
    x = as_examples(split, inputs)
    p = split.num_params
    if p > max_params:
        nbytes = len(x) * p * p * np.dtype(split.activation_dtype).itemsize
        raise JacobianTooLargeError(
            f"the Hessian over {p:,} parameters is {p:,} × {p:,} per example ({format_bytes(nbytes)} for "
            f"{len(x)}); the full Hessian is computed for at most {max_params:,}. Select fewer leaves (wrt=, "
            "--wrt), or use Hessian-vector products (layersens.hvp)."
        )
    value, name = _scalar(split, readout)

    @jax.jit
    def one(params, xn):
        theta, r = value(params, xn)
        return r(theta), jax.grad(r)(theta), jax.hessian(r)(theta)

    results = [one(split.params, xn) for xn in x]
    return _result(
        split,
        name,
        [r[0] for r in results],
        np.stack([np.asarray(r[1]) for r in results]),
        np.stack([np.asarray(r[2]) for r in results]),
    )
