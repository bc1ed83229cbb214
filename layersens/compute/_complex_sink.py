"""The stated Jacobian of a complex layer or complex parameters (``split.complex``, see
``layersens.tracing._complex``): the real problem's dense matrix or compressed form, stated once every block is
in."""

from __future__ import annotations

import dataclasses

import numpy as np

from ..analysis import ChannelStructure
from ..results import CompressedJacobian, LayerJacobian
from ._blocks import JacobianBlock
from ._sinks import CompressedSink, DenseSink, Done, Job, Sink


class ComplexSink(Sink[LayerJacobian]):
    """The complex :class:`LayerJacobian` of a split whose convention is ``complex`` or ``holomorphic``: rows
    ``[Re h; Im h]`` of the real problem become complex rows, a complex leaf's real and imaginary columns its
    Wirtinger parts (``complex``) or its one complex column (``holomorphic``).

    Memory: the real problem's dense matrix and the stated one (the same bytes each), both at the end.
    """

    whole_matrix = True

    def __init__(self):
        self.dense = DenseSink()

    def begin(self, job: Job) -> None:
        assert job.split.complex is not None, "a ComplexSink runs on a split with complex values"
        self.parts = job.split.complex
        self.dense.begin(job)

    def activation(self, example: int, values: np.ndarray) -> None:
        self.dense.activation(example, values)

    def put(self, block: JacobianBlock) -> None:
        self.dense.put(block)

    def finish(self, done: Done) -> LayerJacobian:
        return stated(self.dense.finish(done), self.parts)


class ComplexCompressedSink(Sink[CompressedJacobian]):
    """The complex :class:`CompressedJacobian` of a split whose convention is ``complex`` or ``holomorphic``: the
    real problem's compressed form, stated by :func:`stated_compressed`.

    Memory: the real problem's compressed form and the stated one (the same bytes each), both at the end.
    """

    channel_examples = CompressedSink.channel_examples  # it forwards every block to the real problem's sink

    def __init__(self):
        self.compressed = CompressedSink()

    def begin(self, job: Job) -> None:
        assert job.split.complex is not None, "a ComplexCompressedSink runs on a split with complex values"
        self.parts = job.split.complex
        self.compressed.begin(job)

    def put(self, block: JacobianBlock) -> None:
        self.compressed.put(block)

    def finish(self, done: Done) -> CompressedJacobian:
        return stated_compressed(self.compressed.finish(done), self.parts)


def stated(real: LayerJacobian, parts) -> LayerJacobian:
    """``real`` (the real problem's Jacobian) as ``parts`` states it."""
    matrix = parts.combine(real.matrix)
    matrix.flags.writeable = False
    leaves = parts.stated_leaves()
    return dataclasses.replace(
        real,
        matrix=matrix,
        activation=parts.activation(real.activation),
        param_names=tuple(name for name, _ in leaves),
        param_shapes=tuple(shape for _, shape in leaves),
        dtype=str(np.dtype(parts.dtype)),
    )


def stated_compressed(real: CompressedJacobian, parts) -> CompressedJacobian:
    """``real`` (the real problem's compressed Jacobian) as ``parts`` states it.

    A stated leaf stays a channel block where every real leaf it is made of (``w.real`` and ``w.imag`` for both
    Wirtinger parts of ``w``) is one, with the same channels along the same axis, and that axis is not the stack of
    ``[Re h; Im h]``: its block is then stated entry by entry, rows ``[Re; Im]`` (axis 1 of the real block) made
    complex, and its axis moves down by one as the stack goes. Any other leaf is stated from dense columns (those
    of its real leaves that are channel blocks are expanded first), with the dense part: a pair split between a
    channel block and dense columns is stated whole, never in part.
    """
    sources = parts.sources()
    act = real.dense_part.activation_shape  # the real problem's: (2,) + the layer's when stacked

    def kept(stated: str) -> ChannelStructure | None:
        if not all(s in real.structure for s in sources[stated]):
            return None
        axes = {
            (real.structure[s].channels, real.structure[s].output_axis % len(act), real.structure[s].leaf_axis)
            for s in sources[stated]
        }
        if len(axes) != 1:
            return None
        ((channels, axis, leaf_axis),) = axes
        if parts.stacked and axis == 0:
            return None  # the channels are Re and Im themselves: no channel axis in the stated layer
        return ChannelStructure(stated, channels, axis - 1 if parts.stacked else axis, leaf_axis)

    structure = {name: s for name in sources if (s := kept(name)) is not None}
    blocks = {}
    for name in structure:
        columns = []
        for source in sources[name]:
            b = real.channel_blocks[source]
            columns.append(parts.state_rows(b[:, 0], b[:, 1]) if parts.stacked else parts.state_rows(b))
        blocks[name] = parts.state_columns(name, columns)
    dense = parts.restricted([leaf for leaf in parts.leaves if leaf not in structure])
    return CompressedJacobian(
        layer=real.layer,
        param_names=tuple(name for name, _ in parts.stated_leaves()),
        param_shapes=tuple(shape for _, shape in parts.stated_leaves()),
        channel_blocks=blocks,
        structure=structure,
        dense_part=stated(_dense_columns(real, dense.real_leaves()), dense),
    )


def _dense_columns(real: CompressedJacobian, leaves) -> LayerJacobian:
    """``real``'s dense part over the real leaves ``leaves`` (in that order), channel blocks among them expanded."""
    d = real.dense_part
    columns = [real.leaf_columns(name) for name, _ in leaves]
    return dataclasses.replace(
        d,
        matrix=np.concatenate(columns, axis=2) if columns else d.matrix[:, :, :0],
        param_names=tuple(name for name, _ in leaves),
        param_shapes=tuple(tuple(shape) for _, shape in leaves),
    )
