"""One linearization, many products: the Jacobian as a linear operator that is never materialized.

``layersens.linearize(split, inputs)`` runs the forward pass of each example once and keeps its linearization
(the residuals of one pass per example, not an M × P matrix). Products are then cheap and exact:

* ``op.jvp(v)``: J_n v for every example (one forward-mode pass each), ``v`` over the differentiated leaves;
* ``op.vjp(u)``: J_nᵀ u_n (one reverse pass each);
* ``op.matmat(V)`` / ``op.rmatmat(U)``: blocks of vectors at once (vmapped).

This is MATLAB's ``dlgradient(..., RetainData=true)`` done for whole layers: one trace and one forward pass,
any number of derivatives. Forward products through a ``custom_vjp`` function come from transposing the
reverse ones, and reverse products through a ``while_loop`` do not exist (an error says so).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np

from .._errors import InputShapeError, LayersensError
from .._repr import Summarized
from ..analysis import analyze
from ._flat import as_examples, flat_function

if TYPE_CHECKING:
    from ..tracing import LayerSplit


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class LinearizedLayer(Summarized):
    """J_n (M × P) of every example n, as a linear operator.

    Attributes:
      split: what is differentiated (its ``param_names`` are the columns, in order).
      inputs: the examples.
      activation: the layer's values, ``(examples,) + activation_shape``.
      shape: ``(examples, M, P)``.
    """

    split: LayerSplit
    inputs: np.ndarray
    activation: np.ndarray
    shape: tuple[int, int, int]
    _maps: tuple = dataclasses.field(repr=False)
    _forward: bool = dataclasses.field(repr=False)
    _no_reverse: str | None = dataclasses.field(default=None, repr=False)

    def _summary(self):
        return [
            ("layer", self.split.layer),
            ("shape", self.shape),
            ("params", self.split.param_names),
            ("mode", "forward" if self._forward else "reverse"),
        ]

    def _check_reverse(self):
        if self._no_reverse is not None:
            raise LayersensError(
                f"no reverse products (vjp, rmatmat) through {self._no_reverse}: it has no reverse mode. Use "
                "jvp/matmat, or give the loop static bounds (a fori_loop over Python ints is a scan)."
            )

    def _flat_vectors(self, v, k_axis: bool):
        """A dict of leaves (shared by all examples), or an array ``(P,)``/``(P, k)`` or per example
        ``(N, P)``/``(N, P, k)``."""
        n, _, p = self.shape
        if isinstance(v, dict):
            missing = set(self.split.param_names) - set(v)
            if missing:
                raise InputShapeError(
                    f"the vector lacks leaves {sorted(missing)}; give every one of {list(self.split.param_names)}."
                )
            v = np.concatenate([np.ravel(v[name]) for name in self.split.param_names])
        v = np.asarray(v, self.activation.dtype)
        given = v.shape  # errors name the shape the caller gave, not one made from it below
        if k_axis and v.ndim == 1:  # one vector: a block of k = 1
            v = v[:, None]
        want = 2 if k_axis else 1
        if v.ndim == want:
            v = np.broadcast_to(v, (n,) + v.shape)
        if v.ndim != want + 1 or v.shape[0] != n or v.shape[1] != p:
            raise InputShapeError(
                f"vectors have shape {given}; expected ({p},{' k' if k_axis else ''}) or "
                f"({n}, {p}{', k' if k_axis else ''})."
            )
        return v

    def _cotangents(self, u, k_axis: bool):
        n, m, _ = self.shape
        u = np.asarray(u, self.activation.dtype)
        given = u.shape  # errors name the shape the caller gave, not one made from it below
        if u.shape == self.activation.shape:
            u = u.reshape(n, m)
        if k_axis and u.shape == (n, m):  # one cotangent per example: a block of k = 1
            u = u[..., None]
        want = (n, m) + ((u.shape[-1],) if k_axis and u.ndim == 3 else ())
        if u.shape != want or (k_axis and u.ndim != 3):
            raise InputShapeError(
                f"cotangents have shape {given}; expected ({n}, {m}{', k' if k_axis else ''}) or "
                f"(examples,) + activation_shape{' (k = 1)' if k_axis else ''}."
            )
        return u

    def jvp(self, v) -> np.ndarray:
        """``(examples, M)``: J_n v for each example."""
        v = self._flat_vectors(v, False)
        return np.stack([np.asarray(_JVP(m, jnp.asarray(v[n]))) for n, m in enumerate(self._maps)])

    def vjp(self, u) -> np.ndarray:
        """``(examples, P)``: J_nᵀ u_n for each example; ``u`` is ``(examples, M)`` or shaped like the activation."""
        self._check_reverse()
        u = self._cotangents(u, False)
        return np.stack([np.asarray(_VJP(m, jnp.asarray(u[n]))) for n, m in enumerate(self._maps)])

    def matmat(self, V) -> np.ndarray:
        """``(examples, M, k)``: J_n V for a block ``V`` of ``k`` vectors, ``(P, k)`` or ``(examples, P, k)``
        (one vector ``(P,)``: ``k = 1``)."""
        V = self._flat_vectors(V, True)
        return np.stack([np.asarray(_MATMAT(m, jnp.asarray(V[n]))) for n, m in enumerate(self._maps)])

    def rmatmat(self, U) -> np.ndarray:
        """``(examples, P, k)``: J_nᵀ U_n for a block of ``k`` cotangents ``(examples, M, k)`` (one per example,
        ``(examples, M)`` or shaped like the activation: ``k = 1``)."""
        self._check_reverse()
        U = self._cotangents(U, True)
        return np.stack([np.asarray(_RMATMAT(m, jnp.asarray(U[n]))) for n, m in enumerate(self._maps)])

    def to_dense(self) -> np.ndarray:
        """``(examples, M, P)`` by products with the identity: the same matrix as :func:`layersens.jacobian`."""
        n, m, p = self.shape
        if m >= p or self._no_reverse is not None:
            return self.matmat(np.eye(p, dtype=self.activation.dtype))
        return np.swapaxes(self.rmatmat(np.broadcast_to(np.eye(m, dtype=self.activation.dtype), (n, m, m))), 1, 2)


@dataclasses.dataclass(frozen=True)
class _Map:
    """One example's linear map: a forward (``jax.linearize``) or reverse (``jax.vjp``) linearization, with the
    primal shapes its transpose needs."""

    linear: object
    forward: bool
    primal: jax.ShapeDtypeStruct
    output: jax.ShapeDtypeStruct

    def forward_fn(self):
        if self.forward:
            return self.linear
        return lambda v: jax.linear_transpose(lambda u: self.linear(u)[0], self.output)(v)[0]

    def reverse_fn(self):
        if not self.forward:
            return lambda u: self.linear(u)[0]
        return lambda u: jax.linear_transpose(self.linear, self.primal)(u)[0]


jax.tree_util.register_pytree_node(
    _Map, lambda m: ((m.linear,), (m.forward, m.primal, m.output)), lambda aux, children: _Map(children[0], *aux)
)

_JVP = jax.jit(lambda m, v: m.forward_fn()(v))
_VJP = jax.jit(lambda m, u: m.reverse_fn()(u))
_MATMAT = jax.jit(lambda m, V: jax.vmap(m.forward_fn(), in_axes=1, out_axes=1)(V))
_RMATMAT = jax.jit(lambda m, U: jax.vmap(m.reverse_fn(), in_axes=1, out_axes=1)(U))


def linearize(split, inputs) -> LinearizedLayer:
    """The Jacobian of ``split``'s layer for each example as a :class:`LinearizedLayer` (see the module
    docstring). Cost: one forward pass per example, and the memory of its residuals."""
    x = as_examples(split, inputs)
    limits = analyze(split).limits
    limits.check(split.param_names)
    forward = not limits.forward_blocked
    params = split.params

    def build(params, xn):
        theta, f = flat_function(split, params, xn)
        if forward:
            out, linear = jax.linearize(f, theta)
        else:
            out, linear = jax.vjp(f, theta)
        spec = lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype)  # noqa: E731
        return out, _Map(linear, forward, spec(theta), spec(out))

    compiled = jax.jit(build)
    maps, values = [], []
    for xn in x:
        out, m = compiled(params, xn)
        maps.append(m)
        values.append(np.asarray(out).reshape(split.activation_shape))
    blocked = next(iter(limits.reverse_blocked.values()), None)
    return LinearizedLayer(
        split=split,
        inputs=x,
        activation=np.stack(values),
        shape=(len(x), split.num_outputs, split.num_params),
        _maps=tuple(maps),
        _forward=forward,
        _no_reverse=blocked,
    )
