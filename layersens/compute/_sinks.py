"""Sinks: where blocks of the Jacobian go. One interface, ``begin(job)``, ``put(block)``, ``finish(done)``: the
dense matrix and the compressed per-channel form are each one sink; a file on disk or a summary accumulator is
one more, not a new path through the computation.

The dense matrix starts as zeros: fresh zeroed memory costs only its page faults, so a block that is mostly
zeros is written once, and only where it is nonzero (through a strided view of its diagonal,
:func:`place_diagonal`).
"""

from __future__ import annotations

import abc
import dataclasses
from typing import TYPE_CHECKING, Generic, Mapping, TypeVar

import numpy as np

from ..analysis import ChannelStructure
from ..planning import Plan, leaf_size
from ..results import CompressedJacobian, LayerJacobian
from ._blocks import JacobianBlock, Layout, first_axis_columns

if TYPE_CHECKING:
    from ..tracing import LayerSplit

Result = TypeVar("Result")


@dataclasses.dataclass(frozen=True)
class Job:
    """What a sink is told when a run begins."""

    split: LayerSplit
    plan: Plan
    structure: Mapping[str, ChannelStructure]  # of the split's leaves (``analysis``), as the plan used it
    num_examples: int
    device: str
    inputs: np.ndarray | None = dataclasses.field(default=None, repr=False)  # the examples, checked and cast


@dataclasses.dataclass(frozen=True)
class Done:
    """What a sink is told when every block has been put: the examples, the layer's values, the timings."""

    inputs: np.ndarray
    activation: np.ndarray
    seconds: float
    compile_seconds: float
    # what computed the blocks when it was not the plan's blocks (a small layer's trial chose plain reverse or
    # forward mode, ``_side_by_side``), and what the user should know of it
    method: str | None = None
    notes: tuple[str, ...] = ()


class Sink(abc.ABC, Generic[Result]):
    """Receives the blocks of one run and makes its result. A sink is used for one run at a time; ``begin``
    starts it afresh.

    ``whole_matrix``: the sink can take one example's whole ``(M, P)`` matrix as a single ``Layout.WHOLE``
    block, and a group's as one ``Layout.EXAMPLES`` block; the computation then builds small examples in one
    program (see ``compute.ExecutionPolicy`` and ``compute._side_by_side``).
    """

    whole_matrix: bool = False
    # ``channel_examples``: the sink takes a group of examples' compressed form as ``Layout.CHANNEL_EXAMPLES``
    # blocks (one per coloured leaf) and a ``Layout.EXAMPLES`` block over the other leaves
    # (``compute._compressed_examples``).
    channel_examples: bool = False
    # ``shared``: processes of a multi-process run (``jax.distributed``) may each feed their own share of the
    # blocks to their own instance, and the shares make the whole (a store on a shared disk). Other sinks get
    # every block in every process.
    shared: bool = False

    @abc.abstractmethod
    def begin(self, job: Job) -> None:
        """Prepares for ``job.num_examples`` examples of ``job.split``."""

    def needed(self, example: int, names: tuple[str, ...] | None, start: int, stop: int) -> bool:
        """Whether basis vectors ``start .. stop`` of the plan block over ``names`` (``None``: all of example
        ``example``) must still be computed; a sink that resumes earlier work says no for what it holds."""
        return True

    def activation(self, example: int, values: np.ndarray) -> None:
        """Takes one example's layer values as they are computed (a sink that writes as it goes keeps them)."""

    @abc.abstractmethod
    def put(self, block: JacobianBlock) -> None:
        """Takes one block (its values may be a read-only view of device memory: copy what is kept)."""

    @abc.abstractmethod
    def finish(self, done: Done) -> Result:
        """The result of the run."""


def _starts(split: LayerSplit, names) -> dict[str, int]:
    starts, at = {}, 0
    for name in names:
        starts[name] = at
        at += leaf_size(split, name)
    return starts


def within_ranges(within: Mapping[str, int], names):
    """``(name, a, b)`` for adjacent channel-diagonal leaves ``names``: leaf ``name``'s within-channel columns
    (``within[name]`` of them) are ``a .. b`` of the block's concatenated within-channel axis."""
    at = 0
    for name in names:
        yield name, at, at + within[name]
        at += within[name]


def place_diagonal(
    matrix: np.ndarray,
    row: int,
    column: int,
    row_shape,
    channel_axis: int,
    values: np.ndarray,
    column_strides: tuple[int, int] | None = None,
):
    """Writes ``values`` (``row_shape + (W,)``) onto the channel diagonal of a block of ``matrix`` (C-contiguous,
    ``(M, P)``) that starts at ``(row, column)``, whose rows are laid out as ``row_shape``: entry ``(r, (w, c))``
    with ``r[channel_axis] == c`` gets ``values[r + (w,)]``. Column ``(w, c)`` lies ``w·sw + c·sc`` right of
    ``column`` for ``column_strides`` ``(sw, sc)``: ``(C, 1)`` (the default, a leaf's channel last) or ``(1, W)``
    (``ChannelStructure.column_strides``)."""
    item = matrix.itemsize
    num_params = matrix.shape[1]
    C = row_shape[channel_axis]
    sw, sc = (C, 1) if column_strides is None else column_strides
    row_strides = [int(np.prod(row_shape[a + 1 :], dtype=np.int64)) * num_params * item for a in range(len(row_shape))]
    row_strides[channel_axis] += sc * item  # moving one channel down the rows moves sc columns right
    flat = matrix.reshape(-1)
    start = row * num_params + column
    view = np.lib.stride_tricks.as_strided(
        flat[start:], shape=tuple(row_shape) + (values.shape[-1],), strides=tuple(row_strides) + (sw * item,)
    )
    view[...] = values


def layer_jacobian(job: Job, done: Done, matrix: np.ndarray, names=None) -> LayerJacobian:
    """The :class:`LayerJacobian` of a run over the leaves ``names`` (default: every differentiated leaf)."""
    split = job.split
    if names is None:
        names, shapes = split.param_names, split.param_shapes  # kept by the split: this runs on every call
    else:
        names = tuple(names)
        shapes = tuple(tuple(np.shape(split.params[n])) for n in names)
    return LayerJacobian(
        layer=split.layer,
        model=split.model.name,
        framework=split.model.framework,
        matrix=matrix,
        activation=done.activation,
        inputs=done.inputs,
        param_names=names,
        param_shapes=shapes,
        excluded_params=split.excluded,
        frozen_params=split.frozen,
        wrt=str(split.wrt),
        mode=done.method or job.plan.describe(),
        dtype=str(np.dtype(split.activation_dtype)),
        device=job.device,
        eval_mode=split.model.eval_mode,
        compile_seconds=done.compile_seconds,
        seconds=done.seconds,
        notes=tuple(split.notes) + tuple(job.plan.notes) + tuple(done.notes),
        complex_mode="" if split.complex is None else split.complex.mode.value,
    )


class _Matrix:
    """The ``(examples, M, P_names)`` matrix over ``names``, columns in that order, and the placing of every
    dense layout into it (shared by both sinks)."""

    def __init__(self, split: LayerSplit, structure: Mapping[str, ChannelStructure], num_examples: int, names):
        self.names = tuple(names)
        self.starts = _starts(split, self.names)
        self.shapes = {n: np.shape(split.params[n]) for n in self.names}
        self.structure = structure
        self.activation_shape = split.activation_shape
        width = sum(leaf_size(split, n) for n in self.names)
        self.matrix = np.zeros((num_examples, split.num_outputs, width), np.dtype(split.activation_dtype))

    def put(self, block: JacobianBlock) -> None:
        n, names, offset, values = block.example, block.names, block.offset, block.values
        matrix = self.matrix[n]
        if block.layout is Layout.COLUMNS:
            column = self.starts[names[0]] + offset
            matrix[:, column : column + values.shape[1]] = values
        elif block.layout is Layout.ROWS:
            start = self.starts[names[0]]
            matrix[offset : offset + values.shape[0], start : start + values.shape[1]] = values
        elif block.layout is Layout.FIRST_AXIS_COLUMNS:
            columns = first_axis_columns(self.shapes[names[0]], offset, values.shape[1])
            matrix[:, self.starts[names[0]] + columns] = values
        elif block.layout is Layout.CHANNEL_COLUMNS:
            s = self.structure[names[0]]
            strides = self._strides(names)
            column = self.starts[names[0]] + offset * strides[0]
            place_diagonal(matrix, 0, column, self.activation_shape, s.output_axis, values, strides)
        elif block.layout is Layout.CHANNEL_ROWS:
            width, channels = values.shape[:2]
            place_diagonal(
                matrix, offset * channels, self.starts[names[0]], (width, channels), 1, values, self._strides(names)
            )
        else:
            raise ValueError(f"the matrix takes no {block.layout} block here")

    def _strides(self, names) -> tuple[int, int]:
        """Column strides of a colouring block's ``(w, c)`` (a channel-first leaf is a block of its own)."""
        s = self.structure[names[0]]
        return s.column_strides(int(np.prod(self.shapes[names[0]], dtype=np.int64)) // s.channels)


class DenseSink(Sink[LayerJacobian]):
    """The dense :class:`LayerJacobian` ``(examples, M, P)``, read-only.

    Memory: the whole result on the host (zeroed pages, touched where nonzero). Use when it fits.
    """

    whole_matrix = True

    def begin(self, job: Job) -> None:
        self.job = job
        self.whole: np.ndarray | None = None
        # Made on the first block that needs it: one example's whole matrix becomes the result as it is, and a
        # zeroed matrix below glibc's mmap threshold (relu1: 14.4 MiB) would be memset, 1.3 ms for nothing.
        self._target: _Matrix | None = None

    @property
    def target(self) -> _Matrix:
        if self._target is None:
            job = self.job
            self._target = _Matrix(job.split, job.structure, job.num_examples, job.split.param_names)
        return self._target

    def put(self, block: JacobianBlock) -> None:
        if block.layout is Layout.WHOLE and self.job.num_examples == 1:
            self.whole = block.values[None]  # zero-copy: the program's own output becomes the result
        elif block.layout is Layout.WHOLE:
            self.target.matrix[block.example] = block.values
        elif block.layout is Layout.EXAMPLES and len(block.values) == self.job.num_examples:
            self.whole = block.values
        elif block.layout is Layout.EXAMPLES:
            self.target.matrix[block.example : block.example + len(block.values)] = block.values
        else:
            self.target.put(block)

    def finish(self, done: Done) -> LayerJacobian:
        matrix = self.target.matrix if self.whole is None else self.whole
        if matrix.flags.writeable:
            matrix.flags.writeable = False
        return layer_jacobian(self.job, done, matrix)


class CompressedSink(Sink[CompressedJacobian]):
    """The :class:`CompressedJacobian`: per-channel blocks ``(examples,) + activation_shape + (W,)`` for the
    leaves the plan colours, a dense matrix over the others.

    Memory: 1 / C of the dense size for each coloured leaf. Use when the dense matrix is too large or not needed.
    """

    channel_examples = True

    def begin(self, job: Job) -> None:
        split = job.split
        coloured = set(job.plan.coloured)
        structure = job.structure
        self.job = job
        self.structure = {n: structure[n] for n in split.param_names if n in coloured}
        self.within = {n: leaf_size(split, n) // self.structure[n].channels for n in self.structure}
        # made on first use: a group holding every example becomes the result as it is (zeroing it is wasted)
        self._blocks: dict[str, np.ndarray] = {}
        self._dense: _Matrix | None = None
        self._dense_whole: np.ndarray | None = None
        self.dense_names = [n for n in split.param_names if n not in coloured]

    def _block(self, name: str) -> np.ndarray:
        if name not in self._blocks:
            job = self.job
            shape = (job.num_examples,) + job.split.activation_shape + (self.within[name],)
            self._blocks[name] = np.zeros(shape, np.dtype(job.split.activation_dtype))
        return self._blocks[name]

    @property
    def dense(self) -> _Matrix:
        if self._dense is None:
            self._dense = _Matrix(self.job.split, self.job.structure, self.job.num_examples, self.dense_names)
        return self._dense

    def _leaves(self, names):
        return within_ranges(self.within, names)

    def put(self, block: JacobianBlock) -> None:
        n, offset, values = block.example, block.offset, block.values
        every = len(values) == self.job.num_examples
        if block.layout is Layout.CHANNEL_COLUMNS:
            width = values.shape[-1]
            for name, a, b in self._leaves(block.names):
                lo, hi = max(offset, a), min(offset + width, b)
                if lo < hi:
                    self._block(name)[n][..., lo - a : hi - a] = values[..., lo - offset : hi - offset]
        elif block.layout is Layout.CHANNEL_ROWS:
            width, channels = values.shape[:2]
            for name, a, b in self._leaves(block.names):
                rows = self._block(name)[n].reshape(-1, channels, b - a)  # (S, C, W): the layer's channels last
                rows[offset : offset + width] = values[:, :, a:b]
        elif block.layout is Layout.CHANNEL_EXAMPLES and every:
            self._blocks[block.names[0]] = values  # zero-copy: the program's output becomes the result
        elif block.layout is Layout.CHANNEL_EXAMPLES:
            self._block(block.names[0])[n : n + len(values)] = values
        elif block.layout is Layout.EXAMPLES and every:
            self._dense_whole = values
        elif block.layout is Layout.EXAMPLES:
            self.dense.matrix[n : n + len(values)] = values
        else:
            self.dense.put(block)

    def finish(self, done: Done) -> CompressedJacobian:
        split = self.job.split
        matrix = self.dense.matrix if self._dense_whole is None else self._dense_whole
        dense = layer_jacobian(self.job, done, matrix, names=self.dense_names)
        return CompressedJacobian(
            layer=split.layer,
            param_names=split.param_names,
            param_shapes=split.param_shapes,
            channel_blocks={n: self._block(n) for n in self.structure},
            structure=self.structure,
            dense_part=dense,
        )
