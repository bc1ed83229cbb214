"""Several local devices: the plan's programs run on *lanes*, one lane per device, placed with
``jax.sharding`` (a 1-D mesh; each lane's inputs, linear map and outputs live on its own device).

A lane is one (example, chunk) pair. With at least as many examples as devices, a step runs its examples side by
side (every lane the same chunk offset); with fewer, one example at a time with its chunks side by side (every
lane the same example, each its own offset; each device linearizes the example itself, which costs one forward
pass per device and saves moving the linear map). Each program is compiled once for all devices, as a
``shard_map``: every device runs the one-device program on its own lane. Not as one ``jit`` of a vmapped program
over sharded lanes: XLA's SPMD partitioner then splits the grouped convolutions that vmap makes of a pullback
through a conv (its ``feature_group_count`` is the lane count), and lane 1's conv-kernel columns came out wrong
(by 4.4 on LeNet's fc1, jax 0.10.2, CPU); under ``shard_map`` nothing is partitioned.

Every lane computes what the one-device programs compute for its (example, offset), so a sink's result is the same
on one device and on eight (tested), to rounding: XLA compiles the program over devices on its own, and its
fusions round differently (on LeNet, at most 2e-6 where |J| reaches 5, float32). Memory: the plan's budget per
device (CPU devices share the host's memory: ``devices × max_memory``).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Callable

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ._kernels import fused_kernel, kernel

if TYPE_CHECKING:
    from ..planning import Plan
    from ..tracing import LayerSplit
    from ._prepare import _Step


@dataclasses.dataclass(frozen=True)
class LaneStep:
    """One step's programs over lanes: ``linearize(params, xs)`` (or ``None``) and ``compute(linear, offsets)``
    (or ``compute(params, xs, offsets)`` for a step of one chunk)."""

    linearize: Callable | None
    compute: Callable


@dataclasses.dataclass(frozen=True)
class Lanes:
    devices: tuple[jax.Device, ...]
    params: dict
    activation: Callable
    steps: tuple[LaneStep, ...]
    lane: NamedSharding

    def put(self, rows: np.ndarray):
        """``rows`` (one per lane) onto the lanes' devices."""
        return jax.device_put(rows, self.lane)


def compile_lanes(split: LayerSplit, plan: Plan, steps: tuple[_Step, ...], structure, devices, x0) -> Lanes:
    """The lane programs of ``steps`` (the plan's one-device steps, with their final widths) over ``devices``."""
    D = len(devices)
    mesh = Mesh(np.array(devices), ("lanes",))
    lane, replicated = NamedSharding(mesh, PartitionSpec("lanes")), NamedSharding(mesh, PartitionSpec())
    params = jax.device_put(split.params, replicated)
    xs = jax.device_put(np.broadcast_to(x0, (D,) + x0.shape).copy(), lane)
    offsets = jax.device_put(np.zeros(D, np.int32), lane)

    L, R = PartitionSpec("lanes"), PartitionSpec()

    def compiled(f, in_specs, *args):
        # Each device holds one lane: its program is the one-device program (the lane axis taken off and put back).
        def one_lane(*local):
            unlaned = [a if spec == R else jax.tree.map(lambda v: v[0], a) for a, spec in zip(local, in_specs)]
            return jax.tree.map(lambda v: v[None], f(*unlaned))

        body = jax.shard_map(one_lane, mesh=mesh, in_specs=in_specs, out_specs=L, check_vma=False)
        return jax.jit(body).lower(*args).compile()

    lane_steps = []
    fused = len(steps) == 1 and steps[0].names is None
    kernels = (
        [fused_kernel([kernel(b.method, split, b.names, b.width, structure) for b in plan.blocks])]
        if fused
        else [kernel(b.method, split, b.names, b.width, structure) for b in plan.blocks]
    )
    for step, k in zip(steps, kernels):
        if step.linearize is None:
            program = compiled(k.compute, (R, L, L), params, xs, offsets)
            lane_steps.append(LaneStep(None, program))
        else:
            assert k.linearize is not None and k.chunk is not None
            linearize = compiled(k.linearize, (R, L), params, xs)
            linear = linearize(params, xs)
            lane_steps.append(LaneStep(linearize, compiled(k.chunk, (L, L), linear, offsets)))
    activation = compiled(lambda p, x: split.evaluate(p, x), (R, L), params, xs)
    return Lanes(tuple(devices), params, activation, tuple(lane_steps), lane)


def _groups(items: list, size: int):
    """``items`` in groups of ``size``, the last padded with its last item (a padded lane's values are dropped)."""
    for at in range(0, len(items), size):
        group = items[at : at + size]
        yield group, group + [group[-1]] * (size - len(group))


def run_lanes(lanes: Lanes, steps, x: np.ndarray, mine: list, target, tick, activation: np.ndarray) -> None:
    """Every (example, step) of ``mine`` over the lanes, into ``target`` (see the module docstring)."""
    D = len(lanes.devices)
    examples = sorted({n for n, _ in mine})
    todo = [n for n in examples if target.needed(n, None, 0, 0)]
    for n in sorted(set(examples) - set(todo)):  # resumed: done
        tick.skip(sum(len(steps[s].offsets()) for m, s in mine if m == n))
    for group, padded in _groups(todo, D):
        values = np.asarray(lanes.activation(lanes.params, lanes.put(x[padded])))
        for lane, n in enumerate(group):
            activation[n] = values[lane]
            target.activation(n, activation[n])
    pending = set(todo)
    for s, (step, lane_step) in enumerate(zip(steps, lanes.steps)):
        chosen = [n for n, t in mine if t == s and n in pending]
        if len(chosen) >= D or step.basis <= step.width:
            for group, padded in _groups(chosen, D):
                _examples_side_by_side(lanes, step, lane_step, x, group, padded, target, tick)
        else:
            for n in chosen:
                _chunks_side_by_side(lanes, step, lane_step, x, n, target, tick)


def _outputs(lanes: Lanes, step, lane_step: LaneStep, linear, xs, offsets) -> list[np.ndarray]:
    put = lanes.put(np.asarray(offsets, np.int32))
    if lane_step.linearize is None:
        outputs = lane_step.compute(lanes.params, xs, put)
    else:
        outputs = lane_step.compute(linear, put)
    return [np.asarray(o) for o in outputs]  # waits for every lane: counted as landed


def _examples_side_by_side(lanes, step, lane_step, x, group, padded, target, tick) -> None:
    xs = lanes.put(x[padded])
    linear = lane_step.linearize(lanes.params, xs) if lane_step.linearize is not None else None
    covered = 0
    for offset in step.offsets():
        wanted = [step.names is None or target.needed(n, step.names, offset, offset + step.width) for n in group]
        if any(wanted):
            host = _outputs(lanes, step, lane_step, linear, xs, [offset] * len(padded))
            for lane, n in enumerate(group):
                for block in step.blocks(n, offset, [h[lane] for h in host]):
                    target.put(block.after(covered))
            tick.advance(len(group))
        else:
            tick.skip(len(group))
        covered = offset + step.width


def _chunks_side_by_side(lanes, step, lane_step, x, n, target, tick) -> None:
    offsets = step.offsets()
    # each chunk is trimmed by where the chunk before it in the one-device order ended
    covered = dict(zip(offsets, [0] + [o + step.width for o in offsets[:-1]]))
    wanted = [o for o in offsets if step.names is None or target.needed(n, step.names, o, o + step.width)]
    tick.skip(len(offsets) - len(wanted))
    if not wanted:
        return
    xs = lanes.put(x[[n] * len(lanes.devices)])
    linear = lane_step.linearize(lanes.params, xs) if lane_step.linearize is not None else None
    for batch, padded in _groups(wanted, len(lanes.devices)):
        host = _outputs(lanes, step, lane_step, linear, xs, padded)
        for lane, offset in enumerate(batch):
            for block in step.blocks(n, offset, [h[lane] for h in host]):
                target.put(block.after(covered[offset]))
        tick.advance(len(batch))
