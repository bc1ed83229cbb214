"""The empirical NTK of one layer across examples, Θ[n, m] = Σ_i ⟨∂h_i(x_n)/∂θ, ∂h_i(x_m)/∂θ⟩ = tr(J_n J_mᵀ), or
its full block (J_n J_mᵀ)[i, j], computed from the Jacobian's pieces as they come, the dense J of all examples
never held unless it is small.

Three ways, chosen by size:

* ``"contraction"``: ``layersens.jacobian`` of all examples (the structured plan: 12 passes per example for
  LeNet's relu1, 423 for relu2, 129 for fc1) and Θ = J Jᵀ in float64, in column chunks. Used when the dense J
  of all examples takes at most ``CONTRACTION_BYTES``, a quarter of the available memory and ``max_memory``.
* ``"compressed"`` (traced kernel only): the same passes, kept as ``layersens.compressed_jacobian`` keeps them:
  a channel-diagonal leaf's block is zero off its diagonal, so ⟨J_n, J_m⟩ over it is the inner product of the
  compressed blocks (1 / C of the dense size). Used when the compressed J fits where the dense one does not
  (relu2 × 8: 80 MB against 1.1 GiB; 0.4 s against about a minute of products).
* ``"products"``: chunks of the identity on J's shorter side pushed through each example's linearization (JVPs of
  parameter directions, or VJPs of unit directions when M < P: "unit pullbacks vmapped over examples"), each chunk
  G (examples × M × w or examples × P × w) added as G Gᵀ: min(M, P) passes per example (P for the full block),
  memory examples × chunk × max(M, P).

NTK-vector products (a JVP of a VJP, Θv without J) are not used: every entry of the traced kernel is a trace over
the M units, so they would need M of them per example, the cost of the unit pullbacks with twice the passes.
"""

from __future__ import annotations

import time

import numpy as np

from .._errors import JacobianTooLargeError, ModeError, format_bytes
from ..planning import available_memory, parse_bytes
from ..results import LayerNTK
from ._flat import as_examples
from ._linops import Products, chunk_width, operator, plan_passes
from ._operator import LinearizedLayer

METHODS = ("auto", "contraction", "compressed", "products")
CONTRACTION_BYTES = 2**30
_F64_CHUNK_BYTES = 64 * 2**20  # float64 copies made while contracting


def _contract(g: np.ndarray, out: np.ndarray, rows: int) -> None:
    """``out += G Gᵀ`` for ``G`` of shape ``(rows, ...)``, in float64, chunked along its last axis."""
    flat = g.reshape(rows, -1)
    width = max(1, _F64_CHUNK_BYTES // (8 * rows))
    for start in range(0, flat.shape[1], width):
        a = flat[:, start : start + width].astype(np.float64)
        out += a @ a.T


def _compressed_columns(split, x, max_memory) -> int:
    """Columns per activation element of the compressed J under ``Auto``'s plan: a coloured leaf keeps W = its
    size / C, the others all theirs."""
    from ..analysis import analyze
    from ..planning import Auto, leaf_size, plan

    structure = analyze(split).structure
    planned = plan(split, x[:1], Auto(), max_memory)
    coloured = set(planned.coloured)
    return sum(leaf_size(split, n) // (structure[n].channels if n in coloured else 1) for n in split.param_names)


def layer_ntk(split, inputs=None, *, trace_axes: bool = True, method: str = "auto", max_memory=None) -> LayerNTK:
    """The layer's empirical NTK across the examples (:class:`LayerNTK`): with ``trace_axes`` the
    ``(examples, examples)`` matrix tr(J_n J_mᵀ); without, the full ``(examples, M, examples, M)`` block, refused
    (``JacobianTooLargeError``) when it would take more than half the available memory.

    ``split`` and ``inputs`` as for :func:`layersens.jacobian`, or a :class:`LinearizedLayer` and ``inputs=None``.
    ``method``: ``"contraction"``, ``"compressed"``, ``"products"`` or ``"auto"`` (see the module docstring);
    ``max_memory``: the working memory of a chunk of products or of the Jacobian's plan.

    Cost: contraction, the plan's passes per example plus N²·M·P multiply-adds, memory the dense J (N·M·P values);
    products, min(M, P) passes per example (P untraced) plus the same arithmetic, memory a chunk. Use it to compare
    how examples move the layer (kernel regression, similarity of examples as seen by the upstream parameters);
    the traced kernel is cheap in memory for any number of examples, the full block is (N·M)² numbers."""
    start = time.perf_counter()
    if method not in METHODS:
        raise ModeError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}.")
    if isinstance(split, LinearizedLayer):
        op, lay, x = operator(split, inputs), split.split, split.inputs
    else:
        op, lay, x = None, split, as_examples(split, inputs)
    count, m, p = len(x), lay.num_outputs, lay.num_params
    if not trace_axes:
        nbytes, free = (count * m) ** 2 * 8, available_memory()
        if nbytes > free // 2:
            raise JacobianTooLargeError(
                f"the full eNTK block of {lay.layer!r} for {count} example(s) is ({count}, {m}, {count}, {m}) = "
                f"{format_bytes(nbytes)} of float64, and only {format_bytes(free)} of memory is available. Pass "
                "trace_axes=True for the (examples, examples) kernel tr(J_n J_mᵀ), or use fewer examples."
            )
    itemsize = np.dtype(lay.activation_dtype).itemsize
    limit = min(CONTRACTION_BYTES, available_memory() // 4)
    if method == "compressed" and not trace_axes:
        raise ModeError("method 'compressed' gives the traced kernel only; pass trace_axes=True, or another method.")
    if method == "auto":
        # the dense J of all examples only within the working-memory budget the user gave; the compressed one
        # (1 / C of it for channel-diagonal leaves) within the general limit
        dense_limit = limit if max_memory is None else min(limit, parse_bytes(max_memory))
        if count * m * p * itemsize <= dense_limit:
            method = "contraction"
        elif trace_axes and count * _compressed_columns(lay, x, max_memory) * m * itemsize <= limit:
            method = "compressed"
        else:
            method = "products"
    size = count if trace_axes else count * m
    theta = np.zeros((size, size))
    if method == "contraction":
        from ..compute import jacobian

        j = jacobian(lay, x, max_memory=max_memory).matrix  # (N, M, P)
        _contract(j if trace_axes else j.reshape(count * m, p), theta, size)
        passes = plan_passes(lay, x)
    elif method == "compressed":
        from ..compute import compressed_jacobian
        from ..planning import Auto

        compressed = compressed_jacobian(lay, x, mode=Auto(), max_memory=max_memory)
        _contract(compressed.dense_part.matrix, theta, size)
        for block in compressed.channel_blocks.values():
            _contract(block, theta, size)
        passes = plan_passes(lay, x)
    else:
        op = op if op is not None else operator(lay, x)
        columns = not trace_axes or p <= m or op._no_reverse is not None
        side = p if columns else m
        prods = [Products(op, n) for n in range(count)]
        width = chunk_width(op, side, max_memory)
        for lo in range(0, side, width):
            hi = min(side, lo + width)
            basis = np.zeros((side, hi - lo), op.activation.dtype)
            basis[np.arange(lo, hi), np.arange(hi - lo)] = 1
            g = np.stack([pr.jmat(basis) if columns else pr.jtmat(basis) for pr in prods])  # (N, M|P, w)
            _contract(g, theta, size)
        passes = side
    values = theta if trace_axes else theta.reshape(count, m, count, m)
    return LayerNTK(
        values=values,
        trace_axes=bool(trace_axes),
        method=method,
        passes=int(passes),
        layer=lay.layer,
        model=lay.model.name,
        param_names=lay.param_names,
        activation_shape=tuple(lay.activation_shape),
        seconds=time.perf_counter() - start,
    )
