"""Names for values that are neither module outputs nor sown: activations between modules, attention weights.

A module's output and a sown value are captured by the framework. What happens between modules is not: the ReLU
after ``Conv_0`` in Flax's MNIST CNN is a plain function call. In the model's one trace such a value is still a
single variable, and its equation says where it was computed (the module scope, from the name stack Flax keeps)
and what computed it. Two kinds are named, as Flax names modules, ``<scope>/<function>_<k>`` (k counting in
execution order within the scope):

* the output of a call of a ``jax.nn`` activation (``relu``, ``silu``, ...; they trace as named calls);
* a softmax (``exp(x) / sum(exp(x))``; ``jax.nn.softmax`` traces inline), such as attention weights.
"""

from __future__ import annotations

import jax
from jax.extend import core as jcore
from jax.extend.core import primitives as P

_CALLS = (P.custom_jvp_call_p, P.custom_vjp_call_p, P.jit_p)


def _call_name(eqn) -> str | None:
    if eqn.primitive not in _CALLS:
        return None
    name = eqn.params.get("name")
    if not name:
        body = eqn.params.get("call_jaxpr") or eqn.params.get("jaxpr")
        info = getattr(getattr(body, "jaxpr", body), "debug_info", None)
        name = getattr(info, "func_name", None)
    if not name or name.startswith("_") or not callable(getattr(jax.nn, name, None)):
        return None
    return name


def _is_softmax(eqn, producer) -> bool:
    if eqn.primitive is not P.div_p or any(isinstance(v, jcore.Literal) for v in eqn.invars):
        return False
    numerator, denominator = eqn.invars
    top = producer.get(numerator)
    spread = producer.get(denominator)
    if top is None or top.primitive is not P.exp_p or spread is None:
        return False
    if spread.primitive is P.broadcast_in_dim_p and not isinstance(spread.invars[0], jcore.Literal):
        spread = producer.get(spread.invars[0])
    return spread is not None and spread.primitive is P.reduce_sum_p and spread.invars[0] is numerator


def derived_values(jaxpr, taken: set, drop_root_scope: bool) -> list[tuple[str, jcore.Var]]:
    """``(name, var)`` for the named values of the top level of ``jaxpr`` that are not in ``taken``."""
    producer: dict = {}
    counts: dict = {}
    found = []
    for eqn in jaxpr.eqns:
        for v in eqn.outvars:
            producer[v] = eqn
        function = _call_name(eqn) or ("softmax" if _is_softmax(eqn, producer) else None)
        if function is None or len(eqn.outvars) != 1:
            continue
        out = eqn.outvars[0]
        if out in taken or isinstance(out, jcore.DropVar):
            continue
        scope: list[str] = []
        for part in str(eqn.source_info.name_stack).split("/"):
            if part and (not scope or scope[-1] != part):  # a __call__ calling super().__call__ nests its own name
                scope.append(part)
        if drop_root_scope:
            scope = scope[1:]
        key = (tuple(scope), function)
        k = counts.get(key, 0)
        counts[key] = k + 1
        found.append(("/".join(scope + [f"{function}_{k}"]), out))
    return found
