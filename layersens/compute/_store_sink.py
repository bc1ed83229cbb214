"""``StoreSink``: the Jacobian streamed into a zarr store on disk, slab by slab, resumably (see
``results._store_format`` for the layout and the ledger).

Memory: one slab per leaf being filled (a slab holds at most ``slab_bytes``; a reverse-mode block fills one slab
per leaf at a time) plus the chunk the device hands over; never the whole matrix. A slab is written when every one
of its rows or columns has arrived, then recorded in the ledger; a run that is killed loses at most the slabs in
flight, and a rerun of the same command skips what the ledger records (``needed``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import jax
import numpy as np

from .._atomic import atomic_directory, check_name, resolve_target
from .._errors import OutputError
from ..planning import SeparatedForwardFirst, leaf_size
from ..results import STATED_STORE_FORMAT, STORE_FORMAT, StoredArray, StoredJacobian, open_store, slabs_along
from ._blocks import JacobianBlock, Layout
from ._sinks import Done, Job, Sink, _starts, place_diagonal, within_ranges

if TYPE_CHECKING:
    from ..tracing import LayerSplit

# Slabs being filled may take this share of the working-memory budget (the device's chunk takes the rest).
SLAB_SHARE = 0.25


def _digest(update) -> str:
    h = hashlib.sha256()
    update(h)
    return "sha256:" + h.hexdigest()


def _array_bytes(h, name: str, value) -> None:
    a = np.ascontiguousarray(np.asarray(value))
    h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
    h.update(a.tobytes())


def fingerprint(split: LayerSplit, inputs: np.ndarray, methods: dict[str, str], layout: str) -> dict[str, str]:
    """What a store's values depend on, each part hashed or named, so that a rerun can be compared part by part:
    the model (every variable), the layer (its name and the traced computation up to it), what is
    differentiated, the dtype, the inputs, the method of each leaf and the layout."""

    def model(h):  # every variable of the model, by path
        for tree in (split.model.params, split.model.constants):
            for path, value in jax.tree_util.tree_leaves_with_path(tree):
                try:
                    _array_bytes(h, jax.tree_util.keystr(path), value)
                except (TypeError, ValueError):  # a PRNG key or another opaque value: its type names it
                    h.update(f"{jax.tree_util.keystr(path)}|{type(value).__name__}".encode())

    def layer(h):  # the traced computation up to the layer, and the precision it runs in
        h.update(str(split.jaxpr.jaxpr).encode())

    # The convention says what the stored numbers mean: a real layer of complex parameters is the same real
    # problem in 'real' and 'complex' mode, and a store of one must not be resumed as the other.
    convention = {} if split.complex is None else {"complex": split.complex.mode.value}
    return convention | {
        "model": f"{split.model.name} {_digest(model)}",
        "layer": f"{split.layer} {_digest(layer)}",
        "wrt": str(split.wrt),
        "dtype": str(np.dtype(split.activation_dtype)),
        "inputs": f"{inputs.shape} {_digest(lambda h: _array_bytes(h, 'inputs', inputs))}",
        "methods": ", ".join(f"{leaf}: {method}" for leaf, method in methods.items()),
        "format": layout,
    }


def _differences(old: dict, new: dict) -> list[str]:
    names = {"model": "the model", "layer": "the layer", "wrt": "what is differentiated (--wrt)", "dtype": "the dtype"}
    names |= {"inputs": "the inputs", "methods": "the methods (--mode, --device)", "format": "the format (--format)"}
    names["complex"] = "the complex convention (--complex)"
    return [f"{names.get(k, k)} ({old.get(k)!r} then, {new.get(k)!r} now)" for k in new if old.get(k) != new.get(k)]


class StoreSink(Sink[StoredJacobian]):
    """Streams the Jacobian into a zarr store at ``path`` (``.zarr`` directory), resuming one that an earlier run of
    the same computation left unfinished.

    ``compressed``: channel-diagonal leaves the plan colours are stored as their ``(examples, M, W)`` diagonals
    (``channels/``), 1 / C of their dense size; others dense. ``overwrite``: replace an existing store (otherwise
    a finished or foreign one is refused, and an unfinished one is resumed only if its fingerprint matches).
    ``slab_bytes``: memory per slab being filled (default: a quarter of the working-memory budget).

    Cost: the computation plus writing (zstd-compressed chunks; all-zero chunks are not written at all).
    Memory: see the module docstring. Use for Jacobians larger than memory, or to keep a long run resumable.
    """

    whole_matrix = False
    shared = True  # several processes may write one store: each its own slabs

    def __init__(
        self,
        path,
        *,
        compressed: bool = False,
        overwrite: bool = False,
        slab_bytes: int | None = None,
        written: Callable[[int], None] | None = None,
    ):
        self.path = Path(path)
        self.compressed = compressed
        self.overwrite = overwrite
        self.slab_bytes = slab_bytes
        self.written = written  # told the bytes of each slab written (progress displays)

    # ------------------------------------------------------------------------------------------------- layout
    def _arrays(self, job: Job) -> list[StoredArray]:
        split, plan = job.split, job.plan
        M, item = split.num_outputs, np.dtype(split.activation_dtype).itemsize
        budget = self.slab_bytes if self.slab_bytes is not None else max(1 << 20, int(plan.budget * SLAB_SHARE))
        arrays = []
        for block in plan.blocks:
            colouring = block.method.colouring
            channels = {n: job.structure[n].channels for n in block.names} if colouring else {}
            widths = {
                n: leaf_size(split, n) // channels[n] if colouring and self.compressed else leaf_size(split, n)
                for n in block.names
            }
            for name in block.names:
                K = widths[name]
                kind = "channels" if colouring and self.compressed else "dense"
                if block.method.forward:  # columns arrive in order: slabs of columns, full height
                    unit = channels[name] if colouring and not self.compressed else 1
                    slab_axis, slab = 2, slabs_along(K, M * item, budget // 2, unit)
                else:  # rows arrive in order, for every leaf of the block at once: slabs of rows
                    unit = next(iter(channels.values())) if colouring else 1
                    slab_axis, slab = 1, slabs_along(M, sum(widths.values()) * item, budget, unit)
                index = split.param_names.index(name)
                arrays.append(StoredArray(name, f"{kind}/leaf_{index}", (job.num_examples, M, K), slab_axis, slab))
        return sorted(arrays, key=lambda a: split.param_names.index(a.leaf))

    # ------------------------------------------------------------------------------------------- begin
    def begin(self, job: Job) -> None:
        import zarr

        split = job.split
        self.job = job
        if job.inputs is None:
            raise ValueError("a store records its inputs: the job must carry them")
        first = [n for n in job.plan.coloured if not job.structure[n].channel_last]
        first += [n for b in job.plan.blocks if isinstance(b.method, SeparatedForwardFirst) for n in b.names]
        if first:  # its slabs, its ledger and its readers take a coloured or separated leaf's columns as (w, c)
            raise ValueError(
                f"a store takes colouring of channel-last leaves only; the plan colours or carries apart {first} "
                "along their first axis: plan with channel_first=False (Auto, Structured) or another strategy."
            )
        methods = {n: b.method.name for b in job.plan.blocks for n in b.names}
        self.fingerprint = fingerprint(split, job.inputs, methods, "compressed" if self.compressed else "dense")
        target = resolve_target(self.path)
        self.target = target
        processes, lead = jax.process_count(), jax.process_index() == 0
        if lead:  # in a multi-process run, the first process makes the store; the others open it
            if target.exists() and self.overwrite:
                if not (target / "zarr.json").is_file():
                    raise OutputError(f"--out {self.path} exists and is not a zarr store; refusing to remove it.")
                shutil.rmtree(target)
            if not target.exists():
                self._create(job, target)
        if processes > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("layersens: the store exists")
        self.group = zarr.open_group(str(target), mode="r+")  # never "w": that would erase finished slabs
        meta = dict(self.group.attrs)
        if meta.get("format") not in (STORE_FORMAT, STATED_STORE_FORMAT):
            raise OutputError(
                f"--out {self.path} exists and is not a layersens Jacobian store; choose another name, or pass "
                "--overwrite (overwrite=True) to replace it."
            )
        differences = _differences(meta.get("fingerprint", {}), self.fingerprint)
        if differences:
            raise OutputError(
                f"--out {self.path} holds (part of) another computation: it differs in "
                + "; ".join(differences)
                + ". Rerun the command that made it to resume it, choose another name, or pass --overwrite "
                "(overwrite=True) to replace it."
            )
        self.arrays = [StoredArray.from_description(d, self.group[d["path"]].shape) for d in meta["arrays"]]
        self.by_leaf = {a.leaf: a for a in self.arrays}
        self.zarr_arrays = {a.leaf: self.group[a.path] for a in self.arrays}
        self.ledgers = {a.leaf: self.group[a.ledger_path] for a in self.arrays}
        self.done = {a.leaf: np.asarray(self.ledgers[a.leaf][...]).astype(bool) for a in self.arrays}
        self.activation_done = np.asarray(self.group["ledger/activation"][...]).astype(bool)
        self.resumed = int(sum(d.sum() for d in self.done.values()))
        self.slabs: dict[tuple[str, int, int], list] = {}  # (leaf, example, slab) -> [buffer, rows/columns filled]
        self.starts = _starts(split, split.param_names)
        self.block_of = {n: b for b in job.plan.blocks for n in b.names}
        self.within = {n: leaf_size(split, n) // job.structure[n].channels for n in self.by_leaf if n in job.structure}

    def _create(self, job: Job, target: Path) -> None:
        import zarr
        from zarr.codecs import ZstdCodec

        check_name(target, "--out")
        split = job.split
        arrays = self._arrays(job)
        dtype = np.dtype(split.activation_dtype)
        with atomic_directory(target) as tmp:  # a store appears whole, with its metadata, or not at all
            group = zarr.open_group(str(tmp), mode="w")
            x = job.inputs
            assert x is not None, "checked in begin"
            inputs = group.create_array("inputs", shape=x.shape, dtype=x.dtype, chunks=x.shape or (1,))
            inputs[...] = x
            group.create_array(
                "activation",
                shape=(job.num_examples,) + split.activation_shape,
                dtype=dtype,
                chunks=(1,) + split.activation_shape,
                fill_value=0,
            )
            group.create_array("ledger/activation", shape=(job.num_examples,), dtype="uint8", chunks=(1,))
            for a in arrays:
                leaf_dim = f"{a.leaf}_{'within' if a.path.startswith('channels') else 'parameter'}"
                group.create_array(
                    a.path,
                    shape=a.shape,
                    dtype=dtype,
                    chunks=a.chunks(dtype.itemsize),
                    fill_value=0,
                    # zstd at level 1: the same size as zarr's default level on these mostly-zero slabs, and
                    # measured 28 % faster (382 against 298 MB/s for a 50 MB relu2 slab)
                    compressors=ZstdCodec(level=1),
                    dimension_names=("example", "unit", leaf_dim),
                    attributes={"leaf": a.leaf},
                )
                group.create_array(a.ledger_path, shape=(job.num_examples, a.num_slabs), dtype="uint8", chunks=(1, 1))
            group.attrs.update(self._metadata(job, arrays))

    def _metadata(self, job: Job, arrays: list[StoredArray]) -> dict:
        import zarr

        from .. import __version__

        split = job.split
        stated = split.complex is not None and split.complex.combines
        return {
            "format": STATED_STORE_FORMAT if stated else STORE_FORMAT,
            "layout": "compressed" if self.compressed else "dense",
            "layer": split.layer,
            "model": split.model.name,
            "framework": split.model.framework,
            "param_names": list(split.param_names),
            "param_shapes": [list(s) for s in split.param_shapes],
            "excluded_params": list(split.excluded),
            "frozen_params": list(split.frozen),
            "wrt": str(split.wrt),
            "mode": job.plan.describe(),
            "dtype": str(np.dtype(split.activation_dtype)),
            "device": job.device,
            "eval_mode": split.model.eval_mode,
            "notes": list(split.notes) + list(job.plan.notes),
            "activation_shape": list(split.activation_shape),
            "num_examples": job.num_examples,
            "channels": {
                a.leaf: {"channels": job.structure[a.leaf].channels, "axis": job.structure[a.leaf].output_axis}
                for a in arrays
                if a.path.startswith("channels")
            },
            "arrays": [a.describe() for a in arrays],
            # the arrays hold the real problem; the reader states it in this convention (results._stored)
            **({} if split.complex is None else {"complex": split.complex.describe()}),
            "fingerprint": self.fingerprint,
            "versions": {
                "layersens": __version__,
                "jax": jax.__version__,
                "zarr": zarr.__version__,
                "numpy": np.__version__,
            },
        }

    # ------------------------------------------------------------------------------------------------ resume
    def needed(self, example: int, names: tuple[str, ...] | None, start: int, stop: int) -> bool:
        """False when every slab the basis vectors ``start .. stop`` of the block ``names`` (``None``: the whole
        example) would touch is already recorded as written."""
        leaves = self.arrays if names is None else [self.by_leaf[n] for n in names]
        for a in leaves:
            if names is None:
                if not self.done[a.leaf][example].all():
                    return True
                continue
            lo, hi = self._basis_to_slab_axis(a, names, start, stop)
            if hi > lo and not self.done[a.leaf][example][lo // a.slab : -(-hi // a.slab)].all():
                return True
        return names is None and not self.activation_done[example]

    def _basis_to_slab_axis(self, a: StoredArray, names, start, stop) -> tuple[int, int]:
        """The rows or columns of leaf ``a`` that basis vectors ``start .. stop`` of the block ``names`` reach."""
        kind = self.block_of[a.leaf]
        if not kind.method.forward:
            C = self.job.structure[a.leaf].channels if kind.method.colouring else 1
            return start * C, stop * C
        if kind.method.colouring:
            at, end = next((a0, b0) for name, a0, b0 in within_ranges(self.within, names) if name == a.leaf)
            lo, hi = max(0, start - at), max(0, min(stop, end) - at)
            C = 1 if a.path.startswith("channels") else self.job.structure[a.leaf].channels
            return lo * C, hi * C
        begin = self.starts[a.leaf] - self.starts[names[0]]
        return max(0, start - begin), max(0, min(stop - begin, a.shape[2]))

    # -------------------------------------------------------------------------------------------------- put
    def put(self, block: JacobianBlock) -> None:
        n, names, offset, values = block.example, block.names, block.offset, block.values
        layout = block.layout
        if layout is Layout.COLUMNS:  # (M, width) at columns start(names[0]) + offset, across leaves
            first = self.starts[names[0]] + offset
            for name in names:
                a = self.by_leaf[name]
                lo = max(first, self.starts[name]) - self.starts[name]
                hi = min(first + values.shape[1], self.starts[name] + a.shape[2]) - self.starts[name]
                if lo < hi:
                    part = values[:, lo + self.starts[name] - first : hi + self.starts[name] - first]
                    self._piece(a, n, lo, hi, lambda t, at, i, j, part=part, lo=lo: _copy(t, at, part, i - lo, j - lo))
        elif layout is Layout.ROWS:  # (width, P_leaf): rows offset ... of one leaf
            a = self.by_leaf[names[0]]
            lo, hi = offset, offset + values.shape[0]
            self._piece(a, n, lo, hi, lambda t, at, i, j: _copy(t, at, values, i - lo, j - lo, axis=0))
        elif layout is Layout.CHANNEL_COLUMNS:
            self._channel_columns(n, names, offset, values)
        elif layout is Layout.CHANNEL_ROWS:
            self._channel_rows(n, names, offset, values)
        else:
            raise ValueError(f"a store takes no {layout} block")

    def _channel_columns(self, n, names, offset, values) -> None:
        """``values[*activation, width]``: within-channel columns ``offset ...`` of the adjacent leaves ``names``."""
        shape = self.job.split.activation_shape
        for name, at, end in within_ranges(self.within, names):
            a = self.by_leaf[name]
            lo, hi = max(offset, at), min(offset + values.shape[-1], end)
            if lo < hi:
                part = values[..., lo - offset : hi - offset]  # within-columns lo - at ... of this leaf
                w0 = lo - at
                if a.path.startswith("channels"):
                    flat = part.reshape(-1, hi - lo)

                    def copy(t, at_, i, j, f=flat, w0=w0):
                        _copy(t, at_, f, i - w0, j - w0)

                    self._piece(a, n, w0, w0 + hi - lo, copy)
                else:
                    s = self.job.structure[name]
                    C = s.channels

                    def fill(t, at_, i, j, part=part, w0=w0, C=C, axis=s.output_axis):
                        place_diagonal(t, 0, at_, shape, axis % len(shape), part[..., i // C - w0 : j // C - w0])

                    self._piece(a, n, w0 * C, (w0 + hi - lo) * C, fill)

    def _channel_rows(self, n, names, offset, values) -> None:
        """``values[width, C, W_run]``: positions ``offset ...`` (every channel) of the adjacent leaves ``names``."""
        width, C = values.shape[:2]
        for name, at, end in within_ranges(self.within, names):
            a, W = self.by_leaf[name], end - at
            part = values[:, :, at:end]
            lo, hi = offset * C, (offset + width) * C
            if a.path.startswith("channels"):
                flat = part.reshape(width * C, W)
                self._piece(a, n, lo, hi, lambda t, at_, i, j, f=flat, lo=lo: _copy(t, at_, f, i - lo, j - lo, axis=0))
            else:

                def fill(t, at_, i, j, part=part, lo=lo, C=C):
                    place_diagonal(t, at_, 0, ((j - i) // C, C), 1, part[(i - lo) // C : (j - lo) // C])

                self._piece(a, n, lo, hi, fill)

    def _piece(self, a: StoredArray, n: int, lo: int, hi: int, fill) -> None:
        """Rows or columns ``lo .. hi`` of leaf ``a`` of example ``n``: ``fill(target, at, i, j)`` writes its
        rows/columns ``i .. j`` into ``target`` from row/column ``at`` on. Split by slab; full slabs written."""
        for index in range(lo // a.slab, -(-hi // a.slab)):
            if self.done[a.leaf][n, index]:
                continue
            s0, s1 = a.slab_range(index)
            i, j = max(lo, s0), min(hi, s1)
            key = (a.leaf, n, index)
            entry = self.slabs.get(key)
            if entry is None:
                extent = s1 - s0
                shape = (a.shape[1], extent) if a.slab_axis == 2 else (extent, a.shape[2])
                entry = self.slabs[key] = [np.zeros(shape, self.zarr_arrays[a.leaf].dtype), 0]
            fill(entry[0], i - s0, i, j)
            entry[1] += j - i
            if entry[1] >= s1 - s0:
                self._write(a, n, index, entry[0])
                del self.slabs[key]

    def _write(self, a: StoredArray, n: int, index: int, slab: np.ndarray) -> None:
        s0, s1 = a.slab_range(index)
        region = (n, slice(None), slice(s0, s1)) if a.slab_axis == 2 else (n, slice(s0, s1), slice(None))
        self.zarr_arrays[a.leaf][region] = slab
        self.ledgers[a.leaf][n, index] = 1  # after the chunks: a slab is recorded only once it is on disk
        self.done[a.leaf][n, index] = True
        if self.written is not None:
            self.written(slab.nbytes)

    def activation(self, example: int, values: np.ndarray) -> None:
        if not self.activation_done[example]:
            self.group["activation"][example] = values
            self.group["ledger/activation"][example] = 1
            self.activation_done[example] = True

    def finish(self, done: Done) -> StoredJacobian:
        if self.slabs:  # every basis vector arrives once, so a slab left open is a defect, never a user error
            raise AssertionError(f"slabs left unwritten: {sorted(self.slabs)[:4]}")
        stored = open_store(self.target, timings=(done.seconds, done.compile_seconds))
        notes = []
        if self.resumed:
            notes.append(f"resumed: {self.resumed} slab(s) were already written by an earlier run")
        if jax.process_count() > 1:
            notes.append(f"written by {jax.process_count()} processes; this is process {jax.process_index()}")
        return dataclasses.replace(stored, notes=stored.notes + tuple(notes)) if notes else stored


def _copy(target: np.ndarray, at: int, source: np.ndarray, i: int, j: int, axis: int = 1) -> None:
    """``source``'s rows/columns ``i .. j`` into ``target`` from row/column ``at`` on."""
    if axis == 1:
        target[:, at : at + j - i] = source[:, i:j]
    else:
        target[at : at + j - i] = source[i:j]
