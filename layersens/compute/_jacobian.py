"""``jacobian(split, inputs)``: plan, compile (once) and run; the compiled plans are kept per split, a few each."""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from .._errors import JacobianTooLargeError, format_bytes
from ..planning import available_memory, working_memory
from ..planning._strategies import Auto, as_strategy
from ..results import LayerJacobian
from ._prepare import PreparedJacobian, prepare, resolve_device

# Fraction of available memory the result itself may take; the rest is for working memory and everything else.
_RESULT_FRACTION = 0.8
# Compiled plans kept per split (input shape × device × mode × budget); the oldest is dropped beyond this.
PREPARED_PER_SPLIT = 8



def check_size(split, num_examples: int) -> int:
    """Bytes of the dense result; raises if it cannot fit in memory."""
    itemsize = np.dtype(split.activation_dtype).itemsize
    nbytes = num_examples * split.num_outputs * split.num_params * itemsize
    available = available_memory()
    if nbytes > _RESULT_FRACTION * available:
        raise JacobianTooLargeError(
            f"the Jacobian of {split.layer!r} for {num_examples} example(s) is {format_bytes(nbytes)} "
            f"({num_examples} × {split.num_outputs} outputs × {split.num_params} parameters × {itemsize} bytes) and "
            f"only {format_bytes(available)} of memory is available. Use fewer examples (--num-examples), or a "
            "layer with fewer outputs or upstream parameters."
        )
    return nbytes


def prepared_for(split, inputs, mode, max_memory, device) -> tuple[PreparedJacobian, bool]:
    """The compiled plan for these inputs' shape, from the split's few kept ones or freshly prepared (then
    ``True``)."""
    x = split.model.check_inputs(inputs, dtype=split.input_dtype)
    dev = resolve_device(device)
    strategy = as_strategy(mode)
    key = (x.shape[1:], str(x.dtype), str(dev), strategy, working_memory(max_memory, dev.platform),
           max_memory is not None)
    kept = split.prepared_cache
    if key in kept:
        kept.move_to_end(key)
        return kept[key], False
    prepared = prepare(split, x, strategy, max_memory, dev)
    kept[key] = prepared
    while len(kept) > PREPARED_PER_SPLIT:
        kept.popitem(last=False)
    return prepared, True


def jacobian(
    split,
    inputs,
    *,
    mode=Auto(),
    max_memory=None,
    device=None,
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
      device: ``"cpu"``, ``"gpu"`` or a ``jax.Device``; default: JAX's default device.
      progress: called as ``progress(done, total)`` each time a chunk's values have landed in the result.

    The first call for a given input shape, device, mode and budget plans and compiles (``compile_seconds``);
    later calls reuse that work (see :func:`layersens.prepare` to hold it yourself). The ``matrix`` is read-only.
    """
    x = split.model.check_inputs(inputs, dtype=split.input_dtype)
    check_size(split, len(x))
    prepared, fresh = prepared_for(split, x, mode, max_memory, device)
    result = prepared(x, progress=progress)
    if fresh:
        result = dataclasses.replace(result, compile_seconds=result.compile_seconds + prepared.compile_seconds)
    return result
