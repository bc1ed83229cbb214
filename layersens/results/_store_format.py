"""The on-disk form of a streamed Jacobian: a zarr v3 store, shared by its writer (``compute.StoreSink``) and its
reader (:class:`StoredJacobian`).

Layout of ``J.zarr`` (a zarr group; its attributes hold the metadata, see :data:`STORE_FORMAT`)::

    inputs                  (examples,) + input_shape
    activation              (examples,) + activation_shape
    dense/leaf_<i>          (examples, M, P_i)   the Jacobian w.r.t. leaf i, flat (rows: the activation, row-major;
                                                 columns: the leaf, row-major)
    channels/leaf_<i>       (examples, M, W_i)   (``--format compressed``) leaf i's channel diagonal: entry (r, w)
                                                 is column (w, c) of row r, c being r's channel
    ledger/leaf_<i>         (examples, slabs)    1 where that slab of that example is written
    ledger/activation       (examples,)          1 where the activation of that example is written

Each leaf's array is written in *slabs* along one axis (columns for forward-mode leaves, rows for reverse-mode ones),
each slab of an example whole or not at all: its chunks are written (each chunk file atomically, by zarr), then its
ledger entry. A chunk's presence proves nothing (zarr skips chunks that are all zeros); the ledger is the record of
what is done, and a run killed between the two writes redoes that slab.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

STORE_FORMAT = "layersens-jacobian-store/1"
# A store of a complex convention that states its arrays when read ('complex', 'holomorphic'): the arrays are the
# real problem's. A reader that knows only STORE_FORMAT would present them as they are, unstated, so such a store
# carries a format of its own, which that reader refuses.
STATED_STORE_FORMAT = "layersens-jacobian-store/2"
# Chunks are at most this large (a few MiB: small enough that reading one row or one leaf reads little more than
# it needs, large enough that the file count stays in the thousands for gigabytes).
CHUNK_BYTES = 4 * 2**20


@dataclasses.dataclass(frozen=True)
class StoredArray:
    """One leaf's array in a store, and its slabs.

    Attributes:
      leaf: the parameter leaf's name.
      path: the array's path in the store (``dense/leaf_3``).
      shape: ``(examples, M, K)``: K is the leaf's size (dense) or its parameters per channel (channels).
      slab_axis: 2 when slabs are column ranges (forward-mode leaves), 1 when row ranges (reverse mode).
      slab: rows or columns per slab (the last one may be shorter).
    """

    leaf: str
    path: str
    shape: tuple[int, int, int]
    slab_axis: int
    slab: int

    @property
    def num_slabs(self) -> int:
        return max(1, math.ceil(self.shape[self.slab_axis] / self.slab))

    def slab_range(self, index: int) -> tuple[int, int]:
        start = index * self.slab
        return start, min(start + self.slab, self.shape[self.slab_axis])

    @property
    def ledger_path(self) -> str:
        return "ledger/" + self.path.rsplit("/", 1)[-1]

    def chunks(self, itemsize: int) -> tuple[int, int, int]:
        """Chunk shape: one example; the slab along the slab axis; up to :data:`CHUNK_BYTES` along the other."""
        other = 3 - self.slab_axis
        across = max(1, min(self.shape[other], CHUNK_BYTES // max(1, self.slab * itemsize)))
        return (1, self.slab, across) if self.slab_axis == 1 else (1, across, self.slab)

    def describe(self) -> dict:
        return {"leaf": self.leaf, "path": self.path, "slab_axis": self.slab_axis, "slab": self.slab}

    @classmethod
    def from_description(cls, described: dict, shape) -> StoredArray:
        return cls(
            leaf=str(described["leaf"]),
            path=str(described["path"]),
            shape=tuple(int(s) for s in shape),  # type: ignore[arg-type]
            slab_axis=int(described["slab_axis"]),
            slab=int(described["slab"]),
        )


def slabs_along(extent: int, per_unit_bytes: int, budget: int, unit: int = 1) -> int:
    """Rows or columns per slab: as many as ``budget`` bytes hold (``per_unit_bytes`` each), a multiple of ``unit``
    (a channel count, so that a coloured block's columns never straddle slabs), at least ``unit``, at most
    ``extent``."""
    fit = max(1, budget // max(1, per_unit_bytes))
    count = max(unit, fit // unit * unit)
    return max(1, min(extent, count))


def numpy_indexing(read, key) -> np.ndarray:
    """``read(key)`` selects each axis of ``(examples, rows, columns)`` on its own (zarr's orthogonal selection);
    this gives what numpy gives for the same key. They differ in two cases: numpy pairs two index arrays element by
    element (refused here: an error says how to read them), and when an index array and an integer are not side
    by side (``J.matrix[0, :, [5, 0, 2]]``) numpy puts the array's axis first, which would otherwise come back
    transposed, silently."""
    key = key if isinstance(key, tuple) else (key,)
    if any(k is Ellipsis for k in key):
        at = next(i for i, k in enumerate(key) if k is Ellipsis)
        key = key[:at] + (slice(None),) * (3 - len(key) + 1) + key[at + 1 :]
    if len(key) > 3 or any(k is None or k is Ellipsis for k in key):
        raise IndexError(f"a stored Jacobian has 3 axes (examples, rows, columns); {key!r} does not index them.")
    arrays = [i for i, k in enumerate(key) if not isinstance(k, slice) and np.ndim(k) >= 1]
    if len(arrays) > 1 or any(np.ndim(key[i]) > 1 for i in arrays):
        raise IndexError(
            "index a stored Jacobian with at most one list or 1-D array (numpy would pair them element by element); "
            "read in two steps, e.g. J.matrix[examples][:, rows], or load() it."
        )
    values = read(key)
    if arrays:
        advanced = [i for i, k in enumerate(key) if not isinstance(k, slice)]
        if advanced != list(range(advanced[0], advanced[-1] + 1)):  # not side by side: numpy's array axis is first
            values = np.moveaxis(values, sum(isinstance(k, slice) for k in key[: arrays[0]]), 0)
    return values
