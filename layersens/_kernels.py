"""The vectorized kernels: each computes one chunk of one block of one example's ``(M, P)`` Jacobian.

A :class:`Kernel` computes chunks of ``width`` basis vectors starting at ``offset`` (traced, so one compiled
program serves every chunk of every example) on the device: dense sub-blocks for ``fwd``/``rev``, and for the
colouring methods only the nonzero values, in compressed form. Its ``place`` writes them on the host into one
example's ``(M, P)`` matrix, which starts as zeros: fresh zeroed memory costs only its page faults, so a block
that is mostly zeros is written once, and only where it is nonzero (through a strided view of its diagonal).
A block of several chunks linearizes once per example and applies that linear map chunk by chunk. A chunk
builds its identity basis from ``offset`` inside the program (``width × basis`` entries), never a whole identity
matrix.

Methods (M outputs, P_b parameters in the block, C channels, W = P_leaf / C, S = M / C):

* ``fwd``  — JVPs along parameter basis vectors: P_b passes; gives (M, width) columns.
* ``rev``  — pullbacks of output basis vectors: M passes; gives (width, P_b) rows.
* ``fwd-colour`` — channel-diagonal leaves (same C, same layer axis, adjacent columns): a JVP along "within-channel
  index w, every channel" gives column (w, c) on the rows of channel c for all c at once: W passes. Only those
  values leave the device; they land on the channel diagonal of the block's columns.
* ``rev-colour`` — channel-diagonal leaves whose channel is the layer's last axis: a pullback of "position s,
  every channel" gives row (s, c) on channel c's slice of each leaf: S passes shared by all the block's leaves.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

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


def leaf_size(split: LayerSplit, name: str) -> int:
    return int(np.prod(np.shape(split.params[name]), dtype=np.int64))


def contiguous_runs(split: LayerSplit, names) -> list[tuple[str, ...]]:
    """``names`` split into runs whose columns are adjacent in the Jacobian (in column order)."""
    starts = column_starts(split)
    runs: list[list[str]] = []
    for name in sorted(names, key=starts.get):
        if runs and starts[runs[-1][-1]] + leaf_size(split, runs[-1][-1]) == starts[name]:
            runs[-1].append(name)
        else:
            runs.append([name])
    return [tuple(r) for r in runs]


def place_diagonal(matrix: np.ndarray, row: int, column: int, row_shape, channel_axis: int, values: np.ndarray):
    """Writes ``values`` (``row_shape + (W,)``) onto the channel diagonal of a block of ``matrix`` (C-contiguous,
    ``(M, P)``) that starts at ``(row, column)``, whose rows are laid out as ``row_shape`` and whose columns as
    ``(W, C)``: entry ``(r, (w, c))`` with ``r[channel_axis] == c`` gets ``values[r + (w,)]``."""
    item = matrix.itemsize
    num_params = matrix.shape[1]
    C = row_shape[channel_axis]
    row_strides = [int(np.prod(row_shape[a + 1:], dtype=np.int64)) * num_params * item for a in range(len(row_shape))]
    row_strides[channel_axis] += item  # moving one channel down the rows moves one column right
    flat = matrix.reshape(-1)
    start = row * num_params + column
    view = np.lib.stride_tricks.as_strided(
        flat[start:], shape=tuple(row_shape) + (values.shape[-1],), strides=tuple(row_strides) + (C * item,))
    view[...] = values


def basis_size(split: LayerSplit, method: str, names, structure) -> int:
    if method == "fwd":
        return sum(leaf_size(split, n) for n in names)
    if method == "rev":
        return split.num_outputs
    if method == "fwd-colour":
        return sum(leaf_size(split, k) // structure[k].channels for k in names)
    return split.num_outputs // structure[names[0]].channels  # rev-colour


@dataclasses.dataclass(frozen=True)
class Kernel:
    """One block's chunk, computed on the device and placed on the host.

    ``compute(params, x, offset) -> outputs`` computes one chunk in one program. For blocks of several chunks,
    ``linearize(params, x)`` returns the example's linear map (a pytree holding the forward pass's residuals) and
    ``chunk(linear, offset)`` applies it to one chunk of the basis, so the forward pass runs once per example,
    not once per chunk. ``place(matrix, offset, outputs)`` writes a chunk into the example's zeroed matrix on the
    host; ``expand(outputs) -> [(column, block)]``, traceable, gives a chunk spanning the whole block as dense
    full-height column blocks (see :func:`make_dense`)."""

    compute: Callable
    linearize: Callable
    chunk: Callable
    place: Callable
    expand: Callable
    num_outputs: int


def _expand_diagonal(values, row_shape, channel_axis: int):
    """The dense block that :func:`place_diagonal` fills, built on the device: ``(prod(row_shape), W × C)``."""
    C = row_shape[channel_axis]
    full = tuple(row_shape) + (values.shape[-1], C)
    same_channel = lax.broadcasted_iota(jnp.int32, full, channel_axis) == lax.broadcasted_iota(
        jnp.int32, full, len(full) - 1)
    return jnp.where(same_channel, values[..., None], 0).reshape(int(np.prod(row_shape)), -1)


def make_kernel(split: LayerSplit, method: str, names: tuple[str, ...], structure, width: int):
    """The kernel of one block and chunk width; see the module docstring."""
    starts = column_starts(split)
    act_shape = split.activation_shape
    M = split.num_outputs
    # A chunk spanning the whole basis builds it from a constant offset: XLA then sees a constant one-hot basis
    # and simplifies the tangents (measured 5× faster for relu1's 240 dense JVPs than with a traced offset).
    whole = width >= basis_size(split, method, names, structure)

    leaf_dtype = np.dtype(split.params[names[0]].dtype)
    act_dtype = np.dtype(split.activation_dtype)

    def basis_rows(offset, size, dtype):
        return one_hot_rows(0 if whole else offset, width, size, dtype)

    if method == "fwd":
        size = sum(leaf_size(split, k) for k in names)

        def setup(params, x):
            theta, unravel = ravel_leaves(params, names)
            return (lambda t: jnp.ravel(split.apply({**params, **unravel(t)}, x))), theta

        def chunk(push, offset):
            return (jax.vmap(push)(basis_rows(offset, size, leaf_dtype)).T,)

        def place(matrix, offset, outputs):
            column = starts[names[0]] + offset
            matrix[:, column:column + width] = outputs[0]

        def expand(outputs):
            return [(starts[names[0]], outputs[0])]

    elif method == "rev":
        def setup(params, x):
            return (lambda block: jnp.ravel(split.apply({**params, **block}, x))), {k: params[k] for k in names}

        def chunk(pull, offset):
            rows = jax.vmap(pull)(basis_rows(offset, M, act_dtype))[0]
            return tuple(rows[k].reshape(width, -1) for k in names)

        def place(matrix, offset, outputs):
            for k, block in zip(names, outputs):
                matrix[offset:offset + width, starts[k]:starts[k] + block.shape[1]] = block

        def expand(outputs):
            return [(starts[k], block) for k, block in zip(names, outputs)]

    elif method == "fwd-colour":
        shapes = {k: np.shape(split.params[k]) for k in names}
        C, axis = structure[names[0]].channels, structure[names[0]].output_axis
        within = [leaf_size(split, k) // C for k in names]
        bounds = np.cumsum([0] + within)
        if any((structure[k].channels, structure[k].output_axis) != (C, axis) for k in names) or (
                len(contiguous_runs(split, names)) > 1):
            raise ValueError(f"a colouring block needs adjacent leaves of one channel axis: {names}")
        if len(names) > 1 and width != bounds[-1]:
            raise ValueError("a colouring block of several leaves is computed in one chunk")

        def setup(params, x):
            def g(s):  # every channel of each leaf moves by s: a JVP along e_w is column (w, c) for all c
                moved = {k: params[k] + s[a:b].reshape(shapes[k][:-1] + (1,))
                         for k, a, b in zip(names, bounds[:-1], bounds[1:])}
                return split.apply({**params, **moved}, x)

            return g, jnp.zeros(int(bounds[-1]), leaf_dtype)

        def chunk(push, offset):
            compressed = jax.vmap(push)(basis_rows(offset, int(bounds[-1]), leaf_dtype))  # (width, *act)
            return (jnp.moveaxis(compressed, 0, -1),)  # (*act, width): the channel diagonal's layout

        def place(matrix, offset, outputs):
            place_diagonal(matrix, 0, starts[names[0]] + offset * C, act_shape, axis, outputs[0])

        def expand(outputs):
            return [(starts[names[0]], _expand_diagonal(outputs[0], act_shape, axis))]

    elif method == "rev-colour":
        C = structure[names[0]].channels
        S = M // C
        runs = contiguous_runs(split, names)

        def setup(params, x):
            return (lambda block: split.apply({**params, **block}, x).reshape(S, C)), {k: params[k] for k in names}

        def chunk(pull, offset):
            basis = basis_rows(offset, S, act_dtype)  # position s, every channel
            grads = jax.vmap(pull)(jnp.broadcast_to(basis[:, :, None], (width, S, C)))[0]
            # Adjacent leaves' columns continue one another: one (width, C, W_run) diagonal per run.
            return tuple(jnp.concatenate([grads[k].reshape(width, -1, C) for k in run], axis=1).swapaxes(1, 2)
                         for run in runs)

        def place(matrix, offset, outputs):
            for run, values in zip(runs, outputs):
                place_diagonal(matrix, offset * C, starts[run[0]], (width, C), 1, values)

        def expand(outputs):
            return [(starts[run[0]], _expand_diagonal(values, (width, C), 1)) for run, values in zip(runs, outputs)]

    else:
        raise ValueError(f"unknown method {method!r}")

    if method in ("fwd", "fwd-colour"):
        def linearize(params, x):
            g, point = setup(params, x)
            return jax.linearize(g, point)[1]

        def compute(params, x, offset):  # in one program, JVPs of the function itself (XLA fuses them better)
            g, point = setup(params, x)
            return chunk(lambda v: jax.jvp(g, (point,), (v,))[1], offset)
    else:
        def linearize(params, x):
            g, point = setup(params, x)
            return jax.vjp(g, point)[1]

        def compute(params, x, offset):
            return chunk(linearize(params, x), offset)

    outputs = {"rev": len(names), "rev-colour": len(contiguous_runs(split, names))}.get(method, 1)
    return Kernel(compute, linearize, chunk, place, expand, outputs)


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
    """Estimated device memory of one basis vector: ``intermediates`` (see :func:`intermediate_bytes`) plus what
    the vector returns (a column of M, a row of the block, or one colour's values)."""
    total = intermediates
    itemsize = np.dtype(split.activation_dtype).itemsize
    block_params = sum(leaf_size(split, k) for k in names)
    if method in ("fwd", "fwd-colour"):
        own = split.num_outputs  # a dense column, or a compressed one (expanded on the host)
    else:
        own = block_params  # a dense row of the block, or the leaves' gradients of one colour
    if method == "fwd-colour":
        total += block_params  # the broadcast tangent of the leaves
    return total + own * itemsize


def make_fused(kernels) -> Kernel:
    """One program computing every block of one example, for plans whose blocks each fit in one chunk: one
    dispatch per example, and XLA shares the primal pass between blocks."""

    def compute(params, x, offset):
        return tuple(o for k in kernels for o in k.compute(params, x, offset))

    def split_outputs(outputs):
        at = 0
        for k in kernels:
            yield k, outputs[at:at + k.num_outputs]
            at += k.num_outputs

    def place(matrix, offset, outputs):
        for k, own in split_outputs(outputs):
            k.place(matrix, offset, own)

    def expand(outputs):
        return [piece for k, own in split_outputs(outputs) for piece in k.expand(own)]

    return Kernel(compute, None, None, place, expand, sum(k.num_outputs for k in kernels))


def make_dense(split: LayerSplit, kernel: Kernel):
    """``dense(params, x) -> (M, P)``: one example's Jacobian for a kernel spanning every column in one chunk: the
    whole matrix as one program output. Where device memory is host memory (CPU) and the matrix is small, this
    writes each entry once into memory XLA reuses from call to call, instead of zeroing a host array and then
    placing the nonzeros into it."""
    dtype = split.activation_dtype

    def dense(params, x):
        pieces = sorted(kernel.expand(kernel.compute(params, x, 0)), key=lambda p: p[0])
        blocks = [block.astype(dtype) for _, block in pieces]
        return blocks[0] if len(blocks) == 1 else jnp.concatenate(blocks, axis=1)

    return dense
