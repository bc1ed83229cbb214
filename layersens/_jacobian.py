"""The driver: examples × blocks × chunks, assembled into one ``LayerJacobian``.

Examples are looped in Python over one compiled program per block: vectorizing over examples as well as basis
vectors was slower on CPU (memory traffic, not arithmetic, dominates), and looping keeps working memory at one
example's chunk.
"""

from __future__ import annotations

import time
from typing import Callable

import jax
import numpy as np

from ._errors import JacobianTooLargeError, SpecError, format_bytes
from ._kernels import bytes_per_vector, forward_chunk, reverse_chunk
from ._memory import DEFAULT_WORKING_MEMORY, available_memory, chunk_size, parse_bytes
from ._result import LayerJacobian
from ._split import LayerSplit
from ._strategies import Auto, as_strategy

# Fraction of available memory the result itself may take; the rest is for working memory and everything else.
_RESULT_FRACTION = 0.8


def resolve_device(device=None) -> jax.Device:
    if device is None:
        return jax.devices()[0]
    if isinstance(device, jax.Device):
        return device
    try:
        return jax.devices(str(device))[0]
    except RuntimeError as e:
        raise SpecError(
            f"device {device!r} is not available ({e}); available: "
            f"{sorted({d.platform for d in jax.devices()})}."
        ) from None


def _column_range(split: LayerSplit, names) -> tuple[int, int]:
    start, ranges = 0, {}
    for name, shape in zip(split.param_names, split.param_shapes):
        stop = start + int(np.prod(shape, dtype=np.int64))
        ranges[name] = (start, stop)
        start = stop
    first, last = ranges[names[0]][0], ranges[names[-1]][1]
    if last - first != sum(ranges[n][1] - ranges[n][0] for n in names):
        raise SpecError(f"a block's leaves {names} are not adjacent columns.")
    return first, last


def check_size(split: LayerSplit, num_examples: int) -> int:
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


def jacobian(
    split: LayerSplit,
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
      mode: a strategy (``Auto()``, ``Forward()``, ``Reverse()``) or its name.
      max_memory: working-memory budget (bytes or a string such as ``"2GB"``); chunk sizes follow from it.
        The result itself is extra. Default: 512 MiB.
      device: ``"cpu"``, ``"gpu"`` or a ``jax.Device``; default: JAX's default device.
      progress: called as ``progress(done, total)`` after each chunk.
    """
    strategy = as_strategy(mode)
    x = split.model.check_inputs(inputs, dtype=split.input_dtype)
    num_examples = len(x)
    check_size(split, num_examples)
    budget = DEFAULT_WORKING_MEMORY if max_memory is None else parse_bytes(max_memory)
    dev = resolve_device(device)
    params = jax.device_put(split.params, dev)
    xs = jax.device_put(x, dev)

    plans = []
    for block in strategy.blocks(split):
        first, last = _column_range(split, block.names)
        basis = (last - first) if block.method == "fwd" else split.num_outputs
        per_vector = bytes_per_vector(split, xs[0], block.method, last - first)
        width = chunk_size(basis, per_vector, budget, block.chunk_size)
        plans.append((block, first, last, basis, width))

    compile_seconds = 0.0
    kernels = []
    for block, first, last, basis, width in plans:
        make = forward_chunk if block.method == "fwd" else reverse_chunk
        start = time.perf_counter()
        compiled = jax.jit(make(split, block.names, width)).lower(params, xs[0], np.int32(0)).compile()
        compile_seconds += time.perf_counter() - start
        kernels.append(compiled)
    start = time.perf_counter()
    apply = jax.jit(split.apply).lower(params, xs[0]).compile()
    compile_seconds += time.perf_counter() - start

    dtype = np.dtype(split.activation_dtype)
    matrix = np.empty((num_examples, split.num_outputs, split.num_params), dtype)
    activation = np.empty((num_examples,) + split.activation_shape, dtype)
    total = num_examples * sum(-(-basis // width) for *_, basis, width in plans)
    done = 0
    start = time.perf_counter()
    for n in range(num_examples):
        activation[n] = np.asarray(apply(params, xs[n]))
        for (block, first, last, basis, width), kernel in zip(plans, kernels):
            for offset in range(0, basis, width):
                at = min(offset, basis - width)  # the last chunk overlaps the previous one: one compiled width
                part = np.asarray(kernel(params, xs[n], np.int32(at)))
                if block.method == "fwd":
                    matrix[n, :, first + at : first + at + width] = part
                else:
                    matrix[n, at : at + width, first:last] = part
                done += 1
                if progress is not None:
                    progress(done, total)
    seconds = time.perf_counter() - start

    return LayerJacobian(
        layer=split.layer,
        model=split.model.name,
        framework=split.model.framework,
        matrix=matrix,
        activation=activation,
        inputs=x,
        param_names=split.param_names,
        param_shapes=split.param_shapes,
        excluded_params=split.excluded,
        mode="+".join(sorted({p[0].method for p in plans})),
        dtype=str(dtype),
        device=f"{dev.platform}:{dev.id}",
        eval_mode=split.model.eval_mode,
        compile_seconds=compile_seconds,
        seconds=seconds,
    )
