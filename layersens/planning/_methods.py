"""The ways to compute a block of Jacobian columns, each a small class: what they cost.

A method knows, for a block of upstream leaves, its basis (how many passes), and what one basis vector costs in
memory and time; the planner compares methods by these numbers. The device programs that carry a method out are
built in ``compute`` (``compute.KERNELS``, keyed by the method's class). Write M for the layer's outputs per
example, P_b for the block's parameters, and for channel-diagonal leaves (``analysis``' structure) C for their
channels, W = P_leaf / C and S = M / C.

====================  ==========================================  ===========================================
method                passes per example                          use when
====================  ==========================================  ===========================================
``DenseForward``      P_b JVPs (``jax.jacfwd``)                   few parameters feed a wide layer
``DenseReverse``      M pullbacks (``jax.jacrev``)                narrow layers fed by many parameters
``ColumnColouring``   W JVPs: one column of every channel at once  channel-diagonal leaves, wide layers
``RowColouring``      S pullbacks: one row of every channel        channel-diagonal leaves on the last axis
``SeparatedForward``  W separated JVPs, then W·C after the mix     leaves with a channel axis the layer mixes
(``...First``)        the same along a leaf's first axis          ``(out, in)`` and ``OIHW`` kernels
====================  ==========================================  ===========================================
"""

from __future__ import annotations

import abc
from typing import TYPE_CHECKING, ClassVar, Sequence

import numpy as np

from ..analysis import analyze
from ._layout import leaf_size

if TYPE_CHECKING:
    from ..tracing import LayerSplit

# Device time of writing one entry of a dense block (and copying it into the host result), in units of one
# floating-point operation of a pass. Measured on the shipped LeNet on a 2-core CPU: a dense entry costs about
# 1.2 ns (written on the device, then copied), a pass's arithmetic runs at 20–50 GFLOP/s (0.02–0.05 ns).
WRITE_COST = 32.0
# A pullback costs about two forward passes (the backward of a conv is two convs).
REVERSE_PASS_COST = 2.0


class Method(abc.ABC):
    """Base of the methods; see the module docstring. Methods are values: equal when of the same class."""

    name: ClassVar[str]
    forward: ClassVar[bool]  # built from JVPs (else from pullbacks)
    colouring: ClassVar[bool] = False

    def __repr__(self):
        return f"{type(self).__name__}()"

    def __eq__(self, other):
        return type(self) is type(other)

    def __hash__(self):
        return hash(type(self))

    @abc.abstractmethod
    def basis_size(self, split: LayerSplit, names: Sequence[str]) -> int:
        """Passes per example."""

    def align(self, split: LayerSplit, names: Sequence[str]) -> int:
        """Chunk widths (and so offsets) are multiples of this."""
        return 1

    def passes(self, split: LayerSplit, names: Sequence[str]) -> int:
        """Passes through the layer's program per example (what a probe of an estimator also costs): the basis,
        except where one pass computes several basis vectors."""
        return self.basis_size(split, names)

    @abc.abstractmethod
    def cost(self, split: LayerSplit, names: Sequence[str]) -> float:
        """Estimated device time per example, in flop-equivalents: passes × (the arithmetic of one pass over
        what depends on the leaves) + ``WRITE_COST`` per entry returned."""

    @abc.abstractmethod
    def returns_per_vector(self, split: LayerSplit, names: Sequence[str]) -> int:
        """Entries one basis vector returns from the device."""

    def bytes_per_vector(self, split: LayerSplit, names: Sequence[str]) -> int:
        """Estimated device memory of one basis vector: a tangent or cotangent of every intermediate value, plus
        what the vector returns."""
        itemsize = np.dtype(split.activation_dtype).itemsize
        return analyze(split).cost.intermediate_bytes + self.returns_per_vector(split, names) * itemsize


class DenseForward(Method):
    """Forward mode: one JVP per parameter of the block, vmapped over a chunk of the parameter basis.

    Cost: P_b passes per example (each over what depends on its leaf). Memory per vector: a tangent of every
    intermediate + a column of M. Use when few parameters feed a wide layer.
    """

    name = "fwd"
    forward = True

    def basis_size(self, split: LayerSplit, names):
        return sum(leaf_size(split, n) for n in names)

    def cost(self, split: LayerSplit, names):
        flops = analyze(split).cost.flops
        return sum(leaf_size(split, n) * (flops([n]) + WRITE_COST * split.num_outputs) for n in names)

    def returns_per_vector(self, split: LayerSplit, names):
        return split.num_outputs


class DenseReverse(Method):
    """Reverse mode: vmap over the pullback of one ``jax.vjp``, over a chunk of the output basis.

    Cost: M pullbacks per example after one forward pass, shared by every leaf of the block. Memory per vector:
    a cotangent of every intermediate + a row of the block. Use when a narrow layer is fed by many parameters.
    """

    name = "rev"
    forward = False

    def basis_size(self, split: LayerSplit, names):
        return split.num_outputs

    def cost(self, split: LayerSplit, names):
        writes = WRITE_COST * sum(leaf_size(split, n) for n in names)
        return split.num_outputs * (REVERSE_PASS_COST * analyze(split).cost.flops(names) + writes)

    def returns_per_vector(self, split: LayerSplit, names):
        return sum(leaf_size(split, n) for n in names)


class ColumnColouring(Method):
    """Column colouring of channel-diagonal leaves (one channel count and layer axis, adjacent columns): a JVP
    along "within-channel index w, every channel" gives column (w, c) on the rows of channel c, for all c.

    Cost: W passes per example; only the nonzeros (1 / C of the block) leave the device. Memory per vector: a
    tangent of every intermediate + the broadcast tangent of the leaves + one compressed column of M.
    """

    name = "fwd-colour"
    forward = True
    colouring = True

    def within(self, split: LayerSplit, names: Sequence[str]) -> list[int]:
        """W (parameters per channel) of each leaf."""
        structure = analyze(split).structure
        return [leaf_size(split, k) // structure[k].channels for k in names]

    def basis_size(self, split: LayerSplit, names):
        return sum(self.within(split, names))

    def cost(self, split: LayerSplit, names):
        flops = analyze(split).cost.flops
        return sum(w * (flops([n]) + WRITE_COST * split.num_outputs) for n, w in zip(names, self.within(split, names)))

    def returns_per_vector(self, split: LayerSplit, names):
        return split.num_outputs

    def bytes_per_vector(self, split: LayerSplit, names):
        itemsize = np.dtype(split.activation_dtype).itemsize
        return super().bytes_per_vector(split, names) + sum(leaf_size(split, n) for n in names) * itemsize


class RowColouring(Method):
    """Row colouring of channel-diagonal leaves whose channel is the layer's last axis: a pullback of "position
    s, every channel" gives row (s, c) on channel c's slice of each leaf, for all c.

    Cost: S pullbacks per example, shared by every leaf of the block; only the nonzeros leave the device.
    Memory per vector: a cotangent of every intermediate + one compressed row of the block.
    """

    name = "rev-colour"
    forward = False
    colouring = True

    def channels(self, split: LayerSplit, names: Sequence[str]) -> int:
        return analyze(split).structure[names[0]].channels

    def basis_size(self, split: LayerSplit, names):
        return split.num_outputs // self.channels(split, names)

    def cost(self, split: LayerSplit, names):
        writes = WRITE_COST * sum(leaf_size(split, n) for n in names)
        return self.basis_size(split, names) * (REVERSE_PASS_COST * analyze(split).cost.flops(names) + writes)

    def returns_per_vector(self, split: LayerSplit, names):
        return sum(leaf_size(split, n) for n in names)


class SeparatedForward(Method):
    """Forward mode with each leaf's channels carried apart (``compute._separated``): for leaves with a channel
    axis (C > 1) whose channels the layer mixes, so that column colouring does not apply. One tangent stands for
    the C columns ``(w, 0..C-1)`` up to the first equation that mixes channels; that equation computes the C
    columns at the price of one pass (a grouped convolution, a batched contraction), and the rest runs per
    column. Its basis is the block's columns, in chunks of whole channels (``align``).

    Cost: W passes up to the mix plus P_b passes after it (``analysis.Separation``), writing M per column.
    Memory per vector (column): 1 / C of a within-channel index's tangents + the column. Use when a layer's
    channels mix late (conv1's columns at relu2, every conv leaf at fc1).
    """

    name = "fwd-separated"
    forward = True
    leaf_axis: ClassVar[int] = -1  # the leaves' channel axis: their last

    def channels(self, split: LayerSplit, names: Sequence[str]) -> int:
        # read from the split (a kept plan holds its split weakly: no analysis lookup)
        return int(np.shape(split.params[names[0]])[self.leaf_axis])

    def align(self, split: LayerSplit, names):
        return self.channels(split, names)

    def passes(self, split: LayerSplit, names):
        # one pass per within-channel index; after the mix its C columns are per-column work, not passes
        return self.basis_size(split, names) // self.channels(split, names)

    def basis_size(self, split: LayerSplit, names):
        return sum(leaf_size(split, n) for n in names)

    def cost(self, split: LayerSplit, names):
        separation = analyze(split).separation
        return sum(
            leaf_size(split, n) * (separation[n].flops / separation[n].channels + WRITE_COST * split.num_outputs)
            for n in names
        )

    def returns_per_vector(self, split: LayerSplit, names):
        return split.num_outputs

    def bytes_per_vector(self, split: LayerSplit, names):
        """Per column: its share of a within-channel index's tangents (``analysis.Separation.bytes``), plus the
        column it returns."""
        itemsize = np.dtype(split.activation_dtype).itemsize
        separation = analyze(split).separation
        share = max(-(-separation[n].bytes // separation[n].channels) for n in names)
        return share + self.returns_per_vector(split, names) * itemsize


class SeparatedForwardFirst(SeparatedForward):
    """:class:`SeparatedForward` for a leaf whose channel axis is its first: an ``(out, in)`` kernel's outputs, an
    ``OIHW`` convolution kernel's output features (``analysis.Separation.leaf_axis == 0``, chosen where it costs
    at most half of the last axis). Its columns ``(c, w)`` are not those of a within-channel chunk: a chunk's
    columns go to the sink as one block per channel; one leaf per block.

    Cost, memory and use: as :class:`SeparatedForward`.
    """

    name = "fwd-separated-first"
    leaf_axis = 0


METHODS = {
    m.name: m
    for m in (
        DenseForward(),
        DenseReverse(),
        ColumnColouring(),
        RowColouring(),
        SeparatedForward(),
        SeparatedForwardFirst(),
    )
}
