"""``sensitivity(split, inputs)``: exact per-parameter and per-unit sensitivity from the Jacobian's chunks, never
the matrix. Every block is squared (in float64) and summed along its two sides as it arrives: its column sums
into diag(JᵀJ), its row sums into the units' squared norms. Each basis vector reaches a sink once, so the sums are
exact whatever the strategy and chunking.

Cost: the computation of :func:`layersens.jacobian` in the same mode (the same compiled programs), plus one pass
over each block's values on the host; memory: P + M float64 numbers per example (no M × P result, no size check).
Use it when the dense Jacobian is too large or only its norms are wanted.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import numpy as np

from ..planning import Auto
from ..results import Sensitivity
from ..tracing import require_real
from ._blocks import JacobianBlock, Layout, first_axis_columns
from ._jacobian import _run
from ._sinks import Done, Job, Sink, _starts

if TYPE_CHECKING:
    from ..tracing import LayerSplit


def _squares(values: np.ndarray) -> np.ndarray:
    return np.square(values, dtype=np.float64)


class SensitivitySink(Sink[Sensitivity]):
    """Accumulates Σ_i J[i, p]² per column and Σ_p J[i, p]² per row of each example's ``(M, P)`` matrix, placing
    every layout as the dense sink does (``_Matrix.put``, ``place_diagonal``): the columns are the differentiated
    leaves in ``param_names`` order, the rows the activation's elements (row-major).

    Memory: ``examples × (P + M)`` float64. Use for :class:`Sensitivity`; see :func:`sensitivity`.
    """

    def begin(self, job: Job) -> None:
        split = job.split
        self.job = job
        self.starts = _starts(split, split.param_names)
        self.shapes = dict(zip(split.param_names, split.param_shapes))
        self.columns = np.zeros((job.num_examples, split.num_params), np.float64)  # Σ_i J[i, p]²
        self.rows = np.zeros((job.num_examples, split.num_outputs), np.float64)  # Σ_p J[i, p]²

    def put(self, block: JacobianBlock) -> None:
        n, offset, layout = block.example, block.offset, block.layout
        squares = _squares(block.values)
        start = self.starts[block.names[0]]
        columns, rows = self.columns[n], self.rows[n]
        if layout is Layout.COLUMNS:  # (M, width): columns start + offset ...
            columns[start + offset : start + offset + squares.shape[1]] += squares.sum(axis=0)
            rows += squares.sum(axis=1)
        elif layout is Layout.ROWS:  # (width, P_leaf): rows offset ... of the leaf's columns
            columns[start : start + squares.shape[1]] += squares.sum(axis=0)
            rows[offset : offset + squares.shape[0]] += squares.sum(axis=1)
        elif layout is Layout.FIRST_AXIS_COLUMNS:  # (M, width): basis vectors offset ..., columns scattered
            leaf = first_axis_columns(self.shapes[block.names[0]], offset, squares.shape[1])
            columns[start + leaf] += squares.sum(axis=0)
            rows += squares.sum(axis=1)
        elif layout is Layout.CHANNEL_COLUMNS:  # (*activation, width): (r, w) is column (offset + w, c = r[axis])
            shape = self.job.split.activation_shape
            s = self.job.structure[block.names[0]]
            axis = s.output_axis % len(shape)
            width = squares.shape[-1]
            per_channel = np.moveaxis(squares, axis, -2).reshape(-1, s.channels, width).sum(axis=0)  # (C, width)
            if s.channel_last:
                at = start + offset * s.channels
                columns[at : at + width * s.channels] += per_channel.T.reshape(-1)
            else:  # a block of its own, columns (c, w)
                size = int(np.prod(self.shapes[block.names[0]], dtype=np.int64))
                columns[start : start + size].reshape(s.channels, -1)[:, offset : offset + width] += per_channel
            rows += squares.reshape(-1, width).sum(axis=1)
        elif layout is Layout.CHANNEL_ROWS:  # (width, C, W_run): (s, c, w) is row (offset + s, c), column (w, c)
            width, channels, run = squares.shape
            s = self.job.structure[block.names[0]]
            columns[start : start + run * channels] += s.columns(squares.sum(axis=0))
            rows[offset * channels : (offset + width) * channels] += squares.sum(axis=2).reshape(-1)
        elif layout is Layout.WHOLE:  # (M, P)
            columns += squares.sum(axis=0)
            rows += squares.sum(axis=1)
        else:
            raise ValueError(f"the sensitivity sink takes no {layout} block")

    def finish(self, done: Done) -> Sensitivity:
        job, split = self.job, self.job.split
        count = job.num_examples
        parameter = {
            name: self.columns[:, at : at + int(np.prod(shape, dtype=np.int64))].reshape((count,) + shape)
            for (name, at), shape in zip(self.starts.items(), split.param_shapes)
        }
        return Sensitivity(
            layer=split.layer,
            model=split.model.name,
            param_names=split.param_names,
            param_shapes=split.param_shapes,
            activation_shape=split.activation_shape,
            wrt=str(split.wrt),
            mode=job.plan.describe(),
            device=job.device,
            parameter=parameter,
            unit=np.sqrt(self.rows).reshape((count,) + split.activation_shape),
            frobenius=np.sqrt(self.columns.sum(axis=1)),
            seconds=done.seconds,
            compile_seconds=done.compile_seconds,
            notes=tuple(split.notes) + tuple(job.plan.notes),
        )


def sensitivity(
    split: LayerSplit,
    inputs,
    *,
    mode=Auto(),
    max_memory=None,
    device=None,
    devices: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Sensitivity:
    """Per-parameter diag(JᵀJ), per-unit ‖∂h_i/∂θ‖ and ‖J‖_F of ``split``'s layer for each example of
    ``inputs``, exact, from the Jacobian's chunks: the M × P matrix is never formed, so a layer whose dense
    Jacobian would not fit in memory is not refused.

    Arguments as :func:`layersens.jacobian` (any strategy; the compiled plans are shared with it). Cost: that of
    ``jacobian(split, inputs, mode=mode)`` without writing the result, plus squaring each chunk on the host.
    """
    require_real(split, "layersens.sensitivity")
    x = split.model.check_inputs(inputs, dtype=split.input_dtype)
    return _run(split, x, SensitivitySink(), mode, max_memory, device, progress, devices)
