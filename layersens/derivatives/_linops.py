"""Per-example products with J_n (M × P) from one linearization, shared by the matrix-free analyses (spectrum,
empirical NTK, estimators): blocks of JVPs and VJPs as jitted device programs, exact passes by identity chunks,
and what an exact computation costs.

Each analysis takes a split and inputs, or a :class:`LinearizedLayer` already made (``inputs=None``), so that one
linearization serves several of them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from .._errors import InputShapeError
from ..planning import plan as make_plan
from ..planning import working_memory
from ._operator import LinearizedLayer, linearize

# One compiled program per (map structure, block width): J V and Jᵀ U for a block of vectors (vmapped).
_FWD = jax.jit(lambda m, V: jax.vmap(m.forward_fn(), in_axes=1, out_axes=1)(V))
_REV = jax.jit(lambda m, U: jax.vmap(m.reverse_fn(), in_axes=1, out_axes=1)(U))


def operator(split, inputs) -> LinearizedLayer:
    """``split`` linearized at ``inputs``, or ``split`` itself when it is a :class:`LinearizedLayer` (then
    ``inputs`` must be ``None``)."""
    if isinstance(split, LinearizedLayer):
        if inputs is not None:
            raise InputShapeError(
                "a LinearizedLayer already holds its inputs; pass inputs=None (or pass the split and the inputs)."
            )
        return split
    if inputs is None:
        raise InputShapeError("give the inputs (examples,) + input_shape, or a LinearizedLayer as the first argument.")
    return linearize(split, inputs)


class Products:
    """J_n V and J_nᵀ U of one example ``n`` of ``op``, as host arrays in the layer's dtype."""

    def __init__(self, op: LinearizedLayer, n: int):
        self.op, self.map = op, op._maps[n]
        _, self.m, self.p = op.shape
        self.dtype = op.activation.dtype

    def jmat(self, V) -> np.ndarray:
        """``(M, k)``: J V for ``V`` of shape ``(P, k)``."""
        return np.asarray(_FWD(self.map, jnp.asarray(V, self.dtype)))

    def jtmat(self, U) -> np.ndarray:
        """``(P, k)``: Jᵀ U for ``U`` of shape ``(M, k)``."""
        self.op._check_reverse()
        return np.asarray(_REV(self.map, jnp.asarray(U, self.dtype)))

    def chunks(self, max_memory=None):
        """J by chunks of the identity on its shorter side: yields ``(where, block)``, ``block`` being
        ``J[:, where]`` ``(M, w)`` (JVPs) when ``P <= M`` or J has no reverse products, else ``J[where, :]ᵀ``
        ``(P, w)`` (VJPs). ``min(M, P)`` passes in all."""
        side = self.p if self.p <= self.m or self.op._no_reverse is not None else self.m
        width = chunk_width(self.op, side, max_memory)
        for start in range(0, side, width):
            stop = min(side, start + width)
            basis = np.zeros((side, stop - start), self.dtype)
            basis[np.arange(start, stop), np.arange(stop - start)] = 1
            yield slice(start, stop), (self.jmat(basis) if side == self.p else self.jtmat(basis))

    def dense(self, max_memory=None) -> np.ndarray:
        """``(M, P)``: J_n itself, by ``min(M, P)`` products (for small sides)."""
        out = np.empty((self.m, self.p), self.dtype)
        by_columns = self.p <= self.m or self.op._no_reverse is not None
        for where, block in self.chunks(max_memory):
            if by_columns:
                out[:, where] = block
            else:
                out[where, :] = block.T
        return out


def chunk_width(op: LinearizedLayer, basis: int, max_memory=None) -> int:
    """Basis vectors per vmapped block: the working-memory budget over one vector's input, output and
    intermediates (taken as three times M + P values)."""
    _, m, p = op.shape
    budget = working_memory(max_memory, jax.default_backend())
    per_vector = 3 * (m + p) * op.activation.dtype.itemsize
    return int(max(1, min(basis, budget // per_vector)))


def plan_passes(split, inputs) -> int:
    """Passes per example of ``layersens.jacobian`` and ``layersens.compute.sensitivity`` under ``Auto``: the basis
    sizes of its plan (channel colouring counted: 12 for LeNet's relu1 instead of its 240 columns; a
    channel-separated block one per within-channel index)."""
    return int(sum(b.method.passes(split, b.names) for b in make_plan(split, inputs[:1]).blocks))


def exact_passes(op: LinearizedLayer) -> int:
    """Passes per example of the exact column and row norms of ``op``'s J (:func:`plan_passes`)."""
    return plan_passes(op.split, op.inputs)
