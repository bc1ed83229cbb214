"""Which inputs of a traced function can reach which values: the dependence analysis.

Call order cannot answer this: a side branch may run before the layer and not feed it. Each value's abstract
value is the set of inputs it depends on, a Python int used as a bit set; an equation's outputs depend on the
union of its operands' sets (the default rule, safe for every primitive). Calls, scans, loops and branches are
handled by the interpreter (fixed points over carries; a branch index or loop predicate joins every output).
Custom derivatives are opaque: their rule may differentiate an operand the primal body never reads, so their
outputs depend on every operand.

``DEPENDENCE_RULES`` holds the exceptions to the union; none is needed today (a more precise rule, such as
per-output dependence of a multi-output primitive, is one registered function).
"""

from __future__ import annotations

import functools

import jax
from jax.extend import core as jcore

from ._interpreter import Analysis, interpret


def _union(values) -> int:
    return functools.reduce(lambda a, b: a | b, values, 0)


def _default(eqn, ins):
    return [_union(ins)] * len(eqn.outvars)


DEPENDENCE_RULES: dict = {}

DEPENDENCE = Analysis(
    name="dependence",
    rules=DEPENDENCE_RULES,
    default=_default,
    join=lambda a, b: a | b,
    constant=0,
    control=lambda selector, value: selector | value,
)


def propagate(jaxpr, in_masks: list[int], observe=None) -> list[int]:
    """The input bit set of each output of ``jaxpr``, given those of its inputs. ``observe(eqn, ins, outs,
    times)``, if given, sees every equation (inside calls, loops and branches too) with its operands' sets."""
    return interpret(DEPENDENCE, jaxpr, in_masks, observe)


def jaxpr_dependence(closed) -> list[frozenset[int]]:
    """For each output of a ``ClosedJaxpr``, the indices of the inputs it depends on."""
    n_in = len(closed.jaxpr.invars)
    out_masks = propagate(closed.jaxpr, [1 << i for i in range(n_in)])
    return [frozenset(i for i in range(n_in) if m >> i & 1) for m in out_masks]


def input_dependence(fn, *args) -> list[frozenset[int]]:
    """For each output leaf of ``fn(*args)``, the indices of the input leaves it depends on (inputs numbered in
    ``jax.tree.leaves(args)`` order, outputs in ``jax.tree.leaves(fn(*args))`` order)."""
    return jaxpr_dependence(jax.make_jaxpr(fn)(*args))


def prune(closed):
    """``closed`` without the top-level equations its outputs do not need (effectful ones are kept). Layers
    after the captured value are traced with it; they are no part of the split."""
    jaxpr = closed.jaxpr
    live = {v for v in jaxpr.outvars if not isinstance(v, jcore.Literal)}
    kept = []
    for eqn in reversed(jaxpr.eqns):
        if eqn.effects or any(v in live for v in eqn.outvars):
            kept.append(eqn)
            live.update(v for v in eqn.invars if not isinstance(v, jcore.Literal))
    return jcore.ClosedJaxpr(jaxpr.replace(eqns=kept[::-1]), closed.consts)


def first_use(closed) -> tuple[list[int], list[int]]:
    """Equation index where each input is first read, and where each output is produced (top level only; calls
    count as one equation). Inputs never read and outputs that are inputs or literals get ``len(eqns)``."""
    jaxpr = closed.jaxpr
    end = len(jaxpr.eqns)
    read_at: dict = {}
    made_at: dict = {}
    for k, eqn in enumerate(jaxpr.eqns):
        for v in eqn.invars:
            if not isinstance(v, jcore.Literal) and v not in read_at:
                read_at[v] = k
        for v in eqn.outvars:
            made_at[v] = k
    inputs = [read_at.get(v, end) for v in jaxpr.invars]
    outputs = [made_at.get(v, end) if not isinstance(v, jcore.Literal) else end for v in jaxpr.outvars]
    return inputs, outputs
