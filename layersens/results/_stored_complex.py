"""A store of a complex convention (``complex_mode`` ``complex`` or ``holomorphic``, see
``layersens.tracing._complex``): its arrays hold the real problem's Jacobian (rows ``[Re h; Im h]``, columns
``w.real`` and ``w.imag``) exactly as the real problem is computed, resumable and fingerprinted like any other;
its metadata holds the convention (``ComplexParts.describe``). The reader states what it reads: row ``m`` of the
stated Jacobian is rows ``m`` and ``M + m`` of the real one, and the columns of ``w`` and ``conj(w)`` are made of
those of ``w.real`` and ``w.imag`` (``ComplexParts.state_rows`` and ``state_columns``, the rules the dense result
is stated with)."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import numpy as np

from ._store_format import numpy_indexing

if TYPE_CHECKING:
    from ..tracing import ComplexParts
    from ._stored import StoredJacobian

# Blocks of stated rows a streamed read holds at once beyond the caller's: the real and imaginary rows of up to two
# real leaves, each stated, and the Wirtinger combination's temporaries.
STATING_COPIES = 6


def convention(meta: dict, stored: StoredJacobian) -> ComplexParts | None:
    """The convention a store's metadata records (``None`` for a real model), checked against its arrays
    (``ValueError`` where they disagree)."""
    described = meta.get("complex")
    if described is None:
        return None
    from ..tracing import ComplexParts

    parts = ComplexParts.from_description(described)
    if parts.real_leaves() != tuple(zip(stored.param_names, stored.param_shapes)):
        raise ValueError(
            f"complex leaves {dict(parts.real_leaves())} as the real problem's, and "
            f"{dict(zip(stored.param_names, stored.param_shapes))} stored"
        )
    if parts.stacked and stored.activation_shape[:1] != (2,):
        raise ValueError(f"stacked [Re h; Im h] rows and an activation of shape {stored.activation_shape}")
    if parts.combines and np.finfo(parts.dtype).dtype != np.dtype(stored.dtype):
        raise ValueError(f"a {parts.dtype} Jacobian stated from {stored.dtype} arrays")
    return parts


def stated_store(real: StoredJacobian, parts: ComplexParts) -> StoredJacobian:
    """``real`` (the store read as its real problem) with every field and read the stated Jacobian's."""
    leaves = parts.stated_leaves()
    problem = dataclasses.replace(
        real,
        complex_mode="",
        notes=real.notes + (f"the real problem of complex_mode {parts.mode.value!r}, as stored",),
    )
    return dataclasses.replace(
        real,
        param_names=tuple(name for name, _ in leaves),
        param_shapes=tuple(shape for _, shape in leaves),
        activation_shape=real.activation_shape[1:] if parts.stacked else real.activation_shape,
        dtype=str(np.dtype(parts.dtype)),
        channels={},  # channel diagonals are expanded as the real problem's leaves are read
        complex_mode=parts.mode.value,
        _parts=parts,
        _real=problem,
    )


def _row_keys(rows, M: int, stacked: bool) -> list:
    """The real problem's row keys for the stated rows ``rows`` (a key on ``M`` rows): ``[rows]``, or the rows of
    ``Re h`` and of ``Im h`` (``M`` further down) when stacked. Slices with a positive step stay slices (contiguous
    reads stay contiguous); anything else becomes indices (zarr reads no reversed slice)."""
    if isinstance(rows, slice) and (rows.step is None or rows.step > 0):
        start, stop, step = rows.indices(M)
        real, imag = slice(start, stop, step), slice(start + M, stop + M, step)
    else:
        real = np.arange(M)[rows]  # an integer, an index or boolean array, a reversed slice: as numpy reads them
        imag = real + M
    return [real, imag] if stacked else [real]


def stated_values(stored: StoredJacobian, names, key) -> list[np.ndarray]:
    """The stated leaves ``names`` of ``stored`` at ``key`` (``(examples, rows, leaf columns)``), which share their
    real leaves (``w`` and ``conj(w)``): each of those is read once."""
    parts, real = stored._parts, stored._real
    assert parts is not None and real is not None, "a stated store"
    key = key if isinstance(key, tuple) else (key,)
    key = key + (slice(None),) * (3 - len(key))
    examples, rows, columns = key
    sources = parts.sources()[names[0]]
    assert all(parts.sources()[n] == sources for n in names), "stated leaves of the same real leaves"
    row_keys = _row_keys(rows, stored.num_outputs, parts.stacked)
    # the real leaves' arrays, not ``real[s]``: that would read every ledger again (the caller read them once)
    leaves = [real._array_leaf(s) for s in sources]
    read = [parts.state_rows(*(leaf._read((examples, r, columns)) for r in row_keys)) for leaf in leaves]
    return [parts.state_columns(name, read) for name in names]


def stated_rows(stored: StoredJacobian, budget: int, copies: int, progress):
    """``(leaf, example, first row, rows)`` of every stated leaf of ``stored``, each block of rows small enough that
    ``copies`` of it (and the statement's own, :data:`STATING_COPIES`) fit in ``budget`` bytes; the Wirtinger pair
    ``w``, ``conj(w)`` from one read of ``w.real`` and ``w.imag``."""
    parts = stored._parts
    assert parts is not None, "a stated store"
    groups: dict[tuple[str, ...], list[str]] = {}
    for name, sources in parts.sources().items():
        groups.setdefault(sources, []).append(name)
    item = np.dtype(stored.dtype).itemsize
    reads = []
    for names in groups.values():
        width = len(names) * int(np.prod(stored._shape(names[0]), dtype=np.int64))
        step = max(1, budget // max(1, width * item * (copies + STATING_COPIES)))
        reads += [(names, n, r0, step) for n in range(stored.num_examples) for r0 in range(0, stored.num_outputs, step)]
    for done, (names, n, r0, step) in enumerate(reads, 1):
        for name, values in zip(names, stated_values(stored, names, (n, slice(r0, r0 + step)))):
            yield name, n, r0, values
        if progress is not None:
            progress(done, len(reads))


@dataclasses.dataclass(frozen=True, repr=False)
class StatedLeaf:
    """The stated Jacobian w.r.t. one leaf of a complex convention's store, ``(examples, M, P_leaf)``, read (from
    the real problem's leaves) only where indexed, as :class:`StoredLeaf` is."""

    stored: StoredJacobian
    leaf: str

    def __repr__(self) -> str:
        return f"StatedLeaf({self.leaf!r}, shape={self.shape}, dtype={self.stored.dtype})"

    @property
    def shape(self) -> tuple[int, int, int]:
        E, M = self.stored.num_examples, self.stored.num_outputs
        return (E, M, int(np.prod(self.stored._shape(self.leaf), dtype=np.int64)))

    def __array__(self, dtype=None, copy=None):
        return np.asarray(self[:], dtype=dtype)

    def __getitem__(self, key) -> np.ndarray:
        return numpy_indexing(self._read, key)

    def _read(self, key) -> np.ndarray:
        return stated_values(self.stored, (self.leaf,), key)[0]
