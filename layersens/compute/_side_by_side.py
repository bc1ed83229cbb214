"""Small layers, examples side by side: one program computes a group of examples' whole matrices and layer values.

For a small layer the work of one example is a fraction of a millisecond, less than dispatching it: looping
over examples (one dispatch, one host placement per example and block) was measured 5–10× slower than JAX's
own ``jax.jit(jax.vmap(jax.jacrev(f)))``. Here every example of a group goes through one program, vmapped over
the examples, which returns the ``(group, M, P)`` matrices and the layer's values at once.

Which program: the plan's own (its blocks fused into one whole matrix), plain reverse mode (``jax.jacrev`` of
every leaf at once), plain forward mode (``jax.jacfwd``), or, where the plan separates channels, the same plan
without (``SeparatedForward``'s masks and expansions are not in the cost model). The cost model counts
arithmetic and writes; on layers this small, what XLA makes of each program decides, so ``Auto`` lets a short
timed trial on the first group pick (``Plan.trial``), once per group size, and says what it measured
(:class:`Trial`). The candidates compute the same Jacobian (each is checked against ``jax.jacrev`` in the
tests); a mode a leaf cannot be differentiated in is never a candidate.
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import time
from typing import TYPE_CHECKING, Callable

import jax
import numpy as np

from ..planning import DenseForward, DenseReverse, SeparatedForward, describe_blocks, plan_blocks
from ._blocks import dense_bytes
from ._kernels import dense_program, fused_kernel, kernel
from ._platform import CPU, ExecutionPolicy

if TYPE_CHECKING:
    from ..tracing import LayerSplit

# Timed rounds of the trial (after one untimed run of each candidate); the median decides.
TRIAL_ROUNDS = 5
# A candidate this many times slower than the best after its first run leaves the trial.
TRIAL_DROP = 4.0
# Plain reverse or forward mode joins the trial only when the cost model puts it within this factor of the plan
# (each candidate costs a compilation). The model counts passes, and XLA runs a batch of passes through a small
# layer for far less than that count says: a ViT patch embedding's 256 plain pullbacks were estimated at 16× its
# 16 coloured ones and measured equal (benchmarks/reports/zoo-cpu), so the factor is wide.
TRIAL_COST_FACTOR = 32.0


@dataclasses.dataclass(frozen=True)
class Trial:
    """What a timed trial measured: each candidate's median seconds for one group, and the one chosen."""

    group: int
    seconds: dict[str, float]
    chosen: str

    def describe(self) -> str:
        timings = ", ".join(f"{name} {s * 1e3:.3g} ms" for name, s in sorted(self.seconds.items(), key=lambda i: i[1]))
        return f"timed trial for {self.group} example(s) side by side chose {self.chosen} ({timings})"


@dataclasses.dataclass(frozen=True)
class SideBySide:
    """A compiled program for ``group`` examples: ``run(params, xs) -> (matrices, activations)``; ``method``
    names the program (``"plan"``, ``"rev"``, ``"fwd"``, or the plan without channel separation by its methods);
    ``trial`` is what decided, if a trial did."""

    group: int
    method: str
    run: jax.stages.Compiled
    compile_seconds: float
    trial: Trial | None = None


@dataclasses.dataclass(frozen=True)
class Candidates:
    """The programs that may compute a small layer's examples side by side: ``programs`` maps a name to
    ``dense(params, x) -> (M, P)`` for one example; ``working`` maps it to its estimated working memory per
    example, and ``cap`` is what a group may take (the user's budget, else the platform's
    ``ExecutionPolicy.working_max_bytes``): they size the groups, with ``group_max`` bytes of matrices at most."""

    programs: dict[str, Callable]
    working: dict[str, int]
    cap: int
    group_max: int = CPU.group_max_bytes

    def group_size(self, split: LayerSplit, num_examples: int, method: str | None = None) -> int:
        """Examples per program: all of them, up to ``group_max`` bytes of matrices and ``cap`` of working
        memory for ``method`` (default: for the largest candidate, so that a trial compares every candidate on
        the same group)."""
        working = max(self.working.values()) if method is None else self.working[method]
        return groups_within(num_examples, dense_bytes(split, 1), self.group_max, working, self.cap)


def groups_within(num_examples: int, result_bytes: int, result_cap: int, working: int, working_cap: int) -> int:
    """The group size (``equal_groups``) for examples that each return ``result_bytes`` and take ``working``
    bytes to compute, a group holding at most ``result_cap`` of results and ``working_cap`` of working memory."""
    by_result = result_cap // max(1, result_bytes)
    by_working = working_cap // max(1, working)
    return equal_groups(num_examples, min(by_result, by_working))


def equal_groups(num_examples: int, largest: int) -> int:
    """The group size for ``num_examples`` in groups of at most ``largest`` (at least one): equal groups, the last
    one topped up to the group size, so 8 examples in groups of at most 6 run as 4 + 4, not 6 + 6 (measured 2x
    slower)."""
    largest = max(1, min(num_examples, largest))
    groups = -(-num_examples // largest)
    return -(-num_examples // groups)


def in_groups(x, group: int):
    """``(first, xs, keep)`` for each group of the examples ``x``: ``xs`` is ``x[first : first + group]``, the last
    one topped up with copies of its last example (one compiled size), of which the first ``keep`` are real."""
    for first in range(0, len(x), group):
        xs = x[first : first + group]
        keep = len(xs)
        if keep < group:
            xs = np.concatenate([xs, np.repeat(xs[-1:], group - keep, axis=0)])
        yield first, xs, keep


def fits(split: LayerSplit, policy: ExecutionPolicy = CPU) -> bool:
    """Whether ``split``'s layer is small enough for examples side by side under ``policy``."""
    return dense_bytes(split, 1) <= policy.side_by_side_max_bytes


def candidates(
    split: LayerSplit, plan, structure, limits, held=None, policy: ExecutionPolicy = CPU
) -> Candidates | None:
    """The candidates for a small layer's examples side by side (``None`` where the layer is not small): the plan's
    blocks each computed in one chunk, and where the plan asks for a trial, plain reverse and forward mode
    (where every leaf can be differentiated so, ``limits``: ``analysis.AutodiffLimits``, and they differ from the
    plan). Each must fit its working memory in the plan's budget when the user gave one, else in
    ``policy.working_max_bytes``. The programs hold ``held`` (default: ``split``; a kept plan holds its split
    weakly, and the sizes are read from the split itself)."""
    held = split if held is None else held
    if not fits(split, policy) or any(b.fixed_width and b.width < b.basis for b in plan.blocks):
        return None  # not small, or the user asked for chunks
    cap = plan.budget if plan.budget_given else max(plan.budget, policy.working_max_bytes)
    options = [("plan", tuple((b.method, b.names, b.basis * b.bytes_per_vector) for b in plan.blocks))]
    if plan.trial and os.environ.get("LAYERSENS_TRIAL", "1") != "0":  # the variable turns trials off everywhere
        names = split.param_names
        for method, blocked in ((DenseReverse(), limits.reverse_blocked), (DenseForward(), limits.forward_blocked)):
            if blocked or [(b.names, b.method) for b in plan.blocks] == [(names, method)]:
                continue
            if method.cost(split, names) > TRIAL_COST_FACTOR * plan.cost:
                continue  # the estimate leaves it no chance: not worth a compilation
            working = method.basis_size(split, names) * method.bytes_per_vector(split, names)
            options.append((method.name, ((method, names, working),)))
        if any(isinstance(b.method, SeparatedForward) for b in plan.blocks):
            # the same plan without channel separation: separated tangents pay masks and expansions the cost
            # model does not count, which on a small layer can outweigh the passes they save
            alternative = plan_blocks(split, structure, separate=False, channel_first=plan.channel_first)
            blocks = tuple(
                (b.method, b.names, b.method.basis_size(split, b.names) * b.method.bytes_per_vector(split, b.names))
                for b in alternative
            )
            options.append((describe_blocks(alternative), blocks))
    programs, workings = {}, {}
    for name, blocks in options:
        working = sum(w for _, _, w in blocks)
        if working > cap:
            continue
        kernels = [kernel(m, held, names, m.basis_size(split, names), structure) for m, names, _ in blocks]
        programs[name] = dense_program(held, kernels[0] if len(kernels) == 1 else fused_kernel(kernels))
        workings[name] = working
    return Candidates(programs, workings, cap, policy.group_max_bytes) if programs else None


def _batched(split: LayerSplit, dense: Callable) -> Callable:
    def one(params, x):
        return dense(params, x), split.evaluate(params, x)

    return jax.vmap(one, in_axes=(None, 0))


def _timed(run, params, xs) -> float:
    start = time.perf_counter()
    jax.block_until_ready(run(params, xs))
    return time.perf_counter() - start


def compile_side_by_side(
    split: LayerSplit, programs: dict[str, Callable], params, xs, device: jax.Device
) -> SideBySide:
    """Compiles each candidate for the group ``xs`` (already on ``device``) and, if there are several, keeps
    the fastest by a timed trial on ``xs``."""
    start = time.perf_counter()
    with jax.default_device(device):
        compiled = {name: jax.jit(_batched(split, d)).lower(params, xs).compile() for name, d in programs.items()}
    compile_seconds = time.perf_counter() - start
    if len(compiled) == 1:
        ((name, run),) = compiled.items()
        return SideBySide(len(xs), name, run, compile_seconds)
    first = {name: _timed(run, params, xs) for name, run in compiled.items()}  # warms each program up
    best_first = min(first.values())
    racing = {name: run for name, run in compiled.items() if first[name] <= TRIAL_DROP * best_first}
    times: dict[str, list[float]] = {name: [] for name in racing}
    for _ in range(TRIAL_ROUNDS):
        for name, run in racing.items():  # interleaved: a noisy moment slows every candidate alike
            times[name].append(_timed(run, params, xs))
    seconds = {name: statistics.median(t) for name, t in times.items()}
    seconds.update({name: t for name, t in first.items() if name not in racing})
    chosen = min(racing, key=lambda name: seconds[name])
    return SideBySide(len(xs), chosen, compiled[chosen], compile_seconds, Trial(len(xs), seconds, chosen))
