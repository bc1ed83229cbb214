"""A Jacobian in a zarr store (``extract --out J.zarr``), read lazily: indexing a leaf, an example or rows reads only
the chunks they lie in; :meth:`StoredJacobian.load` reads it whole; :meth:`StoredJacobian.sensitivity` streams
over it within a memory budget."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .._errors import CheckpointError, JacobianTooLargeError, SelectionError, format_bytes
from .._repr import Summarized
from ._result import LayerJacobian, column_ranges, load_jacobian_npz
from ._sensitivity import Sensitivity
from ._store_format import STATED_STORE_FORMAT, STORE_FORMAT, StoredArray, numpy_indexing
from ._stored_complex import StatedLeaf, convention, stated_rows, stated_store
from ._xarray import xarray_module

if TYPE_CHECKING:
    from ..tracing import ComplexParts

# Bytes read from a store at a time when streaming over it and no budget is given.
STREAM_BYTES = 256 * 2**20


def is_store(path) -> bool:
    """Whether ``path`` is a zarr store directory (it need not be a layersens one)."""
    return Path(path).is_dir() and (Path(path) / "zarr.json").is_file()


def load_jacobian(path) -> LayerJacobian | StoredJacobian:
    """Reads a Jacobian written by ``layersens extract --out``: a ``.npz`` file whole, as a :class:`LayerJacobian`
    (its metadata and arrays checked); a store (``--out J.zarr``) lazily, as a :class:`StoredJacobian` (index it,
    stream over it, or ``.load()`` it whole)."""
    return open_store(path) if is_store(path) else load_jacobian_npz(path)


def open_store(path, timings: tuple[float, float] | None = None) -> StoredJacobian:
    """Opens a store written by ``extract(..., out="J.zarr")`` (read-only), naming what is wrong if it cannot."""
    import zarr

    path = Path(path)
    if not is_store(path):
        raise CheckpointError(f"{path} is not a zarr store (no zarr.json inside).")
    try:
        group = zarr.open_group(str(path), mode="r")
        meta = dict(group.attrs)
    except Exception as e:  # zarr raises many kinds for a damaged store
        raise CheckpointError(f"{path} cannot be read as a zarr store ({type(e).__name__}: {e}).") from None
    if meta.get("format") not in (STORE_FORMAT, STATED_STORE_FORMAT):
        raise CheckpointError(f"{path} is a zarr store but not a layersens Jacobian (format {meta.get('format')!r}).")
    try:
        arrays = tuple(StoredArray.from_description(d, group[d["path"]].shape) for d in meta["arrays"])
        seconds, compile_seconds = timings if timings is not None else (0.0, 0.0)
        stored = StoredJacobian(
            path=path,
            layer=str(meta["layer"]),
            model=str(meta["model"]),
            framework=str(meta["framework"]),
            param_names=tuple(meta["param_names"]),
            param_shapes=tuple(tuple(int(d) for d in s) for s in meta["param_shapes"]),
            excluded_params=tuple(meta["excluded_params"]),
            frozen_params=tuple(meta["frozen_params"]),
            wrt=str(meta["wrt"]),
            mode=str(meta["mode"]),
            dtype=str(meta["dtype"]),
            device=str(meta["device"]),
            eval_mode=str(meta["eval_mode"]),
            notes=tuple(meta["notes"]),
            layout=str(meta["layout"]),
            activation_shape=tuple(int(d) for d in meta["activation_shape"]),
            num_examples=int(meta["num_examples"]),
            channels={k: (int(v["channels"]), int(v["axis"])) for k, v in meta["channels"].items()},
            arrays=arrays,
            versions=dict(meta.get("versions", {})),
            seconds=seconds,
            compile_seconds=compile_seconds,
            _group=group,
        )
        parts = convention(meta, stored)
        if (meta["format"] == STATED_STORE_FORMAT) != (parts is not None and parts.combines):
            raise ValueError(f"format {meta['format']} and complex convention {meta.get('complex')}")
        if parts is not None:
            stored = dataclasses.replace(stored, complex_mode=parts.mode.value)
            if parts.combines:
                stored = stated_store(stored, parts)
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path} has inconsistent metadata ({type(e).__name__}: {e}).") from None
    return stored


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class StoredJacobian(Summarized):
    """A layer's Jacobian on disk (see :class:`LayerJacobian` for the fields they share).

    ``J[leaf]`` is a lazy :class:`StoredLeaf` (index it: ``J[leaf][0]``, ``J[leaf][:, rows]``); :meth:`example`
    reads one example's ``(M, P)`` matrix; :meth:`load` the whole :class:`LayerJacobian` (if it fits);
    :meth:`sensitivity` streams diag(JᵀJ), unit norms and ‖J‖_F; :meth:`to_xarray` is a lazily loaded view.
    ``complete`` says whether every slab has been written (a run that was stopped leaves it ``False``: rerun it).

    A complex convention (``complex_mode`` ``complex`` or ``holomorphic``) is stored as its real problem (rows
    ``[Re h; Im h]``, columns ``w.real`` and ``w.imag``) and stated as it is read: every field and read above is
    the stated Jacobian's, as :func:`layersens.jacobian` would give it; :meth:`real_problem` reads the arrays as
    stored.
    """

    path: Path
    layer: str
    model: str
    framework: str
    param_names: tuple[str, ...]
    param_shapes: tuple[tuple[int, ...], ...]
    excluded_params: tuple[str, ...]
    frozen_params: tuple[str, ...]
    wrt: str
    mode: str
    dtype: str
    device: str
    eval_mode: str
    notes: tuple[str, ...]
    layout: str
    activation_shape: tuple[int, ...]
    num_examples: int
    channels: dict[str, tuple[int, int]]  # leaves stored as channel diagonals: (channels, layer axis)
    arrays: tuple[StoredArray, ...]
    versions: dict
    seconds: float = 0.0
    compile_seconds: float = 0.0
    verification: object = None  # a layersens.Verification when spot-checked (extract(verify=True))
    complex_mode: str = ""  # as LayerJacobian's
    _group: object = dataclasses.field(default=None, repr=False)
    # a complex convention's: how the real problem on disk is stated, and the store read as that real problem
    _parts: ComplexParts | None = dataclasses.field(default=None, repr=False)
    _real: StoredJacobian | None = dataclasses.field(default=None, repr=False)

    def _summary(self):
        done, total = self.progress
        return [
            ("path", str(self.path)),
            ("layer", self.layer),
            ("shape", (self.num_examples, self.num_outputs, self.num_params)),
            ("dtype", self.dtype),
            ("size", format_bytes(self.nbytes)),
            ("layout", self.layout),
            ("complete", f"{done}/{total} slabs" if done < total else "yes"),
            ("mode", self.mode),
            *([("complex_mode", self.complex_mode)] if self.complex_mode else []),
        ]

    @property
    def num_outputs(self) -> int:
        return int(np.prod(self.activation_shape, dtype=np.int64))

    @property
    def num_params(self) -> int:
        return sum(int(np.prod(s, dtype=np.int64)) for s in self.param_shapes)

    @property
    def nbytes(self) -> int:
        """Bytes of the dense Jacobian (what :meth:`load` would hold)."""
        return self.num_examples * self.num_outputs * self.num_params * np.dtype(self.dtype).itemsize

    @property
    def column_ranges(self) -> dict[str, tuple[int, int]]:
        return column_ranges(self.param_names, self.param_shapes)

    @property
    def disk_bytes(self) -> int:
        """Bytes the store takes on disk (compressed; all-zero chunks are not written)."""
        return sum(f.stat().st_size for f in self.path.rglob("*") if f.is_file())

    @property
    def progress(self) -> tuple[int, int]:
        """(slabs written, slabs in all), activations counted as slabs."""
        group = self._group
        done = int(np.asarray(group["ledger/activation"][...]).sum())  # type: ignore[index]
        total = self.num_examples
        for a in self.arrays:
            done += int(np.asarray(group[a.ledger_path][...]).sum())  # type: ignore[index]
            total += self.num_examples * a.num_slabs
        return done, total

    @property
    def complete(self) -> bool:
        done, total = self.progress
        return done == total

    def _check_complete(self) -> None:
        done, total = self.progress
        if done < total:
            raise CheckpointError(
                f"{self.path} is unfinished ({done} of {total} slabs written): rerun the command that made it to "
                "resume it."
            )

    @property
    def activation(self) -> np.ndarray:
        self._check_complete()
        values = np.asarray(self._group["activation"][...])  # type: ignore[index]
        return values if self._parts is None else self._parts.activation(values)

    @property
    def inputs(self) -> np.ndarray:
        return np.asarray(self._group["inputs"][...])  # type: ignore[index]

    def __getitem__(self, name: str) -> StoredLeaf | StatedLeaf:
        """The lazy Jacobian w.r.t. leaf ``name``: ``(examples, M, P_leaf)``, read when indexed."""
        if self._real is not None:  # a stated leaf is read from the real problem's leaves, not an array of its own
            if name in self.param_names:
                self._check_complete()
                return StatedLeaf(self, name)
        else:
            for a in self.arrays:
                if a.leaf == name:
                    self._check_complete()
                    return self._array_leaf(name)
        raise KeyError(f"{name!r} is not an upstream parameter of {self.layer!r}; they are {list(self.param_names)}.")

    def _array_leaf(self, name: str) -> StoredLeaf:
        """Leaf ``name``'s array as stored (its ledgers not read: the caller checked them)."""
        return StoredLeaf(self, next(a for a in self.arrays if a.leaf == name))

    @property
    def matrix(self) -> StoredMatrix:
        """The flat ``(examples, M, P)`` view, lazy: ``J.matrix[n, i]`` reads row ``i`` of example ``n`` only."""
        self._check_complete()
        return StoredMatrix(self)

    def max_abs(self, max_memory: int | None = None) -> float:
        """The largest ``|J|`` entry, read a block of rows at a time (about ``max_memory`` bytes)."""
        best = 0.0
        for _, _, _, block in self._read_rows(max_memory):
            best = max(best, float(np.max(np.abs(block))) if block.size else 0.0)
        return best

    def _read_rows(self, max_memory: int | None, copies: int = 1, progress=None):
        """``(leaf, example, first row, rows)`` of every leaf, as stored (channel diagonals as such, see
        :attr:`channels`), each block of rows small enough that ``copies`` of it fit in ``max_memory`` (default
        :data:`STREAM_BYTES`); ``progress(done, total)`` after each."""
        self._check_complete()
        budget = STREAM_BYTES if max_memory is None else max_memory
        if self._real is not None:
            yield from stated_rows(self, budget, copies, progress)
            return
        item = np.dtype(self.dtype).itemsize
        reads = []
        for a in self.arrays:
            step = max(1, budget // max(1, a.shape[2] * item * copies))
            reads += [(a, n, r0, step) for n in range(self.num_examples) for r0 in range(0, a.shape[1], step)]
        data = {a.path: self._group[a.path] for a in self.arrays}  # type: ignore[index]
        for done, (a, n, r0, step) in enumerate(reads, 1):
            yield a.leaf, n, r0, np.asarray(data[a.path][n, r0 : r0 + step])
            if progress is not None:
                progress(done, len(reads))

    def example(self, n: int) -> np.ndarray:
        """Example ``n``'s ``(M, P)`` matrix (reads that example's chunks only)."""
        return np.concatenate([self[name][n] for name in self.param_names], axis=-1)

    def load(self, max_bytes: int | None = None) -> LayerJacobian:
        """The whole Jacobian in memory as a :class:`LayerJacobian` (refused if larger than ``max_bytes``)."""
        if max_bytes is not None and self.nbytes > max_bytes:
            raise JacobianTooLargeError(
                f"{self.path} holds {format_bytes(self.nbytes)} of Jacobian, more than {format_bytes(max_bytes)}; "
                "index it lazily (J[leaf][example]) or stream over it (J.sensitivity())."
            )
        matrix = np.stack([self.example(n) for n in range(self.num_examples)]) if self.num_examples else None
        matrix.flags.writeable = False  # type: ignore[union-attr]
        return LayerJacobian(
            layer=self.layer,
            model=self.model,
            framework=self.framework,
            matrix=matrix,  # type: ignore[arg-type]
            activation=self.activation,
            inputs=self.inputs,
            param_names=self.param_names,
            param_shapes=self.param_shapes,
            excluded_params=self.excluded_params,
            frozen_params=self.frozen_params,
            wrt=self.wrt,
            mode=self.mode,
            dtype=self.dtype,
            device=self.device,
            eval_mode=self.eval_mode,
            notes=self.notes,
            seconds=self.seconds,
            compile_seconds=self.compile_seconds,
            complex_mode=self.complex_mode,
        )

    def real_problem(self) -> StoredJacobian:
        """The store read as the real problem it holds: itself, unless a complex convention is stated from it
        (then rows ``[Re h; Im h]`` and columns ``w.real`` and ``w.imag``, real, as the split's real problem has
        them: what ``layersens.verify`` checks)."""
        return self if self._real is None else self._real

    def to_xarray(self):
        """A lazily loaded ``xarray.Dataset``: one variable per leaf over ``(example, unit, <leaf>_parameter)``
        (``<leaf>_within`` for a leaf stored as its channel diagonal), read when its values are asked for."""
        if self._real is not None:
            raise SelectionError(
                f"{self.path} holds the real problem of complex_mode {self.complex_mode!r}, which xarray would show "
                "as stored, not stated: use J.load().to_xarray() for the stated Jacobian, or "
                "J.real_problem().to_xarray() for the arrays as stored."
            )
        self._check_complete()
        xr = xarray_module("StoredJacobian.to_xarray")
        parts = []
        for kind in sorted({a.path.split("/")[0] for a in self.arrays}):
            ds = xr.open_zarr(str(self.path), group=kind, consolidated=False, zarr_format=3)
            parts.append(ds.rename({a.path.split("/")[1]: a.leaf for a in self.arrays if a.path.startswith(kind)}))
        ds = xr.merge(parts)
        ds.attrs.update({"layer": self.layer, "model": self.model, "mode": self.mode, "layout": self.layout})
        return ds

    def sensitivity(self, max_memory: int | None = None, progress=None) -> Sensitivity:
        """The exact :class:`Sensitivity` (diag(JᵀJ) per parameter, ‖∂h_i/∂θ‖ per unit, ‖J‖_F), streamed over the
        store: memory ``max_memory`` for the rows read at a time, plus P + M float64 numbers per example.
        ``progress(done, total)`` is told of the reads."""
        columns, rows = self.sensitivity_sums(max_memory, progress)
        E = self.num_examples
        return Sensitivity(
            layer=self.layer,
            model=self.model,
            param_names=self.param_names,
            param_shapes=self.param_shapes,
            activation_shape=self.activation_shape,
            wrt=self.wrt,
            mode=self.mode,
            device=self.device,
            parameter={n: columns[n].reshape((E,) + self._shape(n)) for n in self.param_names},
            unit=np.sqrt(rows).reshape((E,) + self.activation_shape),
            frobenius=np.sqrt(rows.sum(axis=1)),
            notes=self.notes + (f"streamed from {self.path}",),
        )

    def sensitivity_sums(self, max_memory: int | None = None, progress=None):
        """Σ_i |J[i, p]|² per parameter (leaf → ``(examples, P_leaf)``) and Σ_p |J[i, p]|² per unit
        (``(examples, M)``), float64, reading at most about ``max_memory`` bytes at a time (default
        :data:`STREAM_BYTES`)."""
        E, M = self.num_examples, self.num_outputs
        columns = {n: np.zeros((E, int(np.prod(self._shape(n))))) for n in self.param_names}
        rows = np.zeros((E, M))
        for leaf, n, r0, values in self._read_rows(max_memory, copies=2, progress=progress):  # room for the squares
            block = _squared(values)
            rows[n, r0 : r0 + len(block)] += block.sum(axis=1)
            channel = self.channels.get(leaf)
            if channel is None:
                columns[leaf][n] += block.sum(axis=0)
            else:  # (r, w) is column (w, c) with c = r's channel: sum rows channel by channel
                C, axis = channel
                chan = _row_channels(self.activation_shape, axis, r0, r0 + len(block))
                sums = np.zeros((block.shape[1], C))
                np.add.at(sums.T, chan, block)
                columns[leaf][n] += sums.reshape(-1)
        return columns, rows

    def _shape(self, leaf: str) -> tuple[int, ...]:
        return self.param_shapes[self.param_names.index(leaf)]


def _squared(values: np.ndarray) -> np.ndarray:
    """|values|², float64 (a complex Jacobian's norms are those of its moduli)."""
    if np.iscomplexobj(values):
        return np.square(values.real, dtype=np.float64) + np.square(values.imag, dtype=np.float64)
    return np.square(values, dtype=np.float64)


def _row_channels(activation_shape, axis: int, start: int, stop: int) -> np.ndarray:
    """The channel (index along ``axis``) of each flat activation element ``start .. stop``."""
    axis %= len(activation_shape)
    stride = int(np.prod(activation_shape[axis + 1 :], dtype=np.int64))
    return (np.arange(start, stop) // stride) % activation_shape[axis]


@dataclasses.dataclass(frozen=True, repr=False)
class StoredLeaf:
    """The Jacobian w.r.t. one leaf, ``(examples, M, P_leaf)``, on disk: indexing reads only what it covers.
    A leaf stored as its channel diagonal is expanded (zeros off the diagonal) as it is read."""

    stored: StoredJacobian
    array: StoredArray

    def __repr__(self) -> str:
        return f"StoredLeaf({self.array.leaf!r}, shape={self.shape}, dtype={self.stored.dtype})"

    @property
    def shape(self) -> tuple[int, int, int]:
        E, M = self.stored.num_examples, self.stored.num_outputs
        return (E, M, int(np.prod(self.stored._shape(self.array.leaf), dtype=np.int64)))

    def __array__(self, dtype=None, copy=None):
        return np.asarray(self[:], dtype=dtype)

    def __getitem__(self, key) -> np.ndarray:
        return numpy_indexing(self._read, key)

    def _read(self, key) -> np.ndarray:
        """Each axis selected on its own (zarr's orthogonal selection); see :func:`numpy_indexing`."""
        key = key if isinstance(key, tuple) else (key,)
        key = key + (slice(None),) * (3 - len(key))
        # slices clamped as numpy clamps them (zarr refuses a stop past the end)
        key = tuple(slice(*k.indices(n)) if isinstance(k, slice) else k for k, n in zip(key, self.shape))
        data = self.stored._group[self.array.path]  # type: ignore[index]
        channel = self.stored.channels.get(self.array.leaf)
        if channel is None:
            if any(isinstance(k, (np.ndarray, list)) for k in key):
                return np.asarray(data.get_orthogonal_selection(key))
            return np.asarray(data[key])
        C, axis = channel
        E, M, P = self.shape
        examples, rows, cols = (np.arange(n)[k] for n, k in zip((E, M, P), key))
        within = np.unique(cols // C)  # only the within-channel columns asked for are read
        values = np.asarray(data.get_orthogonal_selection((np.atleast_1d(examples), np.atleast_1d(rows), within)))
        row_c = _row_channels(self.stored.activation_shape, axis, 0, M)[np.atleast_1d(rows)]
        w_at = np.searchsorted(within, np.atleast_1d(cols) // C)
        gathered = values[:, :, w_at]  # (e, r, c_cols)
        mask = row_c[:, None] == (np.atleast_1d(cols) % C)[None, :]
        out = np.where(mask[None], gathered, 0).astype(values.dtype)
        squeeze = tuple(i for i, k in enumerate(key) if isinstance(k, (int, np.integer)))
        return out.squeeze(axis=squeeze) if squeeze else out


@dataclasses.dataclass(frozen=True, repr=False)
class StoredMatrix:
    """A stored Jacobian's flat ``(examples, M, P)`` matrix, read only where indexed (columns are gathered from
    the leaves they belong to)."""

    stored: StoredJacobian

    def __repr__(self) -> str:
        return f"StoredMatrix(shape={self.shape}, dtype={self.dtype}, path={str(self.stored.path)!r})"

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.stored.num_examples, self.stored.num_outputs, self.stored.num_params)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.stored.dtype)

    @property
    def ndim(self) -> int:
        return 3

    def __array__(self, dtype=None, copy=None):
        return np.asarray(self[:], dtype=dtype)

    def __getitem__(self, key) -> np.ndarray:
        return numpy_indexing(self._read, key)

    def _read(self, key) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        key = key + (slice(None),) * (3 - len(key))
        e, r, c = key
        columns = np.arange(self.shape[2])[c]
        scalar = np.ndim(columns) == 0
        columns = np.atleast_1d(columns)
        parts, order = [], []
        for name, (start, stop) in self.stored.column_ranges.items():
            inside = (columns >= start) & (columns < stop)
            if inside.any():
                parts.append(self.stored[name]._read((e, r, columns[inside] - start)))
                order.append(np.flatnonzero(inside))
        if not parts:
            return np.zeros(self.shape[:2] + (0,), self.dtype)[e, r]
        values = np.concatenate(parts, axis=-1)
        values = values[..., np.argsort(np.concatenate(order), kind="stable")]
        return values[..., 0] if scalar else values
