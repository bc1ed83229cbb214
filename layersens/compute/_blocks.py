"""A block of the Jacobian: what one chunk of one example hands to a sink, in the terms of the method that
computed it. Methods know their values; sinks know where values go. This is the one thing between them."""

from __future__ import annotations

import dataclasses
import enum

import numpy as np


class Layout(enum.Enum):
    """How a block's values map onto the ``(M, P)`` matrix of one example (``offset`` counts basis vectors).

    ``COLUMNS``: ``values[M, width]`` are columns ``start(names[0]) + offset ...``.
    ``ROWS``: ``values[width, P_leaf]`` are rows ``offset ...`` of leaf ``names[0]``'s columns.
    ``CHANNEL_COLUMNS``: ``values[*activation_shape, width]`` are within-channel columns ``offset ...`` of the
    adjacent channel-diagonal leaves ``names``: entry ``(r, w)`` belongs at column ``(w, c)`` where ``c`` is
    ``r``'s channel.
    ``CHANNEL_ROWS``: ``values[width, C, W_run]`` are positions ``offset ...`` (every channel at once) of the
    adjacent channel-diagonal leaves ``names`` whose channel is the layer's last axis.
    ``FIRST_AXIS_COLUMNS``: ``values[M, width]`` are basis vectors ``offset ...`` of the one leaf ``names[0]``
    carried apart along its first axis (``SeparatedForwardFirst``): basis vector ``b`` is ``(w, c) = divmod(b, C)``
    and belongs at the leaf's column ``c·W + w`` (:func:`first_axis_columns`).
    ``WHOLE``: ``values[M, P]`` is the example's whole matrix.
    ``EXAMPLES``: ``values[G, M, P]`` are the whole matrices of examples ``example .. example + G`` (over the
    leaves ``names``, in column order).
    ``CHANNEL_EXAMPLES``: ``values[G, *activation_shape, W]`` are the whole channel diagonal of the one
    channel-diagonal leaf ``names[0]`` for examples ``example .. example + G`` (the compressed form's layout).
    """

    COLUMNS = "columns"
    ROWS = "rows"
    CHANNEL_COLUMNS = "channel columns"
    CHANNEL_ROWS = "channel rows"
    FIRST_AXIS_COLUMNS = "first-axis columns"
    WHOLE = "whole"
    EXAMPLES = "examples"
    CHANNEL_EXAMPLES = "channel examples"

    @property
    def basis_axis(self) -> int | None:
        """The axis of a block's values that runs over basis vectors (``None`` for a whole matrix)."""
        return _BASIS_AXIS[self]


_BASIS_AXIS = {
    Layout.COLUMNS: 1,
    Layout.ROWS: 0,
    Layout.CHANNEL_COLUMNS: -1,
    Layout.CHANNEL_ROWS: 0,
    Layout.FIRST_AXIS_COLUMNS: 1,
    Layout.WHOLE: None,
    Layout.EXAMPLES: None,
    Layout.CHANNEL_EXAMPLES: None,
}


@dataclasses.dataclass(frozen=True)
class JacobianBlock:
    """Values of example ``example`` for the leaves ``names``, laid out as ``layout`` says, from basis vector
    ``offset`` on. ``values`` is a host array.

    A run hands each basis vector of an example to its sink once (a chunk that overlaps the one before is trimmed,
    :meth:`after`), so a sink may accumulate what it is given."""

    example: int
    layout: Layout
    names: tuple[str, ...]
    offset: int
    values: np.ndarray

    def __repr__(self) -> str:
        return (
            f"JacobianBlock(example={self.example}, layout={self.layout.name}, names={self.names}, "
            f"offset={self.offset}, values={self.values.shape} {self.values.dtype})"
        )

    @property
    def width(self) -> int:
        """Basis vectors in this block."""
        axis = self.layout.basis_axis
        return 1 if axis is None else int(self.values.shape[axis])

    def after(self, start: int) -> JacobianBlock:
        """This block without the basis vectors before ``start``."""
        skip = start - self.offset
        if skip <= 0:
            return self
        axis = self.layout.basis_axis
        assert axis is not None, "a whole matrix comes in one chunk, so it is never trimmed"
        values = np.take(self.values, np.arange(skip, self.values.shape[axis]), axis=axis)
        return dataclasses.replace(self, offset=start, values=values)


def first_axis_columns(shape, offset: int, width: int) -> np.ndarray:
    """The columns, within a leaf of ``shape`` (channels along its first axis), of basis vectors ``offset ...
    offset + width`` of a ``FIRST_AXIS_COLUMNS`` block."""
    C = int(shape[0])
    W = int(np.prod(shape[1:], dtype=np.int64))
    w, c = np.divmod(offset + np.arange(width), C)
    return c * W + w


def dense_bytes(split, num_examples: int) -> int:
    """Bytes of a split's dense Jacobian for ``num_examples`` examples."""
    return num_examples * split.num_outputs * split.num_params * np.dtype(split.activation_dtype).itemsize
