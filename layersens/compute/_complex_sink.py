"""The stated Jacobian of a complex layer or complex parameters (``split.complex``, see
``layersens.tracing._complex``): the real problem's dense matrix, combined once every block is in."""

from __future__ import annotations

import dataclasses

import numpy as np

from ..results import LayerJacobian
from ._blocks import JacobianBlock
from ._sinks import DenseSink, Done, Job, Sink


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


def stated(real: LayerJacobian, parts) -> LayerJacobian:
    """``real`` (the real problem's Jacobian) as ``parts`` states it."""
    matrix = parts.combine(real.matrix)
    matrix.flags.writeable = False
    names, shapes = zip(*parts.stated_leaves())
    return dataclasses.replace(
        real,
        matrix=matrix,
        activation=parts.activation(real.activation),
        param_names=tuple(names),
        param_shapes=tuple(shapes),
        dtype=str(np.dtype(parts.dtype)),
    )
