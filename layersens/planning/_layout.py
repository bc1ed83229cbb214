"""Where each leaf's columns sit in the Jacobian, and the small array helpers the methods share."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np


def leaf_size(split, name: str) -> int:
    return int(np.prod(np.shape(split.params[name]), dtype=np.int64))


def column_starts(split) -> dict[str, int]:
    """The first column of each upstream leaf in the ``(M, P)`` matrix (leaves in ``param_names`` order)."""
    starts, start = {}, 0
    for name in split.param_names:
        starts[name] = start
        start += leaf_size(split, name)
    return starts


def contiguous_runs(split, names) -> list[tuple[str, ...]]:
    """``names`` split into runs whose columns are adjacent in the Jacobian (in column order)."""
    starts = column_starts(split)
    runs: list[list[str]] = []
    for name in sorted(names, key=starts.get):
        if runs and starts[runs[-1][-1]] + leaf_size(split, runs[-1][-1]) == starts[name]:
            runs[-1].append(name)
        else:
            runs.append([name])
    return [tuple(r) for r in runs]


def ravel_leaves(params: dict, names):
    """Concatenates the named leaves (in the given order) and returns the inverse."""
    shapes = [np.shape(params[n]) for n in names]
    sizes = [int(np.prod(s, dtype=np.int64)) for s in shapes]
    flat = jnp.concatenate([jnp.ravel(params[n]) for n in names])
    bounds = np.cumsum([0] + sizes)

    def unravel(vector):
        return {n: vector[a:b].reshape(s) for n, a, b, s in zip(names, bounds[:-1], bounds[1:], shapes)}

    return flat, unravel


def one_hot_rows(offset, width: int, size: int, dtype):
    """Rows ``offset .. offset + width`` of the ``size × size`` identity, built in the program."""
    index = offset + jnp.arange(width)
    return (jnp.arange(size)[None, :] == index[:, None]).astype(dtype)


def place_diagonal(matrix: np.ndarray, row: int, column: int, row_shape, channel_axis: int, values: np.ndarray):
    """Writes ``values`` (``row_shape + (W,)``) onto the channel diagonal of a block of ``matrix`` (C-contiguous,
    ``(M, P)``) that starts at ``(row, column)``, whose rows are laid out as ``row_shape`` and whose columns as
    ``(W, C)``: entry ``(r, (w, c))`` with ``r[channel_axis] == c`` gets ``values[r + (w,)]``."""
    item = matrix.itemsize
    num_params = matrix.shape[1]
    C = row_shape[channel_axis]
    row_strides = [int(np.prod(row_shape[a + 1:], dtype=np.int64)) * num_params * item for a in range(len(row_shape))]
    row_strides[channel_axis] += item  # moving one channel down the rows moves one column right
    flat = matrix.reshape(-1)
    start = row * num_params + column
    view = np.lib.stride_tricks.as_strided(
        flat[start:], shape=tuple(row_shape) + (values.shape[-1],), strides=tuple(row_strides) + (C * item,))
    view[...] = values
