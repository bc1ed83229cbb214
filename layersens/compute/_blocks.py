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
    ``WHOLE``: ``values[M, P]`` is the example's whole matrix.
    """

    COLUMNS = "columns"
    ROWS = "rows"
    CHANNEL_COLUMNS = "channel columns"
    CHANNEL_ROWS = "channel rows"
    WHOLE = "whole"


@dataclasses.dataclass(frozen=True)
class JacobianBlock:
    """Values of example ``example`` for the leaves ``names``, laid out as ``layout`` says, from basis vector
    ``offset`` on. ``values`` is a host array."""

    example: int
    layout: Layout
    names: tuple[str, ...]
    offset: int
    values: np.ndarray

    def __repr__(self) -> str:
        return (f"JacobianBlock(example={self.example}, layout={self.layout.name}, names={self.names}, "
                f"offset={self.offset}, values={self.values.shape} {self.values.dtype})")
