"""The vectorized kernels. Each writes one chunk of one block of the Jacobian of one example into the result.

A kernel is ``update(params, x, buf, n, offset) -> buf``: it computes a chunk of ``width`` basis vectors starting
at ``offset`` and writes it with ``dynamic_update_slice`` into ``buf`` (examples, M, P), which is donated, so the
write happens in place and nothing is copied afterwards. ``n`` and ``offset`` are traced: one compiled program
serves every chunk of every example. A chunk builds its identity basis from ``offset`` inside the program
(``width × basis`` entries), never a whole identity matrix.

Methods (M outputs, P_b parameters in the block, C channels, W = P_leaf / C, S = M / C):

* ``fwd``  — JVPs along parameter basis vectors: P_b passes; writes (M, width) columns.
* ``rev``  — pullbacks of output basis vectors: M passes; writes (width, P_b) rows.
* ``fwd-colour`` — one channel-diagonal leaf: a JVP along "within-channel index w, every channel" gives column
  (w, c) on the rows of channel c for all c at once: W passes. The dense columns are expanded from that
  compressed block with a mask (a write of mostly zeros, bound by memory bandwidth).
* ``rev-colour`` — channel-diagonal leaves whose channel is the layer's last axis: a pullback of "position s,
  every channel" gives row (s, c) on channel c's slice of each leaf: S passes shared by all the block's leaves.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ._split import LayerSplit


def ravel_leaves(params: dict, names):
    """Concatenates the named leaves (in the given order) and returns the inverse."""
    shapes = [np.shape(params[n]) for n in names]
    sizes = [int(np.prod(s, dtype=np.int64)) for s in shapes]
    flat = jnp.concatenate([jnp.ravel(params[n]) for n in names])
    bounds = np.cumsum([0] + sizes)

    def unravel(vector):
        return {n: vector[a:b].reshape(s) for n, a, b, s in zip(names, bounds[:-1], bounds[1:], shapes)}

    return flat, unravel


def one_hot_rows(offset, width: int, size: int, dtype):
    index = offset + jnp.arange(width)
    return (jnp.arange(size)[None, :] == index[:, None]).astype(dtype)


def column_starts(split: LayerSplit) -> dict[str, int]:
    starts, start = {}, 0
    for name, shape in zip(split.param_names, split.param_shapes):
        starts[name] = start
        start += int(np.prod(shape, dtype=np.int64))
    return starts


def _write(buf, block, n, row, col):
    start = tuple(jnp.asarray(i, jnp.int32) for i in (n, row, col))
    return lax.dynamic_update_slice(buf, block[None].astype(buf.dtype), start)


def basis_size(split: LayerSplit, method: str, names, structure) -> int:
    sizes = {n: int(np.prod(np.shape(split.params[n]), dtype=np.int64)) for n in names}
    if method == "fwd":
        return sum(sizes.values())
    if method == "rev":
        return split.num_outputs
    if method == "fwd-colour":
        return sum(sizes[k] // structure[k].channels for k in names)
    return split.num_outputs // structure[names[0]].channels  # rev-colour


def make_update(split: LayerSplit, method: str, names: tuple[str, ...], structure, width: int):
    starts = column_starts(split)
    act_shape = split.activation_shape
    M = split.num_outputs

    if method == "fwd":
        def update(params, x, buf, n, offset):
            theta, unravel = ravel_leaves(params, names)

            def g(t):
                return jnp.ravel(split.apply({**params, **unravel(t)}, x))

            basis = one_hot_rows(offset, width, theta.size, theta.dtype)
            columns = jax.vmap(lambda v: jax.jvp(g, (theta,), (v,))[1])(basis)
            return _write(buf, columns.T, n, 0, starts[names[0]] + offset)

    elif method == "rev":
        def update(params, x, buf, n, offset):
            def g(block):
                return jnp.ravel(split.apply({**params, **block}, x))

            y, pullback = jax.vjp(g, {k: params[k] for k in names})
            rows = jax.vmap(pullback)(one_hot_rows(offset, width, y.size, y.dtype))[0]
            for k in names:
                buf = _write(buf, rows[k].reshape(width, -1), n, offset, starts[k])
            return buf

    elif method == "fwd-colour":
        shapes = {k: np.shape(split.params[k]) for k in names}
        within = [int(np.prod(shapes[k][:-1], dtype=np.int64)) for k in names]
        bounds = np.cumsum([0] + within)
        if len(names) > 1 and width != bounds[-1]:
            raise ValueError("a colouring block of several leaves is computed in one chunk")

        def update(params, x, buf, n, offset):
            def g(s):  # every channel of each leaf moves by s: a JVP along e_w is column (w, c) for all c
                moved = {k: params[k] + s[a:b].reshape(shapes[k][:-1] + (1,))
                         for k, a, b in zip(names, bounds[:-1], bounds[1:])}
                return split.apply({**params, **moved}, x)

            s0 = jnp.zeros(int(bounds[-1]), params[names[0]].dtype)
            basis = one_hot_rows(offset, width, s0.size, s0.dtype)
            compressed = jax.vmap(lambda v: jax.jvp(g, (s0,), (v,))[1])(basis)  # (width, *act)
            blocks = []
            for k, a, b in zip(names, bounds[:-1], bounds[1:]):
                C, axis = structure[k].channels, structure[k].output_axis
                part = compressed if len(names) == 1 else compressed[a:b]
                values = jnp.moveaxis(part, 0, -1)[..., None]  # (*act, w, 1)
                full = act_shape + (part.shape[0], C)
                same_channel = lax.broadcasted_iota(jnp.int32, full, axis) == lax.broadcasted_iota(
                    jnp.int32, full, len(full) - 1)
                blocks.append(jnp.where(same_channel, values, 0).reshape(M, part.shape[0] * C))
            for k, block in zip(names, blocks):
                buf = _write(buf, block, n, 0, starts[k] + offset * structure[k].channels)
            return buf

    elif method == "rev-colour":
        C = structure[names[0]].channels
        S = M // C

        def update(params, x, buf, n, offset):
            def g(block):
                return split.apply({**params, **block}, x).reshape(S, C)

            y, pullback = jax.vjp(g, {k: params[k] for k in names})
            basis = one_hot_rows(offset, width, S, y.dtype)  # position s, every channel
            grads = jax.vmap(pullback)(jnp.broadcast_to(basis[:, :, None], (width, S, C)))[0]
            for k in names:
                W = int(np.prod(np.shape(params[k])[:-1], dtype=np.int64))
                values = grads[k].reshape(width, 1, W, C)
                full = (width, C, W, C)
                same_channel = lax.broadcasted_iota(jnp.int32, full, 1) == lax.broadcasted_iota(jnp.int32, full, 3)
                block = jnp.where(same_channel, values, 0).reshape(width * C, W * C)
                buf = _write(buf, block, n, offset * C, starts[k])
            return buf

    else:
        raise ValueError(f"unknown method {method!r}")
    return update


def intermediate_bytes(split: LayerSplit, x) -> int:
    """Bytes of every intermediate value of one example's forward pass: what one tangent or cotangent carries."""
    closed = jax.make_jaxpr(split.apply)(split.params, x)
    total = 0
    for eqn in closed.jaxpr.eqns:
        for v in eqn.outvars:
            aval = v.aval
            if hasattr(aval, "shape") and hasattr(aval, "dtype"):
                total += int(np.prod(aval.shape, dtype=np.int64)) * np.dtype(aval.dtype).itemsize
    return total


def bytes_per_vector(split: LayerSplit, intermediates: int, method: str, names, structure) -> int:
    """Estimated working memory of one basis vector: ``intermediates`` (see :func:`intermediate_bytes`) plus what
    the vector writes (a column of M, a row of the block, or a colour group's share)."""
    total = intermediates
    itemsize = np.dtype(split.activation_dtype).itemsize
    block_params = sum(int(np.prod(np.shape(split.params[k]), dtype=np.int64)) for k in names)
    if method == "fwd":
        own = split.num_outputs
    elif method == "rev":
        own = block_params
    elif method == "fwd-colour":
        own = split.num_outputs * max(structure[k].channels for k in names)  # expanded columns of one colour
        total += block_params  # the broadcast tangent of the leaves
    else:
        channels = structure[names[0]].channels
        own = block_params * channels
    return total + own * itemsize


def make_fused(split: LayerSplit, blocks, structure):
    """One program running every block of one example in a single chunk: one dispatch, and XLA shares the
    primal pass between blocks."""
    updates = [make_update(split, b.method, b.names, structure, b.width) for b in blocks]

    def update_all(params, x, buf, n, offset):
        for update in updates:
            buf = update(params, x, buf, n, offset)
        return buf

    return update_all
