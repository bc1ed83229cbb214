"""Where a chunk's values land on the host: the dense matrix, or the compressed per-channel form.

Methods hand their values to a sink in their own terms (dense columns, dense rows, a channel diagonal's columns
or rows); the sink knows the layout. The dense matrix starts as zeros: fresh zeroed memory costs only its page
faults, so a block that is mostly zeros is written once, and only where it is nonzero (through a strided view of
its diagonal, ``place_diagonal``).
"""

from __future__ import annotations

import numpy as np

from ..planning._layout import leaf_size, place_diagonal


def _starts(split, names) -> dict[str, int]:
    starts, at = {}, 0
    for name in names:
        starts[name] = at
        at += leaf_size(split, name)
    return starts


class DenseSink:
    """The ``(examples, M, P)`` matrix over ``names`` (default: every upstream leaf), columns in that order."""

    def __init__(self, split, num_examples: int, names=None):
        self.names = tuple(split.param_names if names is None else names)
        self.starts = _starts(split, self.names)
        self.structure = split.analysis.structure
        self.activation_shape = split.activation_shape
        width = sum(leaf_size(split, n) for n in self.names)
        self.matrix = np.zeros((num_examples, split.num_outputs, width), np.dtype(split.activation_dtype))

    def columns(self, n, names, offset, values):
        column = self.starts[names[0]] + offset
        self.matrix[n][:, column:column + values.shape[1]] = values

    def rows(self, n, name, offset, values):
        start = self.starts[name]
        self.matrix[n][offset:offset + values.shape[0], start:start + values.shape[1]] = values

    def channel_columns(self, n, names, offset, values):
        s = self.structure[names[0]]
        place_diagonal(self.matrix[n], 0, self.starts[names[0]] + offset * s.channels, self.activation_shape,
                       s.output_axis, values)

    def channel_rows(self, n, run, offset, values):
        width, channels = values.shape[:2]
        place_diagonal(self.matrix[n], offset * channels, self.starts[run[0]], (width, channels), 1, values)


class CompressedSink:
    """Per-channel blocks ``(examples,) + activation_shape + (W,)`` for the ``coloured`` leaves, a dense matrix
    over the others."""

    def __init__(self, split, num_examples: int, coloured):
        self.structure = {n: split.analysis.structure[n] for n in coloured}
        self.within = {n: leaf_size(split, n) // self.structure[n].channels for n in coloured}
        self.blocks = {n: np.zeros((num_examples,) + split.activation_shape + (self.within[n],),
                                   np.dtype(split.activation_dtype)) for n in split.param_names if n in coloured}
        self.dense = DenseSink(split, num_examples, [n for n in split.param_names if n not in coloured])

    def columns(self, n, names, offset, values):
        self.dense.columns(n, names, offset, values)

    def rows(self, n, name, offset, values):
        self.dense.rows(n, name, offset, values)

    def _leaves(self, names):
        at = 0
        for name in names:
            yield name, at, at + self.within[name]
            at += self.within[name]

    def channel_columns(self, n, names, offset, values):
        width = values.shape[-1]
        for name, a, b in self._leaves(names):
            lo, hi = max(offset, a), min(offset + width, b)
            if lo < hi:
                self.blocks[name][n][..., lo - a:hi - a] = values[..., lo - offset:hi - offset]

    def channel_rows(self, n, run, offset, values):
        width, channels = values.shape[:2]
        for name, a, b in self._leaves(run):
            block = self.blocks[name][n].reshape(-1, channels, b - a)  # (S, C, W): channels are the last axis
            block[offset:offset + width] = values[:, :, a:b]
