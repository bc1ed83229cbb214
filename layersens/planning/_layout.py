"""Where each leaf's columns sit in the Jacobian: the layout the planner groups leaves by."""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable

import numpy as np

if TYPE_CHECKING:
    from ..tracing import LayerSplit


def leaf_size(split: LayerSplit, name: str) -> int:
    return int(np.prod(np.shape(split.params[name]), dtype=np.int64))


def column_starts(split: LayerSplit) -> dict[str, int]:
    """The first column of each upstream leaf in the ``(M, P)`` matrix (leaves in ``param_names`` order)."""
    starts, start = {}, 0
    for name in split.param_names:
        starts[name] = start
        start += leaf_size(split, name)
    return starts


def contiguous_runs(split: LayerSplit, names: Iterable[str]) -> list[tuple[str, ...]]:
    """``names`` split into runs whose columns are adjacent in the Jacobian (in column order)."""
    starts = column_starts(split)
    runs: list[list[str]] = []
    for name in sorted(names, key=starts.__getitem__):
        if runs and starts[runs[-1][-1]] + leaf_size(split, runs[-1][-1]) == starts[name]:
            runs[-1].append(name)
        else:
            runs.append([name])
    return [tuple(r) for r in runs]


def runs_by(split: LayerSplit, names: Iterable[str], key) -> list[tuple[str, ...]]:
    """``names`` in runs of adjacent columns with one ``key`` each."""
    runs: list[tuple[str, ...]] = []
    for run in contiguous_runs(split, names):
        group: list[str] = []
        for name in run:
            if group and key(name) != key(group[-1]):
                runs.append(tuple(group))
                group = []
            group.append(name)
        runs.append(tuple(group))
    return runs


def colour_runs(split: LayerSplit, names: Iterable[str], structure) -> list[tuple[str, ...]]:
    """``names`` (channel-diagonal leaves, ``structure`` theirs) in runs whose ``(w, c)`` columns continue one
    another: adjacent leaves with their channel last. A leaf whose channel axis is its first has ``(c, w)``
    columns, and a run of its own."""
    return runs_by(split, names, lambda n: None if structure[n].channel_last else n)
