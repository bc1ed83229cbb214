"""The vectorized kernels: one chunk of Jacobian columns (forward) or rows (reverse) for one example.

Each kernel is a pure function ``(params, x, offset) -> block`` jitted once per chunk width; ``offset`` is traced,
so every chunk of every example reuses one compiled program. The identity basis of a chunk is built inside the
program from ``offset`` (``chunk × basis`` entries), never as a whole identity matrix.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from ._split import LayerSplit


def ravel_leaves(params: dict, names) -> tuple[jax.Array, Callable[[jax.Array], dict]]:
    """Concatenates the named leaves (in the given order) and returns the inverse."""
    shapes = [np.shape(params[n]) for n in names]
    sizes = [int(np.prod(s, dtype=np.int64)) for s in shapes]
    flat = jnp.concatenate([jnp.ravel(params[n]) for n in names])
    bounds = np.cumsum([0] + sizes)

    def unravel(vector):
        return {n: vector[a:b].reshape(s) for n, a, b, s in zip(names, bounds[:-1], bounds[1:], shapes)}

    return flat, unravel


def _one_hot_rows(offset, width: int, size: int, dtype):
    index = offset + jnp.arange(width)
    return (jnp.arange(size)[None, :] == index[:, None]).astype(dtype)


def forward_chunk(split: LayerSplit, names: tuple[str, ...], width: int):
    """``(params, x, offset) -> (M, width)``: columns ``offset .. offset+width`` of the block of ``names``."""

    def kernel(params, x, offset):
        theta, unravel = ravel_leaves(params, names)

        def g(t):
            return jnp.ravel(split.apply({**params, **unravel(t)}, x))

        basis = _one_hot_rows(offset, width, theta.size, theta.dtype)
        columns = jax.vmap(lambda v: jax.jvp(g, (theta,), (v,))[1])(basis)
        return columns.T

    return kernel


def reverse_chunk(split: LayerSplit, names: tuple[str, ...], width: int):
    """``(params, x, offset) -> (width, P_block)``: rows ``offset .. offset+width`` of the block of ``names``."""

    def kernel(params, x, offset):
        theta, unravel = ravel_leaves(params, names)

        def g(t):
            return jnp.ravel(split.apply({**params, **unravel(t)}, x))

        y, pullback = jax.vjp(g, theta)
        basis = _one_hot_rows(offset, width, y.size, y.dtype)
        return jax.vmap(pullback)(basis)[0]

    return kernel


def bytes_per_vector(split: LayerSplit, x, method: str, block_params: int) -> int:
    """Estimated working memory of one basis vector: a tangent (or cotangent) of every intermediate value of the
    forward pass, plus the vector's own output (a column of M, or a row of the block's parameters)."""
    closed = jax.make_jaxpr(split.apply)(split.params, x)
    total = 0
    for eqn in closed.jaxpr.eqns:
        for v in eqn.outvars:
            aval = v.aval
            if hasattr(aval, "shape") and hasattr(aval, "dtype"):
                total += int(np.prod(aval.shape, dtype=np.int64)) * np.dtype(aval.dtype).itemsize
    itemsize = np.dtype(split.activation_dtype).itemsize
    own = split.num_outputs if method == "fwd" else block_params
    return total + own * itemsize
