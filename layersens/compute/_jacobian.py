"""``jacobian(split, inputs)`` and ``compressed_jacobian``: plan, compile (once, see ``_cache``) and run into a
sink."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Callable, cast

import numpy as np

from .._errors import JacobianTooLargeError, format_bytes
from .._progress import announce
from ..planning import Auto, Structured, as_strategy, available_memory, channel_last_only
from ..results import CompressedJacobian, LayerJacobian, StoredJacobian
from ._blocks import dense_bytes
from ._cache import prepared_for
from ._complex_sink import ComplexCompressedSink, ComplexSink
from ._sinks import CompressedSink, DenseSink, Result, Sink
from ._store_sink import StoreSink

if TYPE_CHECKING:
    from ..tracing import LayerSplit

# Fraction of available memory the result itself may take; the rest is for working memory and everything else.
_RESULT_FRACTION = 0.8
# Results up to this size are not checked against available memory (reading it costs as much as a small
# layer's whole Jacobian).
_ALWAYS_FITS = 64 * 2**20


def check_size(split: LayerSplit, num_examples: int) -> int:
    """Bytes of the dense result; raises if it cannot fit in memory."""
    itemsize = np.dtype(split.activation_dtype).itemsize
    nbytes = dense_bytes(split, num_examples)
    # a complex Jacobian is stated from the real problem's: both are held at the end
    held = 2 * nbytes if split.complex is not None and split.complex.combines else nbytes
    if held <= _ALWAYS_FITS:
        return nbytes
    available = available_memory()
    if held > _RESULT_FRACTION * available:
        raise JacobianTooLargeError(
            f"the Jacobian of {split.layer!r} for {num_examples} example(s) is {format_bytes(nbytes)} "
            f"({num_examples} × {split.num_outputs} outputs × {split.num_params} parameters × {itemsize} bytes) and "
            f"only {format_bytes(available)} of memory is available. Use fewer examples (--num-examples), or a "
            "layer with fewer outputs or upstream parameters."
        )
    return nbytes


def run(
    split: LayerSplit,
    inputs,
    sink: Sink[Result],
    *,
    mode=Auto(),
    max_memory=None,
    device=None,
    devices: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Result:
    """Every block of ``split``'s Jacobian for ``inputs``, into ``sink``; returns what the sink makes. The first
    call for a given plan and device compiles it (its time is added to the result's ``compile_seconds``)."""
    x = split.model.check_inputs(inputs, dtype=split.input_dtype)
    return _run(split, x, sink, mode, max_memory, device, progress, devices)


def _run(
    split: LayerSplit, x: np.ndarray, sink: Sink[Result], mode, max_memory, device, progress, devices=None
) -> Result:
    announce(progress, f"planning and compiling d{split.layer}/dθ")
    prepared, fresh = prepared_for(split, x, mode, max_memory, device, devices)
    announce(progress, f"d{split.layer}/dθ on {prepared.where}", examples=len(x))
    result = prepared.execute(x, sink, progress)
    if not fresh:
        return result
    if isinstance(result, CompressedJacobian):
        dense = result.dense_part
        return dataclasses.replace(
            result,
            dense_part=dataclasses.replace(dense, compile_seconds=dense.compile_seconds + prepared.compile_seconds),
        )
    if (
        dataclasses.is_dataclass(result)
        and not isinstance(result, type)
        and isinstance(seconds := getattr(result, "compile_seconds", None), float)
    ):
        # every result that reports its compile time (LayerJacobian, Sensitivity, ...) gets the first call's
        # (replace gives back the type it is given; mypy loses the type variable in is_dataclass's narrowing)
        return cast(Result, dataclasses.replace(result, compile_seconds=seconds + prepared.compile_seconds))
    return result


def jacobian(
    split: LayerSplit,
    inputs,
    *,
    mode=Auto(),
    max_memory=None,
    device=None,
    devices: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> LayerJacobian:
    """The Jacobian of ``split``'s layer with respect to its upstream parameters, for each example in ``inputs``.

    Args:
      split: from :func:`layersens.split`.
      inputs: ``(examples,) + input_shape`` (a single example without the batch axis is accepted).
      mode: a strategy (``Auto()``, ``Forward()``, ``Reverse()``, ``PerLeaf()``, ``Structured()``) or its name.
      max_memory: working-memory budget (bytes or a string such as ``"2GB"``); chunk sizes follow from it.
        The result itself is extra. Default: 32 MiB on CPU (cache-sized chunks measured fastest), 1 GiB on
        accelerators. A budget that cannot be met raises :class:`~layersens.MemoryBudgetError`.
      device: ``"cpu"``, ``"gpu"``, ``"cpu:2"`` or a ``jax.Device``; default: JAX's default device.
      devices: spread the work over this many local devices of ``device``'s platform (sharded: over examples
        when there are as many, else over the chunks of each example); the result is the same as on one.
      progress: called as ``progress(done, total)`` each time a chunk's values have landed in the result.

    The first call for a given input shape, device, mode and budget plans and compiles (``compile_seconds``);
    later calls reuse that work (see :func:`layersens.prepare` to hold it yourself). The ``matrix`` is read-only.
    """
    x = split.model.check_inputs(inputs, dtype=split.input_dtype)
    check_size(split, len(x))
    sink: Sink[LayerJacobian] = ComplexSink() if split.complex is not None and split.complex.combines else DenseSink()
    return _run(split, x, sink, mode, max_memory, device, progress, devices)


def compressed_jacobian(
    split: LayerSplit,
    inputs,
    *,
    mode=Structured(),
    max_memory=None,
    device=None,
    devices: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> CompressedJacobian:
    """Per-channel blocks for every channel-diagonal leaf (column or row colouring), dense columns for the
    others (as ``mode``, by default :class:`~layersens.Structured`, plans them; any strategy works: the leaves
    it colours are compressed).

    Cost: as ``jacobian(split, inputs, mode=Structured())`` without writing the zeros: W JVPs or S pullbacks per
    structured leaf per example, writing only the nonzeros. Use when the dense matrix is too large or not needed.
    The compiled programs are shared with :func:`layersens.jacobian`.

    A complex convention (``complex_mode`` ``complex`` or ``holomorphic``) is stated as :func:`layersens.jacobian`
    states it: a leaf stays a channel block where its real and imaginary parts both are one (see
    :func:`~layersens.compute._complex_sink.stated_compressed`), and ``to_dense()`` is the dense complex Jacobian.
    """
    x = split.model.check_inputs(inputs, dtype=split.input_dtype)
    combines = split.complex is not None and split.complex.combines
    sink: Sink[CompressedJacobian] = ComplexCompressedSink() if combines else CompressedSink()
    return _run(split, x, sink, mode, max_memory, device, progress, devices)


def stream_jacobian(
    split: LayerSplit,
    inputs,
    out,
    *,
    compressed: bool = False,
    overwrite: bool = False,
    mode=Auto(),
    max_memory=None,
    device=None,
    devices: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    written: Callable[[int], None] | None = None,
) -> StoredJacobian:
    """The Jacobian streamed into the zarr store ``out`` (a ``.zarr`` directory) chunk by chunk, never whole in
    memory; rerun with the same arguments, it resumes an unfinished store where it stopped.

    Memory: ``max_memory`` for the device's chunks, plus slabs being filled (a quarter of it; see
    :class:`StoreSink`), plus a fixed overhead (the model, the compiled programs, zarr's buffers), whatever the
    Jacobian's size. ``compressed`` stores channel-diagonal leaves as their diagonals. An existing store of
    another computation is refused; ``overwrite`` replaces it. ``written(nbytes)`` is told of each slab
    written. In a multi-process run (``jax.distributed``) each process computes and writes its own share of
    (example, block) pairs into the same store. Returns the store, opened lazily.

    A complex convention (``complex_mode`` ``complex`` or ``holomorphic``): the store holds the real problem's
    Jacobian (rows ``[Re h; Im h]``, columns ``w.real`` and ``w.imag``) and its metadata the convention; the
    :class:`StoredJacobian` states what it reads, as :func:`layersens.jacobian` would.
    """
    x = split.model.check_inputs(inputs, dtype=split.input_dtype)
    sink = StoreSink(out, compressed=compressed, overwrite=overwrite, written=written)
    # the store's slabs and its readers follow (w, c) columns: leaves whose channel is their first go uncoloured
    return _run(split, x, sink, channel_last_only(as_strategy(mode)), max_memory, device, progress, devices)
