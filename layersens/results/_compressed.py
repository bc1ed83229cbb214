"""The compressed Jacobian: per-channel blocks for channel-diagonal leaves, dense columns for the rest.

For a leaf whose last axis (C channels) maps onto axis ``a`` of the layer, the dense Jacobian block is zero
except where the layer's channel equals the leaf's channel. The compressed block keeps only those entries:
``channel_blocks[leaf][n, *act, w]`` is d act[n, *act] / d leaf[w, c] with c the channel of ``*act``: W = leaf
size / C entries per activation element instead of W·C (20× smaller for relu1 of the shipped example). The
conversion to dense is lossless (:meth:`CompressedJacobian.to_dense`).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from .._errors import format_bytes
from .._repr import Summarized
from ._result import LayerJacobian


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class CompressedJacobian(Summarized):
    """A Jacobian kept as per-channel blocks where the structure allows it.

    Attributes:
      layer: the layer.
      param_names, param_shapes: every upstream leaf, in the dense result's column order.
      channel_blocks: leaf → ``(examples,) + activation_shape + (W,)``.
      structure: leaf → its :class:`ChannelStructure`, for the leaves in ``channel_blocks``.
      dense_part: a :class:`LayerJacobian` over the other leaves (no columns if every leaf is coloured); it also
        carries the activation, inputs and timings.
    """

    layer: str
    param_names: tuple[str, ...]
    param_shapes: tuple[tuple[int, ...], ...]
    channel_blocks: dict[str, np.ndarray]
    structure: dict
    dense_part: LayerJacobian

    def _summary(self):
        d = self.dense_part
        return [
            ("layer", self.layer),
            ("examples", d.num_examples),
            ("activation_shape", d.activation_shape),
            ("channel_blocks", {n: None for n in self.channel_blocks}),
            ("dense_params", d.param_names),
            ("size", format_bytes(self.nbytes)),
            ("mode", d.mode),
            ("device", d.device),
        ]

    @property
    def nbytes(self) -> int:
        return self.dense_part.nbytes + sum(b.nbytes for b in self.channel_blocks.values())

    def to_dense(self) -> LayerJacobian:
        """The dense :class:`LayerJacobian`, equal to the one ``layersens.jacobian`` computes."""
        d = self.dense_part
        n, m = d.num_examples, d.num_outputs
        p = sum(int(np.prod(s, dtype=np.int64)) for s in self.param_shapes)
        matrix = np.zeros((n, m, p), d.activation.dtype)
        act = d.activation_shape
        start = 0
        for name, shape in zip(self.param_names, self.param_shapes):
            size = int(np.prod(shape, dtype=np.int64))
            if name in self.channel_blocks:
                s = self.structure[name]
                view = matrix[:, :, start : start + size].reshape((n,) + act + (size // s.channels, s.channels))
                block = self.channel_blocks[name]
                for c in range(s.channels):
                    at = (slice(None),) * (1 + s.output_axis) + (c,)
                    view[at + (Ellipsis, c)] = block[at]
            else:
                a, b = d.column_ranges[name]
                matrix[:, :, start : start + size] = d.matrix[:, :, a:b]
            start += size
        matrix.flags.writeable = False
        return dataclasses.replace(d, matrix=matrix, param_names=self.param_names, param_shapes=self.param_shapes)
