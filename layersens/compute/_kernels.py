"""The device programs that carry out each method (``planning``'s ``Method`` classes say what they cost; this
table says how they run): ``KERNELS[type(method)](split, names, width) -> Kernel``, registered next to each
builder.

Chunks take their basis from a traced ``offset`` (one compiled program serves every chunk), except a chunk
spanning the whole basis, which builds it from a constant: XLA then sees a constant one-hot basis and simplifies
the tangents (measured 5× faster for relu1's 240 dense JVPs than with a traced offset). A block of several chunks
linearizes once per example and applies the linear map chunk by chunk.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import TYPE_CHECKING, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ..analysis import ChannelStructure
from ..models import ravel_leaves
from ..planning import (
    ColumnColouring,
    DenseForward,
    DenseReverse,
    Method,
    RowColouring,
    SeparatedForward,
    SeparatedForwardFirst,
    colour_runs,
    column_starts,
    contiguous_runs,
    leaf_size,
)
from ._blocks import JacobianBlock, Layout
from ._separated import Separated, separated_columns

if TYPE_CHECKING:
    from ..tracing import LayerSplit


@dataclasses.dataclass(frozen=True)
class Kernel:
    """One block's device programs for chunks of one width, and how their values become blocks.

    ``compute(params, x, offset)`` computes one chunk in one program. For blocks of several chunks,
    ``linearize(params, x)`` returns the example's linear map (a pytree holding the forward pass's residuals)
    and ``chunk(linear, offset)`` applies it to one chunk, so the forward pass runs once per example.
    ``blocks(n, offset, outputs)`` turns a chunk's host values for example ``n`` into :class:`JacobianBlock` s;
    ``expand(outputs)``, traceable, gives a chunk spanning the whole block as dense full-height
    ``(column, block)`` pieces.
    """

    compute: Callable
    linearize: Callable | None
    chunk: Callable | None
    blocks: Callable[[int, int, list], list[JacobianBlock]]
    expand: Callable
    num_outputs: int


# builder(split, names, width, structure): ``structure`` is the split's channel structure (``analysis``), given
# rather than looked up so that a kept plan can hold its split weakly (see ``_cache``).
KernelBuilder = Callable[["LayerSplit", tuple[str, ...], int, Mapping[str, ChannelStructure]], Kernel]
KERNELS: dict[type[Method], KernelBuilder] = {}


def kernel(
    method: Method, split: LayerSplit, names: Sequence[str], width: int, structure: Mapping[str, ChannelStructure]
) -> Kernel:
    """The device programs of ``method`` for the leaves ``names`` in chunks of ``width`` basis vectors."""
    return KERNELS[type(method)](split, tuple(names), width, structure)


def one_hot_rows(offset, width: int, size: int, dtype):
    """Rows ``offset .. offset + width`` of the ``size × size`` identity, built in the program."""
    index = offset + jnp.arange(width)
    return (jnp.arange(size)[None, :] == index[:, None]).astype(dtype)


def _with_linearization(forward: bool, setup, chunk):
    """``linearize``/``compute`` of a method from its ``setup(params, x) -> (g, point)`` and ``chunk``."""
    if forward:

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

    return linearize, compute


def _expand_diagonal(values, row_shape, channel_axis: int, channel_last: bool = True):
    """The dense block a channel diagonal fills, built on the device: ``(prod(row_shape), W × C)``, its columns
    ``(w, c)`` (``channel_last``) or ``(c, w)`` (a leaf whose channel axis is its first)."""
    C, W = row_shape[channel_axis], values.shape[-1]
    # built in the columns' own order: a transpose after the select would be one more pass over the block
    full = tuple(row_shape) + ((W, C) if channel_last else (C, W))
    column_channel = len(full) - 1 if channel_last else len(full) - 2
    same_channel = lax.broadcasted_iota(jnp.int32, full, channel_axis) == lax.broadcasted_iota(
        jnp.int32, full, column_channel
    )
    spread = values[..., None] if channel_last else values[..., None, :]
    return jnp.where(same_channel, spread, 0).reshape(int(np.prod(row_shape)), -1)


def _check_colour_block(split: LayerSplit, names, structure, what: str) -> None:
    """A colouring block's leaves continue one another's ``(w, c)`` columns: adjacent, one channel count, each
    with its channel last; a leaf whose channel axis is its first has ``(c, w)`` columns, and a block of its own."""
    first = structure[names[0]]
    if (
        any(structure[k].channels != first.channels for k in names)
        or len(contiguous_runs(split, names)) > 1
        or (len(names) > 1 and not all(structure[k].channel_last for k in names))
    ):
        raise ValueError(f"a {what} block needs adjacent channel-last leaves of one channel count: {names}")


def _one_channel(shape, channel_last: bool) -> tuple[int, ...]:
    """A leaf's ``shape`` with its channel axis (its last, or its first) 1: a within-channel tangent broadcast
    over it moves every channel alike."""
    shape = tuple(shape)
    return shape[:-1] + (1,) if channel_last else (1,) + shape[1:]


def dense_forward_kernel(split: LayerSplit, names: tuple[str, ...], width: int, structure) -> Kernel:
    size = sum(leaf_size(split, n) for n in names)
    whole = width >= size
    start = column_starts(split)[names[0]]
    dtype = np.dtype(split.params[names[0]].dtype)

    def setup(params, x):
        params = split.point(params, x)  # the parameters, or this example's input or activation
        theta, unravel = ravel_leaves(params, names)
        return (lambda t: jnp.ravel(split.apply({**params, **unravel(t)}, x))), theta

    def chunk(push, offset):
        return (jax.vmap(push)(one_hot_rows(0 if whole else offset, width, size, dtype)).T,)

    def blocks(n, offset, outputs):
        return [JacobianBlock(n, Layout.COLUMNS, names, offset, outputs[0])]

    linearize, compute = _with_linearization(True, setup, chunk)
    return Kernel(compute, linearize, chunk, blocks, lambda outputs: [(start, outputs[0])], 1)


KERNELS[DenseForward] = dense_forward_kernel


def dense_reverse_kernel(split: LayerSplit, names: tuple[str, ...], width: int, structure) -> Kernel:
    M = split.num_outputs
    whole = width >= M
    starts = column_starts(split)
    dtype = np.dtype(split.activation_dtype)

    def setup(params, x):
        params = split.point(params, x)  # the parameters, or this example's input or activation
        return (lambda block: jnp.ravel(split.apply({**params, **block}, x))), {k: params[k] for k in names}

    def chunk(pull, offset):
        rows = jax.vmap(pull)(one_hot_rows(0 if whole else offset, width, M, dtype))[0]
        return tuple(rows[k].reshape(width, -1) for k in names)

    def blocks(n, offset, outputs):
        return [JacobianBlock(n, Layout.ROWS, (name,), offset, rows) for name, rows in zip(names, outputs)]

    linearize, compute = _with_linearization(False, setup, chunk)
    return Kernel(
        compute,
        linearize,
        chunk,
        blocks,
        lambda outputs: [(starts[k], block) for k, block in zip(names, outputs)],
        len(names),
    )


KERNELS[DenseReverse] = dense_reverse_kernel


def column_colouring_kernel(split: LayerSplit, names: tuple[str, ...], width: int, structure) -> Kernel:
    axis = structure[names[0]].output_axis
    _check_colour_block(split, names, structure, "colouring")
    if any(structure[k].output_axis != axis for k in names):
        raise ValueError(f"a colouring block needs leaves of one layer channel axis: {names}")
    channel_last = structure[names[0]].channel_last
    bounds = np.cumsum([0] + [leaf_size(split, k) // structure[k].channels for k in names])
    if len(names) > 1 and width != bounds[-1]:
        raise ValueError("a colouring block of several leaves is computed in one chunk")
    whole = width >= int(bounds[-1])
    shapes = {k: np.shape(split.params[k]) for k in names}
    dtype = np.dtype(split.params[names[0]].dtype)
    act_shape = split.activation_shape
    start = column_starts(split)[names[0]]

    def setup(params, x):
        params = split.point(params, x)  # the parameters, or this example's input or activation

        def g(s):  # every channel of each leaf moves by s: a JVP along e_w is column (w, c) for all c
            moved = {
                k: params[k] + s[a:b].reshape(_one_channel(shapes[k], structure[k].channel_last))
                for k, a, b in zip(names, bounds[:-1], bounds[1:])
            }
            return split.apply({**params, **moved}, x)

        return g, jnp.zeros(int(bounds[-1]), dtype)

    def chunk(push, offset):
        compressed = jax.vmap(push)(one_hot_rows(0 if whole else offset, width, int(bounds[-1]), dtype))
        return (jnp.moveaxis(compressed, 0, -1),)  # (*act, width): the channel diagonal's layout

    def blocks(n, offset, outputs):
        return [JacobianBlock(n, Layout.CHANNEL_COLUMNS, names, offset, outputs[0])]

    linearize, compute = _with_linearization(True, setup, chunk)
    return Kernel(
        compute,
        linearize,
        chunk,
        blocks,
        lambda outputs: [(start, _expand_diagonal(outputs[0], act_shape, axis, channel_last))],
        1,
    )


KERNELS[ColumnColouring] = column_colouring_kernel


def row_colouring_kernel(split: LayerSplit, names: tuple[str, ...], width: int, structure) -> Kernel:
    C = structure[names[0]].channels
    S = split.num_outputs // C
    whole = width >= S
    runs = colour_runs(split, names, structure)
    for run in runs:
        _check_colour_block(split, run, structure, "row colouring")
    starts = column_starts(split)
    dtype = np.dtype(split.activation_dtype)

    def setup(params, x):
        params = split.point(params, x)  # the parameters, or this example's input or activation
        return (lambda block: split.apply({**params, **block}, x).reshape(S, C)), {k: params[k] for k in names}

    def by_within(grad, k):  # (width, W, C) of one leaf, whichever its channel axis
        last = structure[k].channel_last
        return grad.reshape(width, -1, C) if last else grad.reshape(width, C, -1).swapaxes(1, 2)

    def chunk(pull, offset):
        basis = one_hot_rows(0 if whole else offset, width, S, dtype)  # position s, every channel
        grads = jax.vmap(pull)(jnp.broadcast_to(basis[:, :, None], (width, S, C)))[0]
        # Adjacent leaves' columns continue one another: one (width, C, W_run) diagonal per run.
        return tuple(jnp.concatenate([by_within(grads[k], k) for k in run], axis=1).swapaxes(1, 2) for run in runs)

    def blocks(n, offset, outputs):
        return [JacobianBlock(n, Layout.CHANNEL_ROWS, run, offset, values) for run, values in zip(runs, outputs)]

    linearize, compute = _with_linearization(False, setup, chunk)
    return Kernel(
        compute,
        linearize,
        chunk,
        blocks,
        lambda outputs: [
            (starts[run[0]], _expand_diagonal(values, (width, C), 1, structure[run[0]].channel_last))
            for run, values in zip(runs, outputs)
        ],
        len(runs),
    )


KERNELS[RowColouring] = row_colouring_kernel


def separated_forward_kernel(
    split: LayerSplit, names: tuple[str, ...], width: int, structure, leaf_axis: int = -1
) -> Kernel:
    """Columns of leaves with C channels (along each leaf's ``leaf_axis``: -1, its last, or 0, its first),
    ``width`` (a multiple of C) at a time: ``width / C`` within-channel indices pushed forward channel-separated
    (``_separated``). Along the first axis a leaf's columns are ``(c, w)``: a chunk is handed over in basis order
    (``Layout.FIRST_AXIS_COLUMNS``), the whole leaf in its own column order."""
    shapes = [tuple(np.shape(split.params[k])) for k in names]
    C = shapes[0][leaf_axis]
    if (
        any(s[leaf_axis] != C for s in shapes)
        or len(contiguous_runs(split, names)) > 1
        or width % C
        or (leaf_axis == 0 and len(names) > 1)
    ):
        raise ValueError(
            f"a separated block needs adjacent leaves of one channel count (along the first axis, one leaf), "
            f"chunks of whole channels: {names}"
        )
    spreads = [_one_channel(s, leaf_axis == -1) for s in shapes]
    bounds = np.cumsum([0] + [int(np.prod(s, dtype=np.int64)) for s in spreads])
    basis = int(bounds[-1]) * C
    whole = width >= basis
    colours = width // C
    dtype = np.dtype(split.params[names[0]].dtype)
    start = column_starts(split)[names[0]]
    specs = [jax.ShapeDtypeStruct(s, dtype) for s in shapes]

    def setup(params, x):
        params = split.point(params, x)  # the parameters, or this example's input or activation
        return (lambda *leaves: split.apply({**params, **dict(zip(names, leaves))}, x)), [params[k] for k in names]

    def linearize(params, x):
        g, primals = setup(params, x)
        return jax.linearize(g, *primals)[1]

    def chunk(linear, offset):
        index = (0 if whole else offset // C) + jnp.arange(colours)  # the chunk's within-channel indices
        tangents = []
        for shape, spread, a, b in zip(shapes, spreads, bounds[:-1], bounds[1:]):
            one_hot = (index[:, None] == (a + jnp.arange(b - a))[None, :]).astype(dtype)  # e_w in every channel
            values = jnp.broadcast_to(one_hot.reshape((colours,) + spread), (colours,) + shape)
            tangents.append(Separated(values, leaf_axis % len(shape), C))
        columns = separated_columns(linear, specs, tangents).reshape(width, -1)  # (w, c) rows, w-major
        if leaf_axis == 0 and whole:  # the leaf's own (c, w) order
            columns = columns.reshape(colours, C, -1).swapaxes(0, 1).reshape(width, -1)
        return (columns.T,)

    def compute(params, x, offset):
        return chunk(linearize(params, x), offset)

    def blocks(n, offset, outputs):
        layout = Layout.COLUMNS if leaf_axis == -1 or whole else Layout.FIRST_AXIS_COLUMNS
        return [JacobianBlock(n, layout, names, offset, outputs[0])]

    return Kernel(compute, linearize, chunk, blocks, lambda outputs: [(start, outputs[0])], 1)


KERNELS[SeparatedForward] = separated_forward_kernel
KERNELS[SeparatedForwardFirst] = functools.partial(separated_forward_kernel, leaf_axis=0)


def fused_kernel(kernels: Sequence[Kernel]) -> Kernel:
    """One program computing every block of one example, for plans whose blocks each fit in one chunk: one
    dispatch per example, and XLA shares the primal pass between blocks."""

    def compute(params, x, offset):
        return tuple(o for k in kernels for o in k.compute(params, x, offset))

    def per_kernel(outputs):
        at = 0
        for k in kernels:
            yield k, outputs[at : at + k.num_outputs]
            at += k.num_outputs

    def blocks(n, offset, outputs):
        return [b for k, own in per_kernel(outputs) for b in k.blocks(n, offset, own)]

    def expand(outputs):
        return [piece for k, own in per_kernel(outputs) for piece in k.expand(own)]

    return Kernel(compute, None, None, blocks, expand, sum(k.num_outputs for k in kernels))


def dense_program(split: LayerSplit, kernel: Kernel):
    """``dense(params, x) -> (M, P)``: one example's whole Jacobian as one program output, for a kernel spanning
    every column in one chunk."""
    dtype = split.activation_dtype

    def dense(params, x):
        pieces = sorted(kernel.expand(kernel.compute(params, x, 0)), key=lambda p: p[0])
        blocks = [block.astype(dtype) for _, block in pieces]
        return blocks[0] if len(blocks) == 1 else jnp.concatenate(blocks, axis=1)

    return dense
