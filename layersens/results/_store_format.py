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

STORE_FORMAT = "layersens-jacobian-store/1"
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
