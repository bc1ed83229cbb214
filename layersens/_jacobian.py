"""The driver: examples × blocks × chunks, assembled into one ``LayerJacobian``.

The device computes one chunk at a time (one example; one program for all blocks when each fits in one chunk)
and returns what is nonzero; the host places it into one zeroed result. Why this split: on CPU the cost of a
layer Jacobian is memory traffic, not arithmetic. Fresh zeroed host memory is paid for only by its page faults,
so a mostly-zero block costs one touch of its pages plus its nonzeros, where a dense device output would be
written in full and then copied. Vectorizing over examples as well was slower (XLA's large fresh outputs fault
page by page), and looping keeps working memory at one example's chunk. On CPU, one example's small matrix is
instead built whole by one program (see ``DEVICE_DENSE_MAX_BYTES``).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable

import jax
import numpy as np

from ._errors import JacobianTooLargeError, SpecError, format_bytes
from ._kernels import basis_size, bytes_per_vector, intermediate_bytes, make_dense, make_fused, make_kernel
from ._memory import available_memory, balanced_width, chunk_size, working_memory
from ._result import LayerJacobian
from ._split import LayerSplit
from ._strategies import Auto, Structured, as_strategy
from ._structure import channel_structure

# Fraction of available memory the result itself may take; the rest is for working memory and everything else.
_RESULT_FRACTION = 0.8

# On CPU, one example's matrix up to this size is built as one program output (one pass, in memory XLA's
# allocator reuses across calls) instead of zeroed host memory plus placed nonzeros (two passes). Above it,
# the allocator maps fresh pages for every output (glibc's largest mmap threshold is 32 MiB), whose faults
# cost more than the host path's. Measured on the shipped LeNet, relu1 (14.4 MiB): the whole-matrix program
# 1.8 ms, against 0.7 ms for the compressed program plus 1.6 ms zeroing and placing on the host.
DEVICE_DENSE_MAX_BYTES = 32 * 2**20


@dataclasses.dataclass(frozen=True)
class PlannedBlock:
    """A block of the plan: its leaves, method, number of basis vectors, chunk width and estimated bytes per
    vector. The width is the estimate's; the first call checks XLA's own count and may narrow it."""

    names: tuple[str, ...]
    method: str
    basis: int
    width: int
    bytes_per_vector: int
    fixed_width: bool = False  # the strategy asked for this chunk size


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
    x = jax.numpy.asarray(x)
    budget = working_memory(max_memory, next(iter(x.devices())).platform)
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
                planned.append(PlannedBlock((name,), block.method, basis, width, per_vector,
                                            block.chunk_size is not None))
            continue
        planned.append(PlannedBlock(block.names, block.method, basis, width, per_vector, block.chunk_size is not None))
    return tuple(planned), structure


@dataclasses.dataclass(frozen=True)
class _Prepared:
    """What one call needs besides the inputs, kept on the split per input shape, device, strategy and budget:
    the plan, the device-resident parameters and, per step, a compiled kernel with its basis and chunk width."""

    blocks: tuple[PlannedBlock, ...]
    params: dict
    steps: tuple  # _Step per block (one fused step when every block fits in one chunk)
    activation: object  # compiled split.apply of one example
    compile_seconds: float
    dense: object | None  # the make_dense program, for one example where that is cheaper (compiled on first use)


def _working_bytes(compiled, with_arguments=False) -> int | None:
    """XLA's own count of a compiled program's temporaries and outputs (and arguments, for a chunk program whose
    argument is the example's linear map); ``None`` where the backend does not say."""
    try:
        stats = compiled.memory_analysis()
    except Exception:  # not every backend implements it
        return None
    if stats is None:
        return None
    total = stats.temp_size_in_bytes + stats.output_size_in_bytes
    return int(total + (stats.argument_size_in_bytes if with_arguments else 0))


def _compile_block(split, block: PlannedBlock, structure, params, x0, budget: int):
    """One block's compiled step. Chunk widths come from an estimate; once compiled, XLA's own count of the
    programs' memory is checked against the budget and the chunks narrowed (and recompiled) while it is over."""
    width = block.width
    fixed = block.fixed_width or (block.method == "fwd-colour" and len(block.names) > 1)
    for _ in range(4):
        kernel = make_kernel(split, block.method, block.names, structure, width)
        if width >= block.basis:
            compute = jax.jit(kernel.compute).lower(params, x0, np.int32(0)).compile()
            step, working = _Step(None, compute, kernel.place, block.basis, width), _working_bytes(compute)
        else:
            linear = jax.eval_shape(kernel.linearize, params, x0)
            linearize = jax.jit(kernel.linearize).lower(params, x0).compile()
            chunk = jax.jit(kernel.chunk).lower(linear, np.int32(0)).compile()
            step = _Step(linearize, chunk, kernel.place, block.basis, width)
            sizes = (_working_bytes(linearize), _working_bytes(chunk, with_arguments=True))
            working = None if None in sizes else max(sizes)
        if fixed or working is None or working <= budget or width == 1:
            return step, dataclasses.replace(block, width=width)
        width = balanced_width(block.basis, max(1, int(width * budget / working)))
    return step, dataclasses.replace(block, width=width)


def _prepare(split: LayerSplit, x0, dev, strategy, budget) -> _Prepared:
    start = time.perf_counter()
    params = jax.device_put(split.params, dev)
    blocks, structure = plan(split, x0, strategy, budget)
    steps, dense = None, None
    if all(b.width == b.basis for b in blocks):
        fused = make_fused([make_kernel(split, b.method, b.names, structure, b.width) for b in blocks])
        compute = jax.jit(fused.compute).lower(params, x0, np.int32(0)).compile()
        working = _working_bytes(compute)
        if working is None or working <= budget:
            steps = (_Step(None, compute, fused.place, 1, 1),)
            example_bytes = split.num_outputs * split.num_params * np.dtype(split.activation_dtype).itemsize
            if dev.platform == "cpu" and example_bytes <= DEVICE_DENSE_MAX_BYTES:
                dense = jax.jit(make_dense(split, fused))
    if steps is None:
        compiled = [_compile_block(split, b, structure, params, x0, budget) for b in blocks]
        steps, blocks = tuple(c[0] for c in compiled), tuple(c[1] for c in compiled)
    # The activation is a program of its own: returned from the kernels' programs as well, it changed XLA's
    # fusion of the dense forward kernel (a transposed copy, measured 5× slower on relu1).
    activation = jax.jit(split.apply).lower(params, x0).compile()
    return _Prepared(blocks, params, steps, activation, time.perf_counter() - start, dense)


@dataclasses.dataclass(frozen=True)
class _Step:
    """One block's compiled programs: ``linearize`` (None for a block computed in one chunk, by ``compute``
    from params and the example) and ``compute`` (from the linear map and the chunk's offset otherwise)."""

    linearize: object | None
    compute: object
    place: object
    basis: int
    width: int

    def offsets(self):
        # The last chunk overlaps the one before rather than being narrower: one compiled width.
        return [max(0, min(offset, self.basis - self.width)) for offset in range(0, max(self.basis, 1), self.width)]


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
        The result itself is extra. Default: 32 MiB on CPU (cache-sized chunks measured fastest), 1 GiB on
        accelerators.
      device: ``"cpu"``, ``"gpu"`` or a ``jax.Device``; default: JAX's default device.
      progress: called as ``progress(done, total)`` each time a chunk's values have landed in the result.

    The first call for a given input shape, device, mode and budget plans and compiles (``compile_seconds``);
    later calls reuse that work, kept on ``split``. The returned ``matrix`` is read-only.
    """
    x = split.model.check_inputs(inputs, dtype=split.input_dtype)
    num_examples = len(x)
    check_size(split, num_examples)
    dev = resolve_device(device)
    strategy = as_strategy(mode)
    budget = working_memory(max_memory, dev.platform)

    key = ("prepared", x.shape[1:], str(x.dtype), str(dev), strategy, budget)
    fresh = key not in split.cache
    if fresh:
        split.cache[key] = _prepare(split, jax.device_put(x[0], dev), dev, strategy, budget)
    prepared = split.cache[key]
    compile_seconds = prepared.compile_seconds if fresh else 0.0
    if num_examples == 1 and prepared.dense is not None and key + ("dense",) not in split.cache:
        compile_start = time.perf_counter()
        example = jax.ShapeDtypeStruct(x.shape[1:], x.dtype)
        split.cache[key + ("dense",)] = prepared.dense.lower(prepared.params, example).compile()
        compile_seconds += time.perf_counter() - compile_start

    start = time.perf_counter()
    params = prepared.params
    shape = (num_examples, split.num_outputs, split.num_params)
    if num_examples == 1 and prepared.dense is not None:
        x0 = jax.device_put(x[0], dev)
        matrix = np.asarray(split.cache[key + ("dense",)](params, x0))[None]  # zero-copy, read-only
        activation = np.asarray(prepared.activation(params, x0))[None]
        if progress is not None:
            progress(1, 1)
        return _result(split, prepared, x, matrix, activation, dev, compile_seconds, time.perf_counter() - start)
    # Fresh zeroed memory costs only its page faults; blocks that are mostly zeros are then written where nonzero.
    matrix = np.zeros(shape, np.dtype(split.activation_dtype))
    activation = np.empty((num_examples,) + split.activation_shape, np.dtype(split.activation_dtype))
    examples = jax.device_put(list(x), dev)  # one transfer, instead of a slicing dispatch per chunk
    total = num_examples * sum(len(step.offsets()) for step in prepared.steps)
    done = 0
    # One chunk in flight at a time: dispatching the next before placing this one was measured slower (two
    # chunks' device buffers alive made the allocator map fresh pages; XLA already uses every core).
    for n in range(num_examples):
        activation[n] = np.asarray(prepared.activation(params, examples[n]))
        for step in prepared.steps:
            linear = step.linearize(params, examples[n]) if step.linearize is not None else None
            for offset in step.offsets():
                if linear is None:
                    outputs = step.compute(params, examples[n], np.int32(offset))
                else:
                    outputs = step.compute(linear, np.int32(offset))
                step.place(matrix[n], offset, [np.asarray(o) for o in outputs])
                done += 1
                if progress is not None:
                    progress(done, total)
            del linear
    matrix.flags.writeable = False

    return _result(split, prepared, x, matrix, activation, dev, compile_seconds, time.perf_counter() - start)


def _result(split, prepared, x, matrix, activation, dev, compile_seconds, seconds) -> LayerJacobian:
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
        mode=_describe(prepared.blocks),
        dtype=str(np.dtype(split.activation_dtype)),
        device=f"{dev.platform}:{dev.id}",
        eval_mode=split.model.eval_mode,
        compile_seconds=compile_seconds,
        seconds=seconds,
    )
