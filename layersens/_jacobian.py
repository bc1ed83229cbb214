"""The driver: examples × blocks × chunks, assembled into one ``LayerJacobian``.

Examples are looped in Python over one compiled program per block: vectorizing over examples as well as basis
vectors was slower on CPU (memory traffic, not arithmetic, dominates), and looping keeps working memory at one
example's chunk.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable

import jax
import numpy as np

from ._errors import JacobianTooLargeError, SpecError, format_bytes
from ._kernels import basis_size, bytes_per_vector, intermediate_bytes, make_fused, make_update
from ._memory import DEFAULT_WORKING_MEMORY, available_memory, chunk_size, parse_bytes
from ._result import LayerJacobian
from ._split import LayerSplit
from ._strategies import Auto, Structured, as_strategy
from ._structure import channel_structure

# Fraction of available memory the result itself may take; the rest is for working memory and everything else.
_RESULT_FRACTION = 0.8


@dataclasses.dataclass(frozen=True)
class PlannedBlock:
    """A block of the plan: its leaves, method, number of basis vectors, chunk width and bytes per vector."""

    names: tuple[str, ...]
    method: str
    basis: int
    width: int
    bytes_per_vector: int


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


def _describe(blocks) -> str:
    """``"fwd-colour"`` when one method computed everything, else each method with its leaves."""
    methods = {b.method for b in blocks}
    if len(methods) == 1:
        return methods.pop()
    return ", ".join(f"{b.method}[{'+'.join(b.names)}]" for b in blocks)


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


def plan(split: LayerSplit, x, mode=Auto(), max_memory=None) -> tuple[PlannedBlock, ...]:
    """The blocks ``mode`` computes for ``split``, each with its basis size and chunk width (no computation)."""
    strategy = as_strategy(mode)
    budget = DEFAULT_WORKING_MEMORY if max_memory is None else parse_bytes(max_memory)
    x = jax.numpy.asarray(x)
    structure = channel_structure(split, x) if isinstance(strategy, (Auto, Structured)) else {}
    intermediates = intermediate_bytes(split, x)  # one trace, shared by every block's estimate
    planned = []
    for block in strategy.blocks(split, structure):
        basis = basis_size(split, block.method, block.names, structure)
        per_vector = bytes_per_vector(split, intermediates, block.method, block.names, structure)
        width = chunk_size(basis, per_vector, budget, block.chunk_size)
        if block.method == "fwd-colour" and len(block.names) > 1 and width < basis:
            # Several coloured leaves share a program only when they fit in one chunk; otherwise one each.
            for name in block.names:
                basis = basis_size(split, block.method, (name,), structure)
                per_vector = bytes_per_vector(split, intermediates, block.method, (name,), structure)
                width = chunk_size(basis, per_vector, budget, block.chunk_size)
                planned.append(PlannedBlock((name,), block.method, basis, width, per_vector))
            continue
        planned.append(PlannedBlock(block.names, block.method, basis, width, per_vector))
    return tuple(planned), structure


def _compiled(split: LayerSplit, key, build, *example_args):
    """Compiled kernels are kept on the split, so repeated calls with the same shapes do not recompile."""
    cache = split.cache
    if key not in cache:
        cache[key] = jax.jit(build(), donate_argnums=2).lower(*example_args).compile()
    return cache[key]


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
      mode: a strategy (``Auto()``, ``Forward()``, ``Reverse()``, ``PerLeaf()``, ``Structured()``) or its name.
      max_memory: working-memory budget (bytes or a string such as ``"2GB"``); chunk sizes follow from it.
        The result itself is extra. Default: 512 MiB.
      device: ``"cpu"``, ``"gpu"`` or a ``jax.Device``; default: JAX's default device.
      progress: called as ``progress(done, total)`` after each chunk.

    The returned ``matrix`` is read-only: it is the computation's own buffer, not a copy.
    """
    x = split.model.check_inputs(inputs, dtype=split.input_dtype)
    num_examples = len(x)
    check_size(split, num_examples)
    dev = resolve_device(device)
    params = jax.device_put(split.params, dev)
    xs = jax.device_put(x, dev)
    blocks, structure = plan(split, xs[0], mode, max_memory)

    dtype = np.dtype(split.activation_dtype)
    shape = (num_examples, split.num_outputs, split.num_params)
    start = time.perf_counter()
    zeros = jax.jit(lambda: jax.numpy.zeros(shape, dtype), out_shardings=jax.sharding.SingleDeviceSharding(dev))
    example = (params, xs[0], jax.ShapeDtypeStruct(shape, dtype), np.int32(0), np.int32(0))
    signature = (shape, str(dtype), xs.shape[1:], str(dev), tuple(structure.items()))
    if all(b.width == b.basis for b in blocks):
        key = ("fused", tuple((b.method, b.names, b.width) for b in blocks), signature)
        kernel = _compiled(split, key, lambda: make_fused(split, blocks, structure), *example)
        steps = [(kernel, 0, 1)]
    else:
        steps = []
        for b in blocks:
            key = (b.method, b.names, b.width, signature)
            kernel = _compiled(split, key, lambda b=b: make_update(split, b.method, b.names, structure, b.width),
                               *example)
            steps.append((kernel, b.basis, b.width))
    apply = jax.jit(jax.vmap(split.apply, in_axes=(None, 0)))
    activation = apply(params, xs).block_until_ready()  # compiles once per shape; counted as compile time
    buf = zeros().block_until_ready()
    compile_seconds = time.perf_counter() - start

    total = num_examples * sum(max(1, -(-basis // width)) for _, basis, width in steps)
    done = 0
    start = time.perf_counter()
    buf = zeros()
    activation = apply(params, xs)
    for n in range(num_examples):
        for kernel, basis, width in steps:
            for offset in range(0, max(basis, 1), width):
                at = max(0, min(offset, basis - width))  # the last chunk overlaps: one compiled width
                buf = kernel(params, xs[n], buf, np.int32(n), np.int32(at))
                done += 1
                if progress is not None:
                    progress(done, total)
    matrix = np.asarray(buf)
    activation = np.asarray(activation)
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
        mode=_describe(blocks),
        dtype=str(dtype),
        device=f"{dev.platform}:{dev.id}",
        eval_mode=split.model.eval_mode,
        compile_seconds=compile_seconds,
        seconds=seconds,
    )
