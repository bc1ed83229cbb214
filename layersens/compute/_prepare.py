"""A compiled plan: ``prepare(split, example, mode, max_memory)`` once, then run it on any number of inputs.

The device computes one chunk at a time (one example; one program for all blocks when each fits in one chunk)
and returns what is nonzero; a sink (``_sinks``) places it on the host. Why: on CPU the cost of a layer Jacobian
is memory traffic, not arithmetic. Fresh zeroed host memory is paid for only by its page faults, so a
mostly-zero block costs one touch of its pages plus its nonzeros, where a dense device output would be written
in full and then copied. Vectorizing over examples as well was slower (XLA's large fresh outputs fault page by
page), and looping keeps working memory at one example's chunk. One example's small matrix is instead built
whole by one program, and small layers compute examples side by side (``_platform.ExecutionPolicy``: how small,
per platform).

Widths come from the plan's estimates; once compiled, XLA's own count of each program's memory is checked
against the budget and chunks are narrowed (and recompiled) while it is over. A budget the narrowest chunk still
exceeds is an error when the user gave it (``MemoryBudgetError``), and a note on the plan when it was the
platform's default.
"""

from __future__ import annotations

import dataclasses
import time
from typing import TYPE_CHECKING, Any, Callable, overload

import jax
import numpy as np

from .._errors import DeviceError, MemoryBudgetError, format_bytes
from ..analysis import analyze
from ..planning import Auto, Plan, aligned, balanced_width, example_spec
from ..planning import plan as make_plan
from ..results import CompressedJacobian, LayerJacobian
from ._blocks import JacobianBlock, Layout, dense_bytes
from ._compressed_examples import compressed_program
from ._compressed_examples import example_bytes as compressed_example_bytes
from ._compressed_examples import group_size as compressed_group_size
from ._kernels import Kernel, dense_program, fused_kernel, kernel
from ._lanes import Lanes, compile_lanes, run_lanes
from ._platform import execution_policy
from ._processes import finish_share, process_share
from ._side_by_side import Candidates, SideBySide, candidates, compile_side_by_side, in_groups
from ._sinks import CompressedSink, DenseSink, Done, Job, Result, Sink

if TYPE_CHECKING:
    from ..tracing import LayerSplit

_NARROWING_STEPS = 6


def _available() -> str:
    by_platform: dict[str, int] = {}
    for d in jax.local_devices():
        by_platform[d.platform] = by_platform.get(d.platform, 0) + 1
    return ", ".join(f"{p}:0-{n - 1}" if n > 1 else f"{p}:0" for p, n in sorted(by_platform.items()))


def _platform_devices(platform: str, what) -> list[jax.Device]:
    try:
        return [d for d in jax.local_devices() if d in jax.devices(platform)]
    except RuntimeError:
        raise DeviceError(f"device {what!r} is not available; available here: {_available()}.") from None


def resolve_device(device=None) -> jax.Device:
    """``None`` (JAX's default device), a platform name (``"cpu"``, ``"gpu"``), one device by platform and index
    (``"cpu:2"``, ``"gpu:1"``) or a ``jax.Device``."""
    if device is None:
        return jax.local_devices()[0]
    if isinstance(device, jax.Device):
        return device
    platform, _, index = str(device).partition(":")
    found = _platform_devices(platform, device)
    if not index:
        return found[0]
    if not index.isdigit() or int(index) >= len(found):
        raise DeviceError(
            f"device {device!r} is not available: {platform} has devices 0 to {len(found) - 1} here "
            f"(available: {_available()})."
        )
    return found[int(index)]


def resolve_devices(device=None, devices: int | None = None) -> tuple[jax.Device, ...]:
    """The devices to spread the work over: ``device`` alone (see :func:`resolve_device`), or with ``devices=N``
    the first N local devices of its platform (from ``device``'s index on, when it names one)."""
    first = resolve_device(device)
    if devices is None or devices == 1:
        return (first,)
    if isinstance(devices, bool) or not isinstance(devices, (int, np.integer)) or devices < 1:
        raise DeviceError(f"devices is {devices!r}; give a positive count, e.g. --devices 4.")
    same = _platform_devices(first.platform, device)
    start = same.index(first)
    if start + devices > len(same):
        raise DeviceError(
            f"--devices {devices}: only {len(same) - start} {first.platform} device(s) from {first.platform}:"
            f"{first.id} on are available here ({_available()}). On CPU, start Python with "
            f"XLA_FLAGS=--xla_force_host_platform_device_count={devices} for virtual devices."
        )
    return tuple(same[start : start + devices])


def program_memory(compiled, with_arguments: bool = False) -> int | None:
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


@dataclasses.dataclass(frozen=True)
class _Step:
    """One block's compiled programs: ``linearize`` (None for a block computed in one chunk, by ``compute`` from
    the parameters and the example) and ``compute`` (from the linear map and the chunk's offset otherwise)."""

    linearize: jax.stages.Compiled | None
    compute: jax.stages.Compiled
    blocks: Callable[[int, int, list], list[JacobianBlock]]
    basis: int
    width: int
    names: tuple[str, ...] | None  # the plan block's leaves; None for one program over every block

    def offsets(self):
        # The last chunk overlaps the one before rather than being narrower: one compiled width.
        return [max(0, min(offset, self.basis - self.width)) for offset in range(0, max(self.basis, 1), self.width)]


def _compile_block(split: LayerSplit, block, params, x0, budget: int, structure):
    """One block's step at the widest width XLA's count allows, and that count."""
    width = block.width
    for _ in range(_NARROWING_STEPS):
        k = kernel(block.method, split, block.names, width, structure)
        if width >= block.basis:
            compute = jax.jit(k.compute).lower(params, x0, np.int32(0)).compile()
            step, working = _Step(None, compute, k.blocks, block.basis, width, block.names), program_memory(compute)
        else:
            assert k.linearize is not None and k.chunk is not None, "every kernel but a fused one has both"
            linear = jax.eval_shape(k.linearize, params, x0)
            linearize = jax.jit(k.linearize).lower(params, x0).compile()
            chunk = jax.jit(k.chunk).lower(linear, np.int32(0)).compile()
            step = _Step(linearize, chunk, k.blocks, block.basis, width, block.names)
            linearize_bytes, chunk_bytes = program_memory(linearize), program_memory(chunk, with_arguments=True)
            working = None if linearize_bytes is None or chunk_bytes is None else max(linearize_bytes, chunk_bytes)
        narrowable = not block.fixed_width and not (block.method.colouring and len(block.names) > 1)
        if not narrowable or working is None or working <= budget or width == 1:
            return step, dataclasses.replace(block, width=width), working
        align = block.method.align(split, block.names)
        narrower = aligned(balanced_width(block.basis, max(1, min(width - 1, int(width * budget / working)))), align)
        if narrower >= width:  # already one channel's columns per chunk
            return step, dataclasses.replace(block, width=width), working
        width = narrower
    return step, dataclasses.replace(block, width=width), working


@dataclasses.dataclass(frozen=True, eq=False)
class PreparedJacobian:
    """A plan compiled for one split, input shape, device and budget: call it on inputs.

    ``prepared(inputs)`` returns the dense :class:`LayerJacobian`; ``prepared.compressed(inputs)`` the
    :class:`CompressedJacobian`; ``prepared.run(inputs, sink=...)`` whatever the sink makes. Build one with
    :func:`prepare`; :func:`layersens.jacobian` keeps a few (``compute.PREPARED_KEPT``).

    Attributes:
      split: what it differentiates.
      plan: the plan, with the chunk widths the compiled programs use.
      device: where it runs.
      compile_seconds: time spent planning and compiling.
    """

    split: LayerSplit
    planned: Plan
    device: jax.Device
    compile_seconds: float
    structure: dict = dataclasses.field(repr=False)  # the split's channel structure the plan was made with
    params: dict = dataclasses.field(repr=False)
    # compiles the programs that compute blocks one example at a time (``_Programs``); run at once, or on first
    # use for a small layer whose dense results come from examples side by side (which do not need them)
    build: Callable[[], _Programs] = dataclasses.field(repr=False)
    chosen_devices: tuple[jax.Device, ...] = dataclasses.field(repr=False)
    _built: list[_Programs] = dataclasses.field(default_factory=list, repr=False)
    # the dense program once compiled
    _compiled: dict[str, jax.stages.Compiled] = dataclasses.field(default_factory=dict, repr=False)
    # a small layer's candidate programs for examples side by side (else None), and their compiled programs by
    # group size and candidate (None: the trial's choice; ``_side_by_side``)
    whole: Candidates | None = dataclasses.field(default=None, repr=False)
    _side: dict[tuple[int, str | None], SideBySide] = dataclasses.field(default_factory=dict, repr=False)

    @property
    def plan(self) -> Plan:
        """The plan, with the chunk widths the compiled programs use (as planned until they are compiled)."""
        return self._built[0].plan if self._built else self.planned

    def programs(self) -> tuple[_Programs, float]:
        """The per-example programs, and the seconds spent compiling them now (0 when they were already)."""
        if self._built:
            return self._built[0], 0.0
        start = time.perf_counter()
        with jax.default_device(self.device):
            self._built.append(self.build())
        return self._built[0], time.perf_counter() - start

    @property
    def devices(self) -> tuple[jax.Device, ...]:
        """Every device the work is spread over."""
        return self.chosen_devices

    @property
    def where(self) -> str:
        """The device, or ``"cpu:0-7 (8 devices)"``."""
        devices = self.devices
        first = f"{devices[0].platform}:{devices[0].id}"
        return first if len(devices) == 1 else f"{first}-{devices[-1].id} ({len(devices)} devices)"

    def __repr__(self) -> str:
        return (
            f"PreparedJacobian(layer={self.split.layer!r}, plan={self.plan.describe()!r}, "
            f"device={self.device.platform}:{self.device.id}, compile_seconds={self.compile_seconds:.3g})"
        )

    def __call__(self, inputs, *, progress=None) -> LayerJacobian:
        return self.run(inputs, progress=progress)

    def compressed(self, inputs, *, progress=None) -> CompressedJacobian:
        """The :class:`CompressedJacobian`: per-channel blocks for the leaves this plan colours."""
        return self.run(inputs, progress=progress, sink=CompressedSink())

    @overload
    def run(
        self, inputs, *, progress: Callable[[int, int], None] | None = None, sink: None = None
    ) -> LayerJacobian: ...

    @overload
    def run(self, inputs, *, progress: Callable[[int, int], None] | None = None, sink: Sink[Result]) -> Result: ...

    def run(self, inputs, *, progress: Callable[[int, int], None] | None = None, sink: Sink[Any] | None = None) -> Any:
        """Computes every block for ``inputs`` (checked and cast as the model's inputs) into ``sink`` (default: a
        :class:`DenseSink`), calling ``progress(done, total)`` as chunks land, and returns the sink's result."""
        x = self.split.model.check_inputs(inputs, dtype=self.split.input_dtype)
        return self.execute(x, DenseSink() if sink is None else sink, progress)

    def execute(self, x: np.ndarray, target: Sink[Result], progress=None) -> Result:
        """:meth:`run` for inputs already checked and cast (``Model.check_inputs``)."""
        split = self.split
        if target.whole_matrix and self.whole is not None and len(self.devices) == 1:
            target.begin(Job(split, self.plan, self.structure, len(x), self.where, x))
            return self._side_by_side(x, target, progress)
        programs, compile_seconds = self.programs()
        target.begin(Job(split, programs.plan, self.structure, len(x), self.where, x))
        if target.channel_examples and programs.fused is not None and len(self.devices) == 1:
            return self._compressed_side_by_side(x, target, programs, progress, compile_seconds)
        if target.whole_matrix and len(x) == 1 and programs.dense is not None and programs.lanes is None:
            if "dense" not in self._compiled:
                start = time.perf_counter()
                spec = jax.ShapeDtypeStruct(x.shape[1:], x.dtype)
                with jax.default_device(self.device):
                    self._compiled["dense"] = programs.dense.lower(self.params, spec).compile()
                compile_seconds += time.perf_counter() - start
            start = time.perf_counter()
            x0 = x[0]  # placed by each program: an explicit device_put costs more (~75 µs on CPU)
            matrix = np.asarray(self._compiled["dense"](self.params, x0))  # zero-copy, read-only
            target.put(JacobianBlock(0, Layout.WHOLE, split.param_names, 0, matrix))
            activation = np.asarray(programs.activation(self.params, x0))[None]
            if progress is not None:
                progress(1, 1)
            return target.finish(Done(x, activation, time.perf_counter() - start, compile_seconds))

        start = time.perf_counter()
        activation = np.zeros((len(x),) + split.activation_shape, np.dtype(split.activation_dtype))
        processes, me = process_share(target)
        steps = programs.steps
        units = [(n, s) for n in range(len(x)) for s in range(len(steps))]
        mine = [u for i, u in enumerate(units) if i % processes == me]  # a process's share: whole (example, block)s
        total = sum(len(steps[s].offsets()) for _, s in mine)
        tick = _Ticker(progress, total)
        if programs.lanes is not None:
            run_lanes(programs.lanes, steps, x, mine, target, tick, activation)
            finish_share(processes)
            return target.finish(Done(x, activation, time.perf_counter() - start, compile_seconds))
        # One chunk in flight at a time: dispatching the next before placing this one was measured slower (two
        # chunks' device buffers alive made the allocator map fresh pages; XLA already uses every core).
        for n in sorted({n for n, _ in mine}):
            indices = [s for m, s in mine if m == n]
            if not target.needed(n, None, 0, 0):  # resumed: this example is done
                tick.skip(sum(len(steps[s].offsets()) for s in indices))
                continue
            example = x[n]  # placed by each program: an explicit device_put costs more (~75 µs on CPU)
            activation[n] = np.asarray(programs.activation(self.params, example))
            target.activation(n, activation[n])
            for s in indices:
                self._step(steps[s], n, example, target, tick)
        finish_share(processes)
        return target.finish(Done(x, activation, time.perf_counter() - start, compile_seconds))

    def side_by_side(self, group: int, xs=None, method: str | None = None) -> SideBySide:
        """The compiled program for ``group`` examples side by side, compiled on first use: the candidate
        ``method``, or, by default, the one a timed trial on ``xs`` chooses when the plan asks for one."""
        key = (group, method)
        found = self._side.get(key)
        if found is None:
            assert self.whole is not None, "examples side by side are for small layers"
            programs = self.whole.programs if method is None else {method: self.whole.programs[method]}
            if xs is None:
                spec = example_spec(self.split, None)
                xs = np.zeros((group,) + tuple(spec.shape), spec.dtype)
            xs = jax.device_put(xs, self.device)
            found = self._side[key] = compile_side_by_side(self.split, programs, self.params, xs, self.device)
        return found

    def _side_by_side(self, x: np.ndarray, target: Sink[Result], progress) -> Result:
        """Every example in groups, each group's matrices and layer values from one program."""
        assert self.whole is not None, "examples side by side are for small layers"
        trial_group = self.whole.group_size(self.split, len(x))
        fresh = (trial_group, None) not in self._side
        program = self.side_by_side(trial_group, x[:trial_group])
        compile_seconds = program.compile_seconds if fresh else 0.0
        notes: tuple[str, ...] = (program.trial.describe(),) if fresh and program.trial is not None else ()
        method = None if program.method == "plan" else program.method
        # The trial compares every candidate on groups the largest one fits; the one chosen may take more
        # examples at once (a ViT's final norm, 8 examples: plain reverse mode in 1 group, not 4 groups of 2)
        group = self.whole.group_size(self.split, len(x), program.method)
        if group != trial_group:
            fresh = (group, program.method) not in self._side
            program = self.side_by_side(group, x[:group], program.method)
            compile_seconds += program.compile_seconds if fresh else 0.0
            if notes:
                notes += (f"{program.method} then computed {group} example(s) at a time (its own working memory)",)
        start = time.perf_counter()
        activation = np.empty((len(x),) + self.split.activation_shape, np.dtype(self.split.activation_dtype))
        tick = _Ticker(progress, -(-len(x) // group))
        for first, keep, (matrices, values) in _in_flight(program.run, self.params, x, group, self.device):
            matrices, values = np.asarray(matrices)[:keep], np.asarray(values)[:keep]  # zero-copy on CPU, read-only
            activation[first : first + keep] = values
            target.put(JacobianBlock(first, Layout.EXAMPLES, self.split.param_names, 0, matrices))
            tick.advance(1)
        seconds = time.perf_counter() - start
        return target.finish(Done(x, activation, seconds, compile_seconds, method, notes))

    def _compressed_side_by_side(
        self, x: np.ndarray, target: Sink[Result], programs: _Programs, progress, compile_seconds: float
    ) -> Result:
        """The compressed form of every example in groups: each group's channel blocks, dense columns and layer
        values from one program (``_compressed_examples``)."""
        assert programs.fused is not None, "for plans computed by one fused program per example"
        split = self.split
        coloured = {n: self.structure[n] for n in programs.plan.coloured}
        budget = programs.plan.budget if programs.plan.budget_given else None  # a budget given is kept
        per_example = compressed_example_bytes(split, coloured)
        policy = execution_policy(self.device.platform)
        group = compressed_group_size(per_example, programs.working, len(x), budget, policy)
        key = f"compressed {group}"
        if key not in self._compiled:
            start = time.perf_counter()
            spec = jax.ShapeDtypeStruct((group,) + x.shape[1:], x.dtype)
            with jax.default_device(self.device):
                run = jax.jit(compressed_program(split, programs.fused, coloured))
                self._compiled[key] = run.lower(self.params, spec).compile()
            compile_seconds += time.perf_counter() - start
        program = self._compiled[key]
        start = time.perf_counter()
        activation = np.empty((len(x),) + split.activation_shape, np.dtype(split.activation_dtype))
        tick = _Ticker(progress, -(-len(x) // group))
        dense_names = tuple(n for n in split.param_names if n not in coloured)
        for first, keep, (channel, dense, values) in _in_flight(program, self.params, x, group, self.device):
            for name, blocks in channel.items():  # zero-copy on CPU, read-only
                target.put(JacobianBlock(first, Layout.CHANNEL_EXAMPLES, (name,), 0, np.asarray(blocks)[:keep]))
            target.put(JacobianBlock(first, Layout.EXAMPLES, dense_names, 0, np.asarray(dense)[:keep]))
            activation[first : first + keep] = np.asarray(values)[:keep]
            tick.advance(1)
        return target.finish(Done(x, activation, time.perf_counter() - start, compile_seconds))

    def _step(self, step: _Step, n: int, example, target: Sink, tick: _Ticker) -> None:
        """One plan block of example ``n``: its chunks the sink still needs, each block handed over once."""
        offsets = step.offsets()
        wanted = [step.names is None or target.needed(n, step.names, offset, offset + step.width) for offset in offsets]
        if not any(wanted):
            tick.skip(len(offsets))
            return
        linear = step.linearize(self.params, example) if step.linearize is not None else None
        covered = 0
        for offset, want in zip(offsets, wanted):
            if want:
                if linear is None:
                    outputs = step.compute(self.params, example, np.int32(offset))
                else:
                    outputs = step.compute(linear, np.int32(offset))
                for block in step.blocks(n, offset, [np.asarray(o) for o in outputs]):
                    target.put(block.after(covered))  # the last chunk overlaps the one before: trimmed
                tick.advance(1)
            else:
                tick.skip(1)
            covered = offset + step.width


def _in_flight(run, params, x: np.ndarray, group: int, device: jax.Device):
    """``(first, keep, outputs)`` of ``run(params, xs)`` for each group of ``x`` (``in_groups``), with
    ``execution_policy(device.platform).in_flight`` groups dispatched before the first is handed back, each
    copying itself to the host as soon as it is computed: an accelerator computes the next group while the last
    one crosses the bus. The inputs are placed by the program (a ``device_put`` costs more on CPU)."""
    depth = execution_policy(device.platform).in_flight
    pending: list = []
    for first, xs, keep in in_groups(x, group):
        outputs = run(params, xs)
        if depth > 1:
            for leaf in jax.tree_util.tree_leaves(outputs):
                leaf.copy_to_host_async()
        pending.append((first, keep, outputs))
        if len(pending) >= depth:
            yield pending.pop(0)
    yield from pending


class _Ticker:
    """Counts chunks for ``progress(done, total)``: computed chunks as they land on the host, skipped (resumed)
    ones at once."""

    def __init__(self, progress, total: int):
        self.progress, self.total, self.done = progress, total, 0

    def advance(self, count: int) -> None:
        self.done += count
        if self.progress is not None:
            self.progress(self.done, self.total)

    def skip(self, count: int) -> None:
        skipped = getattr(self.progress, "skipped", None)  # resumed work is done but says nothing of the rate
        if skipped is not None:
            skipped(count)
        self.advance(count)


def prepare(
    split: LayerSplit, example=None, mode=Auto(), max_memory=None, device=None, devices=None
) -> PreparedJacobian:
    """Plans ``mode`` for ``split`` and compiles its programs for inputs shaped like ``example`` (one example, a
    batch, a ``ShapeDtypeStruct`` or ``None``).

    Cost: one compilation per block (a few when XLA's count narrows a chunk). Raises
    :class:`~layersens.MemoryBudgetError` when ``max_memory`` is given and the narrowest chunk exceeds it.
    """
    chosen = resolve_devices(device, devices)
    return compile_plan(split, make_plan(split, example, mode, max_memory, chosen[0]), chosen)


def compile_plan(split: LayerSplit, planned: Plan, devices, hold=None) -> PreparedJacobian:
    """Compiles a :class:`Plan` of ``split`` for ``devices`` (one device, or several: see ``_lanes``); see
    :func:`prepare`. ``hold(split)`` is what the programs and the result keep of the split (default: the split
    itself; ``weakref.proxy`` for kept plans)."""
    devices = (devices,) if isinstance(devices, jax.Device) else tuple(devices)
    with jax.default_device(devices[0]):  # programs lowered from shapes alone (a linear map's) go there too
        return _compile_plan(split, planned, devices, hold)


def _compile_plan(split: LayerSplit, planned: Plan, devices: tuple[jax.Device, ...], hold) -> PreparedJacobian:
    dev = devices[0]
    start = time.perf_counter()
    structure = analyze(split).structure
    limits = analyze(split).limits
    unheld = split
    if hold is not None:
        split = hold(split)
    spec = example_spec(split, None)
    params = jax.device_put(split.params, dev)
    x0 = jax.device_put(np.zeros(spec.shape, spec.dtype), dev)
    whole = candidates(unheld, planned, structure, limits, held=split, policy=execution_policy(dev.platform))

    def build() -> _Programs:
        return _compile_programs(split, planned, structure, devices, params, x0)

    prepared = PreparedJacobian(
        split=split,
        planned=planned,
        device=dev,
        compile_seconds=0.0,
        structure=structure,
        params=params,
        build=build,
        chosen_devices=devices,
        whole=whole,
    )
    if whole is None or len(devices) > 1:
        prepared.programs()  # a small layer compiles them on first use: its dense results do not need them
    return dataclasses.replace(prepared, compile_seconds=time.perf_counter() - start, _built=prepared._built)


@dataclasses.dataclass(frozen=True)
class _Programs:
    """The programs that compute a plan's blocks one example at a time: ``steps`` (one per block, or one fused),
    ``activation`` (the layer's values), ``dense`` (one small example's whole matrix, jitted, or None) and
    ``lanes`` (over several devices, or None); ``plan`` with the widths they were compiled at."""

    plan: Plan
    steps: tuple[_Step, ...]
    activation: jax.stages.Compiled
    dense: jax.stages.Wrapped | None
    lanes: Lanes | None
    # for a plan computed by one fused program per example: that kernel and XLA's count of its working memory
    # (the compressed form of examples side by side, ``_compressed_examples``)
    fused: Kernel | None = None
    working: int | None = None


def _compile_programs(split: LayerSplit, planned: Plan, structure, devices, params, x0) -> _Programs:
    dev = devices[0]
    budget = planned.budget
    notes = list(planned.notes)
    steps, dense, blocks, one, working = None, None, planned.blocks, None, None
    if all(b.width >= b.basis for b in blocks):
        fused = fused_kernel([kernel(b.method, split, b.names, b.width, structure) for b in blocks])
        compute = jax.jit(fused.compute).lower(params, x0, np.int32(0)).compile()
        working = program_memory(compute)
        if working is None or working <= budget:
            steps, one = (_Step(None, compute, fused.blocks, 1, 1, None),), fused
            if dense_bytes(split, 1) <= execution_policy(dev.platform).device_dense_max_bytes:
                dense = jax.jit(dense_program(split, fused))
    if steps is None:
        compiled = [_compile_block(split, b, params, x0, budget, structure) for b in blocks]
        steps = tuple(c[0] for c in compiled)
        blocks = tuple(c[1] for c in compiled)
        over = [(b, w) for _, b, w in compiled if w is not None and w > budget]
        if over:
            block, working = max(over, key=lambda o: o[1])
            what = f"{block.describe} at {block.width} basis vector(s) per chunk"
            if block.fixed_width:
                notes.append(f"the chunk size asked for ({what}) needs {format_bytes(working)}, over the budget")
            elif planned.budget_given:
                raise MemoryBudgetError(
                    f"max_memory is {format_bytes(budget)}, but the narrowest chunk of {what} needs "
                    f"{format_bytes(working)} of working memory (XLA's count of the compiled program). Raise "
                    f"--max-memory (max_memory=) to at least {format_bytes(working)}."
                )
            else:
                notes.append(
                    f"the default working memory ({format_bytes(budget)}) was raised to "
                    f"{format_bytes(working)}: the narrowest chunk of {what} needs it"
                )
    # The activation is a program of its own: returned from the kernels' programs as well, it changed XLA's
    # fusion of the dense forward kernel (a transposed copy, measured 5× slower on relu1).
    # (a function of its own, not the bound method: a kept plan holds its split only weakly, see ``_cache``)
    activation = jax.jit(lambda p, x: split.evaluate(p, x)).lower(params, x0).compile()
    final = dataclasses.replace(planned, blocks=blocks, notes=tuple(notes))
    lanes = compile_lanes(split, final, steps, structure, devices, np.asarray(x0)) if len(devices) > 1 else None
    return _Programs(
        plan=final, steps=steps, activation=activation, dense=dense, lanes=lanes, fused=one, working=working
    )
