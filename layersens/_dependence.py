"""Which inputs of a traced function can reach which outputs.

Call order cannot answer this: a side branch may run before the layer and not feed it. We trace the function to
a jaxpr and propagate, equation by equation, the set of inputs each value depends on (a Python int used as a bit
set). Calls whose body is a single sub-jaxpr with matching arity (``jit``, ``closed_call``, ``remat``,
``custom_jvp_call``, ``custom_vjp_call``) are followed inside; any other higher-order primitive (``cond``,
``scan``, ``while``) is treated conservatively: each output depends on every input. Cost: one trace and one pass
over the equations.
"""

from __future__ import annotations

import jax
from jax.extend import core as jcore


def sub_jaxpr(eqn):
    """The body of a call-like equation (one sub-jaxpr whose inputs and outputs match the equation's), or None."""
    found = []
    for value in eqn.params.values():
        if isinstance(value, jcore.ClosedJaxpr):
            found.append(value.jaxpr)
        elif isinstance(value, jcore.Jaxpr):
            found.append(value)
    if len(found) != 1:
        return None
    sub = found[0]
    if len(sub.invars) != len(eqn.invars) or len(sub.outvars) != len(eqn.outvars):
        return None
    return sub


def propagate(jaxpr, in_masks: list[int], on_equation=None) -> list[int]:
    """The input bit set of each output of ``jaxpr``, given those of its inputs. ``on_equation(eqn, in_masks)``,
    if given, sees every primitive equation (inside followed calls too) with its operands' bit sets."""
    masks: dict = {}

    def read(v) -> int:
        if isinstance(v, jcore.Literal):
            return 0
        return masks.get(v, 0)

    for var, m in zip(jaxpr.invars, in_masks):
        masks[var] = m
    for eqn in jaxpr.eqns:
        ins = [read(v) for v in eqn.invars]
        sub = sub_jaxpr(eqn)
        if sub is not None:
            outs = propagate(sub, ins, on_equation)
        else:
            if on_equation is not None:
                on_equation(eqn, ins)
            union = 0
            for m in ins:
                union |= m
            outs = [union] * len(eqn.outvars)
        for var, m in zip(eqn.outvars, outs):
            masks[var] = m
    return [read(v) for v in jaxpr.outvars]


def input_dependence(fn, *args) -> list[frozenset[int]]:
    """For each output leaf of ``fn(*args)``, the indices of the input leaves it depends on.

    Input leaves are numbered in ``jax.tree.leaves(args)`` order; outputs in ``jax.tree.leaves(fn(*args))`` order.
    """
    return jaxpr_dependence(jax.make_jaxpr(fn)(*args))


def jaxpr_dependence(closed) -> list[frozenset[int]]:
    """:func:`input_dependence` of an already traced ``ClosedJaxpr``."""
    n_in = len(closed.jaxpr.invars)
    out_masks = propagate(closed.jaxpr, [1 << i for i in range(n_in)])
    return [frozenset(i for i in range(n_in) if m >> i & 1) for m in out_masks]


def first_use(closed) -> tuple[list[int], list[int]]:
    """Equation index where each input is first read, and where each output is produced (top level only).

    Inputs never read and outputs that are inputs or literals get ``len(eqns)``, i.e. last.
    """
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
