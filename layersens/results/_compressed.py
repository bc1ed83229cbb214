"""The compressed Jacobian: per-channel blocks for channel-diagonal leaves, dense columns for the rest.

For a leaf whose channel axis (C channels, its last or its first) maps onto axis ``a`` of the layer, the dense
Jacobian block is zero except where the layer's channel equals the leaf's channel. The compressed block keeps only
those entries: ``channel_blocks[leaf][n, *act, w]`` is d act[n, *act] / d leaf[w, c] with c the channel of
``*act`` and w the index over the leaf's other axes: W = leaf size / C entries per activation element instead of
W·C (20× smaller for relu1 of the shipped example). The conversion to dense is lossless
(:meth:`CompressedJacobian.to_dense`).
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
        # the dense part's dtype, not the activation's: a real layer of complex parameters has a complex Jacobian
        matrix = np.zeros((n, m, p), d.matrix.dtype)
        start = 0
        for name, shape in zip(self.param_names, self.param_shapes):
            size = int(np.prod(shape, dtype=np.int64))
            if name in self.channel_blocks:
                _expand(self.channel_blocks[name], self.structure[name], matrix[:, :, start : start + size])
            else:
                a, b = d.column_ranges[name]
                matrix[:, :, start : start + size] = d.matrix[:, :, a:b]
            start += size
        matrix.flags.writeable = False
        return dataclasses.replace(d, matrix=matrix, param_names=self.param_names, param_shapes=self.param_shapes)

    def leaf_columns(self, name: str) -> np.ndarray:
        """The dense ``(examples, M, P_leaf)`` columns of leaf ``name`` (a channel block expanded, zeros off its
        diagonal)."""
        d = self.dense_part
        if name not in self.channel_blocks:
            a, b = d.column_ranges[name]
            return d.matrix[:, :, a:b]
        size = int(np.prod(self.param_shapes[self.param_names.index(name)], dtype=np.int64))
        out = np.zeros((d.num_examples, d.num_outputs, size), d.matrix.dtype)
        return _expand(self.channel_blocks[name], self.structure[name], out)


def _expand(block: np.ndarray, structure, out: np.ndarray) -> np.ndarray:
    """Writes the channel-diagonal ``block`` (``(examples,) + activation_shape + (W,)``, channels along
    ``structure.output_axis`` of the activation) into ``out`` (``(examples, M, W * C)``, zeros off the diagonal:
    column ``(w, c)`` of row ``r`` is ``block[r, w]`` where ``r``'s channel is ``c``); returns ``out``."""
    n, act, C, W = block.shape[0], block.shape[1:-1], structure.channels, block.shape[-1]
    # splits axes only: a view of ``out``, its columns (w, c), or (c, w) for a leaf whose channel axis is its first
    view = out.reshape((n,) + act + ((W, C) if structure.channel_last else (C, W)))
    assert np.may_share_memory(view, out), "the diagonal is written through a view"
    axis = structure.output_axis % len(act)
    for c in range(C):
        at = (slice(None),) * (1 + axis) + (c,)
        view[at + ((Ellipsis, c) if structure.channel_last else (Ellipsis, c, slice(None)))] = block[at]
    return out
