"""One abstract interpreter over a jaxpr, shared by every analysis of a split.

An :class:`Analysis` gives each value of the traced program an abstract value (the leaves it depends on, the
axis its channels run along, ...) and computes it equation by equation with a table of rules keyed by the
primitive object, ``rule(eqn, ins) -> outs``, as JAX keys its own ``dce_rules`` or neural-tangents its
``STRUCTURE_RULES``. A primitive without a rule gets the analysis' conservative ``default``.

What no first-order rule can say is said here, once, for every analysis (``CONTROL_RULES``):

* calls (``CALL_BODIES``: ``jit``, ``closed_call``, ``call``, ``remat``, ``custom_jvp_call``,
  ``custom_vjp_call``) run their body once, so the body is interpreted with the equation's inputs;
* ``scan`` runs its body ``length`` times and feeds the carries back: the body is interpreted again with the
  join of the initial carries and the body's own carries until nothing changes (a fixed point over the carries);
  its stacked inputs and outputs go through the analysis' ``unstack``/``stack``;
* ``while`` iterates likewise, and its outputs join what the loop predicate depends on (it sets the trip count);
* ``cond`` joins the outputs of its branches, and what the branch index depends on.

A fixed point not reached within ``MAX_ITERATIONS`` falls back to the conservative default. An analysis may
override any of these by giving the primitive a rule of its own. ``observe(eqn, ins, outs, times)``, if given,
sees every equation once, after fixed points are reached, with ``times`` the number of executions implied by
enclosing scans (a while loop's unknown trip count is counted once).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from jax.extend import core as jcore
from jax.extend.core import primitives as P

MAX_ITERATIONS = 64


def _same(value):
    return value


@dataclasses.dataclass(frozen=True)
class Analysis:
    """A lattice of abstract values and the rules that compute them.

    Attributes:
      name: for messages.
      rules: primitive -> ``rule(eqn, ins) -> outs`` (one abstract value per output variable).
      default: the rule of every other primitive; it must be safe for any primitive.
      join: least upper bound of two abstract values (used by fixed points and branches).
      constant: the abstract value of a literal, or of anything that depends on nothing.
      control: ``control(selector, value)``: ``value`` as chosen by a branch index or loop predicate whose
        abstract value is ``selector``.
      unstack, stack: from a scan's stacked input to one iteration's slice, and from one iteration's output to
        the stacked result.
      opaque_calls: calls whose body is walked (for observers) but whose outputs come from ``default``: custom
        derivatives, whose rule may differentiate what the primal body does not show.
    """

    name: str
    rules: dict
    default: Callable[[Any, list], list]
    join: Callable[[Any, Any], Any]
    constant: Any
    control: Callable[[Any, Any], Any]
    unstack: Callable[[Any], Any] = _same
    stack: Callable[[Any], Any] = _same
    opaque_calls: frozenset = frozenset({P.custom_jvp_call_p, P.custom_vjp_call_p})


Observer = Callable[[Any, list, list, int], None]


def interpret(analysis: Analysis, jaxpr, ins: list, observe: Observer | None = None, times: int = 1) -> list:
    """The abstract values of ``jaxpr``'s outputs given those of its inputs (a ``Jaxpr`` or ``ClosedJaxpr``;
    closed-over constants are ``analysis.constant``)."""
    if isinstance(jaxpr, jcore.ClosedJaxpr):
        jaxpr = jaxpr.jaxpr
    if len(ins) != len(jaxpr.invars):
        raise ValueError(f"{analysis.name}: {len(ins)} abstract inputs for a jaxpr of {len(jaxpr.invars)}")
    env: dict = dict(zip(jaxpr.invars, ins))

    def read(var):
        if isinstance(var, jcore.Literal):
            return analysis.constant
        return env.get(var, analysis.constant)

    for eqn in jaxpr.eqns:
        values = [read(v) for v in eqn.invars]
        if eqn.primitive in analysis.rules:
            outs = analysis.rules[eqn.primitive](eqn, values)
        elif eqn.primitive in CONTROL_RULES:
            outs = CONTROL_RULES[eqn.primitive](analysis, eqn, values, observe, times)
        else:
            outs = analysis.default(eqn, values)
        if observe is not None:
            observe(eqn, values, outs, times)
        for var, value in zip(eqn.outvars, outs):
            env[var] = value
    return [read(v) for v in jaxpr.outvars]


def _fixed_point(analysis: Analysis, step: Callable[[list], list], carry: list) -> list | None:
    """The least ``c ⊒ carry`` with ``step(c) ⊑ c``, by iteration; ``None`` if not reached."""
    for _ in range(MAX_ITERATIONS):
        grown = [analysis.join(c, s) for c, s in zip(carry, step(carry))]
        if grown == carry:
            return carry
        carry = grown
    return None


CONTROL_RULES: dict = {}

# The parameter holding the body of each primitive that runs its body once, with the equation's operands.
CALL_BODIES = {
    P.jit_p: "jaxpr",
    P.closed_call_p: "call_jaxpr",
    P.call_p: "call_jaxpr",
    P.remat_p: "jaxpr",
    P.custom_jvp_call_p: "call_jaxpr",
    P.custom_vjp_call_p: "call_jaxpr",
}


def _call_rule(param: str):
    def rule(analysis, eqn, ins, observe, times):
        body = eqn.params.get(param)
        inner = body.jaxpr if isinstance(body, jcore.ClosedJaxpr) else body
        if (
            not isinstance(inner, jcore.Jaxpr)
            or len(inner.invars) != len(ins)
            or (len(inner.outvars) != len(eqn.outvars))
        ):
            return analysis.default(eqn, ins)  # a call of a shape we do not know: conservative
        outs = interpret(analysis, inner, ins, observe, times)
        return analysis.default(eqn, ins) if eqn.primitive in analysis.opaque_calls else outs

    return rule


for _primitive, _param in CALL_BODIES.items():
    CONTROL_RULES[_primitive] = _call_rule(_param)


def _scan_rule(analysis, eqn, ins, observe, times):
    p = eqn.params
    body, num_consts, num_carry = p["jaxpr"], p["num_consts"], p["num_carry"]
    consts = ins[:num_consts]
    xs = [analysis.unstack(v) for v in ins[num_consts + num_carry :]]
    carry = _fixed_point(
        analysis,
        lambda c: interpret(analysis, body, consts + c + xs)[:num_carry],
        ins[num_consts : num_consts + num_carry],
    )
    if carry is None:
        return analysis.default(eqn, ins)
    outs = interpret(analysis, body, consts + carry + xs, observe, times * max(1, int(p["length"])))
    final = outs[:num_carry] if p["length"] > 0 else carry
    return list(final) + [analysis.stack(y) for y in outs[num_carry:]]


def _while_rule(analysis, eqn, ins, observe, times):
    p = eqn.params
    cond_n, body_n = p["cond_nconsts"], p["body_nconsts"]
    cond_consts, body_consts, init = ins[:cond_n], ins[cond_n : cond_n + body_n], ins[cond_n + body_n :]
    carry = _fixed_point(analysis, lambda c: interpret(analysis, p["body_jaxpr"], body_consts + c), init)
    if carry is None:
        return analysis.default(eqn, ins)
    interpret(analysis, p["body_jaxpr"], body_consts + carry, observe, times)  # the trip count is unknown
    (predicate,) = interpret(analysis, p["cond_jaxpr"], cond_consts + carry, observe, times)
    return [analysis.control(predicate, c) for c in carry]  # the carry joins the initial values: zero trips


def _cond_rule(analysis, eqn, ins, observe, times):
    index, operands = ins[0], ins[1:]
    outs = None
    for branch in eqn.params["branches"]:
        values = interpret(analysis, branch, operands, observe, times)
        outs = values if outs is None else [analysis.join(a, b) for a, b in zip(outs, values)]
    return [analysis.control(index, v) for v in outs]


CONTROL_RULES[P.scan_p] = _scan_rule
CONTROL_RULES[P.while_p] = _while_rule
CONTROL_RULES[P.cond_p] = _cond_rule


def has_body(eqn) -> bool:
    """Whether the interpreter walks into ``eqn`` rather than applying a rule to it."""
    return eqn.primitive in CONTROL_RULES
