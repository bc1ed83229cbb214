"""The four ways to compute a block of Jacobian columns, each a small class.

A method knows, for a block of upstream leaves, its basis (how many passes), what one basis vector costs in
memory and time, how to build the device program for a chunk of ``width`` basis vectors, and how the values it
returns are placed into a result (a *sink*: the dense matrix, or the compressed per-channel form). Write M for
the layer's outputs per example, P_b for the block's parameters, and for channel-diagonal leaves (``_structure``)
C for their channels, W = P_leaf / C and S = M / C.

====================  ==========================================  ===========================================
method                passes per example                          use when
====================  ==========================================  ===========================================
``DenseForward``      P_b JVPs (``jax.jacfwd``)                   few parameters feed a wide layer
``DenseReverse``      M pullbacks (``jax.jacrev``)                narrow layers fed by many parameters
``ColumnColouring``   W JVPs: one column of every channel at once  channel-diagonal leaves, wide layers
``RowColouring``      S pullbacks: one row of every channel        channel-diagonal leaves on the last axis
====================  ==========================================  ===========================================

Chunks take their basis from a traced ``offset`` (one compiled program serves every chunk), except a chunk
spanning the whole basis, which builds it from a constant: XLA then sees a constant one-hot basis and simplifies
the tangents (measured 5× faster for relu1's 240 dense JVPs than with a traced offset). A block of several chunks
linearizes once per example and applies the linear map chunk by chunk.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ._layout import column_starts, contiguous_runs, leaf_size, one_hot_rows, ravel_leaves

# Device time of writing one entry of a dense block (and copying it into the host result), in units of one
# floating-point operation of a pass. Measured on the shipped LeNet on a 2-core CPU: a dense entry costs about
# 1.2 ns (written on the device, then copied), a pass's arithmetic runs at 20–50 GFLOP/s (0.02–0.05 ns).
WRITE_COST = 32.0
# A pullback costs about two forward passes (the backward of a conv is two convs).
REVERSE_PASS_COST = 2.0


@dataclasses.dataclass(frozen=True)
class Kernel:
    """One block's device programs for chunks of one width, and how their values are placed.

    ``compute(params, x, offset)`` computes one chunk in one program. For blocks of several chunks,
    ``linearize(params, x)`` returns the example's linear map (a pytree holding the forward pass's residuals)
    and ``chunk(linear, offset)`` applies it to one chunk, so the forward pass runs once per example.
    ``place(sink, n, offset, outputs)`` hands a chunk's values to a sink for example ``n``; ``expand(outputs)``,
    traceable, gives a chunk spanning the whole block as dense full-height ``(column, block)`` pieces.
    """

    compute: Callable
    linearize: Callable | None
    chunk: Callable | None
    place: Callable
    expand: Callable
    num_outputs: int


class Method:
    """Base of the four methods; see the module docstring."""

    name: ClassVar[str]
    forward: ClassVar[bool]  # built from JVPs (else from pullbacks)
    colouring: ClassVar[bool] = False

    def __repr__(self):
        return f"{type(self).__name__}()"

    def __eq__(self, other):
        return type(self) is type(other)

    def __hash__(self):
        return hash(type(self))

    def basis_size(self, split, names) -> int:
        raise NotImplementedError

    def cost(self, split, names) -> float:
        """Estimated device time per example, in flop-equivalents: passes × (the arithmetic of one pass over
        what depends on the leaves) + ``WRITE_COST`` per entry returned."""
        raise NotImplementedError

    def returns_per_vector(self, split, names) -> int:
        """Entries one basis vector returns from the device."""
        raise NotImplementedError

    def bytes_per_vector(self, split, names) -> int:
        """Estimated device memory of one basis vector: a tangent or cotangent of every intermediate value, plus
        what the vector returns."""
        itemsize = np.dtype(split.activation_dtype).itemsize
        return split.analysis.cost.intermediate_bytes + self.returns_per_vector(split, names) * itemsize

    def kernel(self, split, names: tuple[str, ...], width: int) -> Kernel:
        raise NotImplementedError


def _whole(width, basis):
    return width >= basis


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


class DenseForward(Method):
    """Forward mode: one JVP per parameter of the block, vmapped over a chunk of the parameter basis.

    Cost: P_b passes per example (each over what depends on its leaf). Memory per vector: a tangent of every
    intermediate + a column of M. Use when few parameters feed a wide layer.
    """

    name = "fwd"
    forward = True

    def basis_size(self, split, names):
        return sum(leaf_size(split, n) for n in names)

    def cost(self, split, names):
        flops = split.analysis.cost.flops
        return sum(leaf_size(split, n) * (flops([n]) + WRITE_COST * split.num_outputs) for n in names)

    def returns_per_vector(self, split, names):
        return split.num_outputs

    def kernel(self, split, names, width):
        size = self.basis_size(split, names)
        whole = _whole(width, size)
        start = column_starts(split)[names[0]]
        dtype = np.dtype(split.params[names[0]].dtype)

        def setup(params, x):
            params = split.point(params, x)  # the parameters, or this example's input or activation
            theta, unravel = ravel_leaves(params, names)
            return (lambda t: jnp.ravel(split.apply({**params, **unravel(t)}, x))), theta

        def chunk(push, offset):
            return (jax.vmap(push)(one_hot_rows(0 if whole else offset, width, size, dtype)).T,)

        def place(sink, n, offset, outputs):
            sink.columns(n, names, offset, outputs[0])

        linearize, compute = _with_linearization(True, setup, chunk)
        return Kernel(compute, linearize, chunk, place, lambda outputs: [(start, outputs[0])], 1)


class DenseReverse(Method):
    """Reverse mode: vmap over the pullback of one ``jax.vjp``, over a chunk of the output basis.

    Cost: M pullbacks per example after one forward pass, shared by every leaf of the block. Memory per vector:
    a cotangent of every intermediate + a row of the block. Use when a narrow layer is fed by many parameters.
    """

    name = "rev"
    forward = False

    def basis_size(self, split, names):
        return split.num_outputs

    def cost(self, split, names):
        writes = WRITE_COST * sum(leaf_size(split, n) for n in names)
        return split.num_outputs * (REVERSE_PASS_COST * split.analysis.cost.flops(names) + writes)

    def returns_per_vector(self, split, names):
        return sum(leaf_size(split, n) for n in names)

    def kernel(self, split, names, width):
        M = split.num_outputs
        whole = _whole(width, M)
        starts = column_starts(split)
        dtype = np.dtype(split.activation_dtype)

        def setup(params, x):
            params = split.point(params, x)  # the parameters, or this example's input or activation
            return (lambda block: jnp.ravel(split.apply({**params, **block}, x))), {k: params[k] for k in names}

        def chunk(pull, offset):
            rows = jax.vmap(pull)(one_hot_rows(0 if whole else offset, width, M, dtype))[0]
            return tuple(rows[k].reshape(width, -1) for k in names)

        def place(sink, n, offset, outputs):
            for name, rows in zip(names, outputs):
                sink.rows(n, name, offset, rows)

        linearize, compute = _with_linearization(False, setup, chunk)
        return Kernel(compute, linearize, chunk, place,
                      lambda outputs: [(starts[k], block) for k, block in zip(names, outputs)], len(names))


def _expand_diagonal(values, row_shape, channel_axis: int):
    """The dense block that ``place_diagonal`` fills, built on the device: ``(prod(row_shape), W × C)``."""
    C = row_shape[channel_axis]
    full = tuple(row_shape) + (values.shape[-1], C)
    same_channel = lax.broadcasted_iota(jnp.int32, full, channel_axis) == lax.broadcasted_iota(
        jnp.int32, full, len(full) - 1)
    return jnp.where(same_channel, values[..., None], 0).reshape(int(np.prod(row_shape)), -1)


class ColumnColouring(Method):
    """Column colouring of channel-diagonal leaves (one channel count and layer axis, adjacent columns): a JVP
    along "within-channel index w, every channel" gives column (w, c) on the rows of channel c, for all c.

    Cost: W passes per example; only the nonzeros (1 / C of the block) leave the device. Memory per vector: a
    tangent of every intermediate + the broadcast tangent of the leaves + one compressed column of M.
    """

    name = "fwd-colour"
    forward = True
    colouring = True

    def _within(self, split, names):
        structure = split.analysis.structure
        return [leaf_size(split, k) // structure[k].channels for k in names]

    def basis_size(self, split, names):
        return sum(self._within(split, names))

    def cost(self, split, names):
        flops = split.analysis.cost.flops
        return sum(w * (flops([n]) + WRITE_COST * split.num_outputs)
                   for n, w in zip(names, self._within(split, names)))

    def returns_per_vector(self, split, names):
        return split.num_outputs

    def bytes_per_vector(self, split, names):
        itemsize = np.dtype(split.activation_dtype).itemsize
        return super().bytes_per_vector(split, names) + sum(leaf_size(split, n) for n in names) * itemsize

    def kernel(self, split, names, width):
        structure = split.analysis.structure
        C, axis = structure[names[0]].channels, structure[names[0]].output_axis
        if any((structure[k].channels, structure[k].output_axis) != (C, axis) for k in names) or (
                len(contiguous_runs(split, names)) > 1):
            raise ValueError(f"a colouring block needs adjacent leaves of one channel axis: {names}")
        bounds = np.cumsum([0] + self._within(split, names))
        if len(names) > 1 and width != bounds[-1]:
            raise ValueError("a colouring block of several leaves is computed in one chunk")
        whole = _whole(width, int(bounds[-1]))
        shapes = {k: np.shape(split.params[k]) for k in names}
        dtype = np.dtype(split.params[names[0]].dtype)
        act_shape = split.activation_shape
        start = column_starts(split)[names[0]]

        def setup(params, x):
            params = split.point(params, x)  # the parameters, or this example's input or activation
            def g(s):  # every channel of each leaf moves by s: a JVP along e_w is column (w, c) for all c
                moved = {k: params[k] + s[a:b].reshape(shapes[k][:-1] + (1,))
                         for k, a, b in zip(names, bounds[:-1], bounds[1:])}
                return split.apply({**params, **moved}, x)

            return g, jnp.zeros(int(bounds[-1]), dtype)

        def chunk(push, offset):
            compressed = jax.vmap(push)(one_hot_rows(0 if whole else offset, width, int(bounds[-1]), dtype))
            return (jnp.moveaxis(compressed, 0, -1),)  # (*act, width): the channel diagonal's layout

        def place(sink, n, offset, outputs):
            sink.channel_columns(n, names, offset, outputs[0])

        linearize, compute = _with_linearization(True, setup, chunk)
        return Kernel(compute, linearize, chunk, place,
                      lambda outputs: [(start, _expand_diagonal(outputs[0], act_shape, axis))], 1)


class RowColouring(Method):
    """Row colouring of channel-diagonal leaves whose channel is the layer's last axis: a pullback of "position
    s, every channel" gives row (s, c) on channel c's slice of each leaf, for all c.

    Cost: S pullbacks per example, shared by every leaf of the block; only the nonzeros leave the device.
    Memory per vector: a cotangent of every intermediate + one compressed row of the block.
    """

    name = "rev-colour"
    forward = False
    colouring = True

    def _channels(self, split, names):
        return split.analysis.structure[names[0]].channels

    def basis_size(self, split, names):
        return split.num_outputs // self._channels(split, names)

    def cost(self, split, names):
        writes = WRITE_COST * sum(leaf_size(split, n) for n in names)
        return self.basis_size(split, names) * (REVERSE_PASS_COST * split.analysis.cost.flops(names) + writes)

    def returns_per_vector(self, split, names):
        return sum(leaf_size(split, n) for n in names)

    def kernel(self, split, names, width):
        C = self._channels(split, names)
        S = split.num_outputs // C
        whole = _whole(width, S)
        runs = contiguous_runs(split, names)
        starts = column_starts(split)
        dtype = np.dtype(split.activation_dtype)

        def setup(params, x):
            params = split.point(params, x)  # the parameters, or this example's input or activation
            return (lambda block: split.apply({**params, **block}, x).reshape(S, C)), {k: params[k] for k in names}

        def chunk(pull, offset):
            basis = one_hot_rows(0 if whole else offset, width, S, dtype)  # position s, every channel
            grads = jax.vmap(pull)(jnp.broadcast_to(basis[:, :, None], (width, S, C)))[0]
            # Adjacent leaves' columns continue one another: one (width, C, W_run) diagonal per run.
            return tuple(jnp.concatenate([grads[k].reshape(width, -1, C) for k in run], axis=1).swapaxes(1, 2)
                         for run in runs)

        def place(sink, n, offset, outputs):
            for run, values in zip(runs, outputs):
                sink.channel_rows(n, run, offset, values)

        linearize, compute = _with_linearization(False, setup, chunk)
        return Kernel(compute, linearize, chunk, place,
                      lambda outputs: [(starts[run[0]], _expand_diagonal(values, (width, C), 1))
                                       for run, values in zip(runs, outputs)], len(runs))


METHODS = {m.name: m for m in (DenseForward(), DenseReverse(), ColumnColouring(), RowColouring())}


def fused_kernel(kernels) -> Kernel:
    """One program computing every block of one example, for plans whose blocks each fit in one chunk: one
    dispatch per example, and XLA shares the primal pass between blocks."""

    def compute(params, x, offset):
        return tuple(o for k in kernels for o in k.compute(params, x, offset))

    def per_kernel(outputs):
        at = 0
        for k in kernels:
            yield k, outputs[at:at + k.num_outputs]
            at += k.num_outputs

    def place(sink, n, offset, outputs):
        for k, own in per_kernel(outputs):
            k.place(sink, n, offset, own)

    def expand(outputs):
        return [piece for k, own in per_kernel(outputs) for piece in k.expand(own)]

    return Kernel(compute, None, None, place, expand, sum(k.num_outputs for k in kernels))


def dense_program(split, kernel: Kernel):
    """``dense(params, x) -> (M, P)``: one example's whole Jacobian as one program output, for a kernel spanning
    every column in one chunk."""
    dtype = split.activation_dtype

    def dense(params, x):
        pieces = sorted(kernel.expand(kernel.compute(params, x, 0)), key=lambda p: p[0])
        blocks = [block.astype(dtype) for _, block in pieces]
        return blocks[0] if len(blocks) == 1 else jnp.concatenate(blocks, axis=1)

    return dense
