"""Channel-separated tangents: which equations keep a leaf's channels apart, and what carrying them costs.

A leaf whose last axis has C > 1 channels has columns ``(w, c)``. Its tangents can be pushed forward as W
*separated* tangents, each standing for the C columns ``(w, 0..C-1)`` on disjoint channel slices, while every
equation keeps channels apart; ``compute._separated`` evaluates the JVP program that way. This module decides,
equation by equation and from abstract states alone, what that evaluation does, so that the evaluator and the
planner's cost estimate cannot disagree. A value's state is ``None`` (no tangent reaches it), a
:class:`SeparatedAxis` (position ``i`` along ``axis`` holds channel ``(i // inner) % C``) or ``MIXED`` (one
tangent per column). :func:`decide` gives each equation one of:

* ``KEEP``: the structure analysis' rule (``STRUCTURE_RULES``) proves that output channel c reads input channel c
  alone (elementwise work, per-channel scales, pooling over other axes); or a reshape that keeps each position's
  channel computable (a flatten merging the channel axis sets ``inner``). Runs once per ``w``.
* ``MIX``: the equation mixes channels, and a rule computes all C columns at the price of one pass: a
  convolution reading separated input features (one grouped convolution), a contraction over a separated axis
  (the channel becomes a batch dimension). Once per ``w``; its outputs are ``MIXED``.
* ``COLUMNS``: anything else: separated operands are expanded into columns and the equation runs once per
  column (C times per ``w``): unknown code costs speed, never correctness.

Cost per ``w`` (``Separation.flops``): Σ over equations a tangent reaches of flops × (C for ``COLUMNS``, else 1),
from one pass per leaf over the derivative program. Equations of primal values alone run once per example and
are not counted. Calls (``jit``) are walked; loops, branches and custom derivative calls take ``COLUMNS``.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import TYPE_CHECKING

import numpy as np
from jax.extend import core as jcore
from jax.extend.core import primitives as P

from ._cost import _bytes, equation_flops
from ._interpreter import CALL_BODIES
from ._structure import MIXED, STRUCTURE_RULES, _shape

if TYPE_CHECKING:
    from ..tracing import LayerSplit


@dataclasses.dataclass(frozen=True)
class SeparatedAxis:
    """Position ``i`` along ``axis`` holds channel ``(i // inner) % C``."""

    axis: int
    inner: int = 1


class Action(enum.Enum):
    PRIMAL = "primal"
    KEEP = "keep"
    MIX = "mix"
    COLUMNS = "columns"


@dataclasses.dataclass(frozen=True)
class Decision:
    action: Action
    outs: tuple  # the output states


# With ``inner`` > 1 the channel is a stride within an axis; only these equations, which keep every position
# in place, may carry such a tangent through ``STRUCTURE_RULES``.
_POSITIONWISE = {
    p
    for p in (
        P.add_p,
        getattr(P, "add_any_p", None),
        P.sub_p,
        P.mul_p,
        P.neg_p,
        P.div_p,
        P.select_n_p,
        P.convert_element_type_p,
        getattr(P, "copy_p", None),
    )
    if p is not None
}
# Calls the evaluator walks into (custom derivative calls are left whole: their rules were applied already).
WALKED_CALLS = {p for p in CALL_BODIES if p not in (P.custom_jvp_call_p, P.custom_vjp_call_p)}


def _columns(eqn) -> Decision:
    return Decision(Action.COLUMNS, (MIXED,) * len(eqn.outvars))


def _keep(eqn, ins: list) -> Decision | None:
    rule = STRUCTURE_RULES.get(eqn.primitive)
    separated = [(v, s) for v, s in zip(eqn.invars, ins) if isinstance(s, SeparatedAxis)]
    inner = {s.inner for _, s in separated}
    if rule is None or len(inner) != 1:
        return None
    (inner_value,) = inner
    if inner_value != 1 and eqn.primitive not in _POSITIONWISE:
        return None
    axes = rule(eqn, [s.axis if isinstance(s, SeparatedAxis) else None for s in ins])
    length = _shape(separated[0][0])[separated[0][1].axis]
    if any(_shape(v)[s.axis] != length for v, s in separated):
        return None
    if any(a is None or a == MIXED or _shape(o)[a] != length for o, a in zip(eqn.outvars, axes)):
        return None
    return Decision(Action.KEEP, tuple(SeparatedAxis(a, inner_value) for a in axes))


def reshape_separated(old, new, state: SeparatedAxis, channels: int) -> SeparatedAxis | None:
    """Where a separated axis lands in a row-major reshape from ``old`` to ``new``: the channel's element stride
    ``s`` must fall in a new axis whose trailing size divides ``s`` and that spans whole periods of C."""
    stride = state.inner * int(np.prod(old[state.axis + 1 :], dtype=np.int64))
    for b in range(len(new)):
        trailing = int(np.prod(new[b + 1 :], dtype=np.int64))
        if stride % trailing == 0 and (new[b] * trailing) % (stride * channels) == 0:
            return SeparatedAxis(b, stride // trailing)
    return None


def conv_mixes(eqn, ins: list) -> bool:
    """A convolution of separated input features (on their own axis) with a constant kernel."""
    lhs, rhs = ins
    p = eqn.params
    return (
        isinstance(lhs, SeparatedAxis)
        and rhs is None
        and lhs.inner == 1
        and lhs.axis == p["dimension_numbers"].lhs_spec[1]
        and p["feature_group_count"] == 1
        and p["batch_group_count"] == 1
    )


def dot_mixes(eqn, ins: list) -> bool:
    """A contraction of one separated operand over its separated axis, with a constant."""
    lhs, rhs = ins
    (lc, rc), _ = eqn.params["dimension_numbers"]
    if isinstance(lhs, SeparatedAxis) and rhs is None:
        return lhs.axis in lc
    if isinstance(rhs, SeparatedAxis) and lhs is None:
        return rhs.axis in rc
    return False


def decide(eqn, ins: list, channels: int) -> Decision:
    """What evaluating ``eqn`` on operands in states ``ins`` does (see the module docstring)."""
    if all(s is None for s in ins):
        return Decision(Action.PRIMAL, (None,) * len(eqn.outvars))
    if any(s == MIXED for s in ins):
        return _columns(eqn)
    if eqn.primitive is P.reshape_p:
        if ins[1:] == [None] * (len(ins) - 1) and eqn.params.get("dimensions") in (None, ()):
            moved = reshape_separated(_shape(eqn.invars[0]), _shape(eqn.outvars[0]), ins[0], channels)
            if moved is not None:
                return Decision(Action.KEEP, (moved,))
        return _columns(eqn)
    kept = _keep(eqn, ins)
    if kept is not None:
        return kept
    if (eqn.primitive is P.conv_general_dilated_p and conv_mixes(eqn, ins)) or (
        eqn.primitive is P.dot_general_p and dot_mixes(eqn, ins)
    ):
        return Decision(Action.MIX, (MIXED,))
    return _columns(eqn)


@dataclasses.dataclass(frozen=True)
class Separation:
    """Leaf ``leaf`` carried channel-separated: ``channels`` (the length of its axis ``leaf_axis``: -1, its last,
    or 0, its first), and the arithmetic (``flops``) and the estimated working memory (``bytes``) of one
    within-channel index's pass, all C of its columns."""

    leaf: str
    channels: int
    flops: float
    bytes: int
    leaf_axis: int = -1

    @property
    def flops_per_column(self) -> float:
        return self.flops / self.channels


# A leaf is carried apart along its first axis (an (out, in) kernel's outputs, an OIHW kernel's output features)
# only where that costs at most this fraction of carrying it along its last (Flax's layout, the usual case), and
# only where every mix is a convolution: measured on an MLP with (out, in) kernels, the first layer's kernel
# carried apart to the next dense layer took 58 ms against 36 ms in the shared reverse pass (the expansions after
# a contraction's mix are not in the cost model; the ViT's contraction-mixed separations measured 0.63-0.92x
# likewise, benchmarks/README.md), while an OIHW kernel through the next convolution took 1.22-1.34x less time
# (benchmarks/reports/channel-first-cpu).
FIRST_AXIS_FACTOR = 0.5


def separations(split: LayerSplit, closed) -> dict[str, Separation]:
    """The leaves of ``split`` with a channel axis (the last, or the first where that is much cheaper; longer than
    1), with the cost of carrying each channel-separated. Cost: one pass over the derivative program per leaf
    and candidate axis."""
    found = {}
    n_primal = len(closed.jaxpr.invars) - len(split.param_names)
    for k, (name, shape) in enumerate(zip(split.param_names, split.param_shapes)):
        along = {
            axis: _separation(closed.jaxpr, n_primal + k, name, shape, axis)
            for axis in (-1, 0)
            if len(shape) > (0 if axis == -1 else 1) and shape[axis] > 1
        }
        last = along[-1][0] if -1 in along else None
        first = along[0][0] if 0 in along and along[0][1] <= {P.conv_general_dilated_p} else None
        if first is not None and (last is None or first.flops_per_column < FIRST_AXIS_FACTOR * last.flops_per_column):
            found[name] = first
        elif last is not None:
            found[name] = last
    return found


def _separation(jaxpr, position: int, name: str, shape, leaf_axis: int) -> tuple[Separation, set]:
    """The cost of carrying leaf ``name`` (input ``position`` of ``jaxpr``) separated along ``leaf_axis``, and the
    primitives that mix its channels."""
    channels = int(shape[leaf_axis])
    total = [0.0, 0]
    mixes: set = set()

    def charge(eqn, ins):
        decision = decide(eqn, ins, channels)
        if decision.action is Action.MIX:
            mixes.add(eqn.primitive)
        if decision.action is not Action.PRIMAL:
            factor = channels if decision.action is Action.COLUMNS else 1
            total[0] += factor * _flops_within(eqn)
            # a separated output is one tangent per w, a mixed one C
            total[1] = max(
                [total[1]]
                + [
                    (1 if isinstance(s, SeparatedAxis) else channels) * _bytes(v)
                    for v, s in zip(eqn.outvars, decision.outs)
                ]
            )
        return list(decision.outs)

    states: list = [None] * len(jaxpr.invars)
    states[position] = SeparatedAxis(leaf_axis % len(shape))
    walk(jaxpr, states, charge)
    # The largest tangent twice (an operand and its result live at once): XLA fuses the elementwise chains
    # between, and the sum of every tangent overcounted XLA's own count 2-4x on the shipped LeNet. An
    # undercount costs a recompilation (the compiled program's count narrows the chunk), never the budget.
    return Separation(name, channels, total[0], 2 * int(total[1]), leaf_axis), mixes


def _flops_within(eqn) -> float:
    """An equation's arithmetic, a loop's or branch's body included (a scan's ``length`` times, a while loop's
    once, the dearest branch), every equation of it counted: an overestimate where only part of a body depends
    on the leaf, so loops rather not be separated."""
    bodies = [getattr(v, "jaxpr", v) for v in eqn.params.values() if isinstance(v, (jcore.Jaxpr, jcore.ClosedJaxpr))]
    branches = eqn.params.get("branches")
    if branches:
        return max(sum(_flops_within(e) for e in b.jaxpr.eqns) for b in branches)
    if not bodies:
        return equation_flops(eqn)
    times = max(1, int(eqn.params.get("length", 1)))
    return times * sum(_flops_within(e) for body in bodies for e in body.eqns)


def walk(jaxpr, states: list, step) -> list:
    """The evaluator's walk in states: ``jit`` calls reached by a tangent are entered, every other equation
    gets ``step(eqn, ins) -> outs`` (loops, branches and custom derivative calls are never entered: the
    evaluator expands them)."""
    env: dict = dict(zip(jaxpr.invars, states))

    def read(var):
        return env.get(var) if not hasattr(var, "val") else None

    for eqn in jaxpr.eqns:
        ins = [read(v) for v in eqn.invars]
        if eqn.primitive in WALKED_CALLS and any(s is not None for s in ins):
            body = eqn.params[CALL_BODIES[eqn.primitive]]
            outs = walk(getattr(body, "jaxpr", body), ins, step)
        else:
            outs = step(eqn, ins)
        env.update(zip(eqn.outvars, outs))
    return [read(v) for v in jaxpr.outvars]
