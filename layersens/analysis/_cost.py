"""What one pass through a split costs: floating-point operations and bytes, per primitive.

``COST_RULES`` maps a primitive to the floating-point operations of one of its equations; any other primitive
is charged one operation per output element (elementwise work), a stated default that only steers the choice of
method, never a result. A JVP along some leaves, or a pullback down to them, only runs the operations that
depend on those leaves, and of each only the derivatives with respect to the operands that do: we propagate
which leaves each value depends on (the dependence analysis) and record every equation's cost with the leaf
sets of its operands, once per execution (a scan body ``length`` times).
"""

from __future__ import annotations

import dataclasses

import numpy as np
from jax.extend.core import primitives as P

from ._dependence import propagate
from ._interpreter import CONTROL_RULES


def _elements(var) -> int:
    return int(np.prod(getattr(var.aval, "shape", ()), dtype=np.int64))


def _bytes(var) -> int:
    aval = var.aval
    if not hasattr(aval, "dtype") or not hasattr(aval, "shape"):
        return 0
    return _elements(var) * getattr(aval.dtype, "itemsize", 0)  # typed PRNG keys are extended dtypes


def _default_flops(eqn) -> float:
    return float(sum(_elements(v) for v in eqn.outvars))


COST_RULES: dict = {}


def _conv_flops(eqn) -> float:
    rhs = eqn.invars[1].aval.shape
    out_features = rhs[eqn.params["dimension_numbers"].rhs_spec[0]]
    groups = eqn.params["feature_group_count"] * eqn.params["batch_group_count"]
    return 2.0 * _elements(eqn.outvars[0]) * int(np.prod(rhs, dtype=np.int64)) / out_features / max(1, groups) * groups


def _dot_flops(eqn) -> float:
    (contract, _), _ = eqn.params["dimension_numbers"]
    lhs = eqn.invars[0].aval.shape
    return 2.0 * _elements(eqn.outvars[0]) * int(np.prod([lhs[a] for a in contract], dtype=np.int64))


COST_RULES[P.conv_general_dilated_p] = _conv_flops
COST_RULES[P.dot_general_p] = _dot_flops


def equation_flops(eqn) -> float:
    return COST_RULES.get(eqn.primitive, _default_flops)(eqn)


@dataclasses.dataclass(frozen=True, eq=False)
class PassCost:
    """The cost of passes through a split, per set of leaves.

    ``totals`` maps the leaf-bit sets of an equation's operands to the operations charged to such equations;
    ``bits`` maps each leaf to its bit; ``intermediate_bytes`` is the memory of every value one forward pass
    computes (what one tangent or cotangent also carries).
    """

    bits: dict
    totals: dict
    intermediate_bytes: int

    def flops(self, names) -> float:
        """Operations of one JVP along the named leaves, or one pullback down to them: every operation that
        depends on them, once per operand that does (a convolution whose input and kernel both depend on them
        needs two derivative convolutions; one whose input alone does, one)."""
        mask = 0
        for name in names:
            mask |= self.bits[name]
        return sum(f * sum(1 for m in operands if m & mask) for operands, f in self.totals.items())


def pass_cost(jaxpr, in_masks: list[int], bits: dict) -> PassCost:
    """:class:`PassCost` of ``jaxpr`` whose inputs carry ``in_masks`` (0 for inputs not differentiated);
    ``bits`` names each leaf's bit."""
    totals: dict = {}
    memory = [0]

    def charge(eqn, ins, outs, times):
        if eqn.primitive in CONTROL_RULES:
            return  # its body's equations are charged themselves
        memory[0] += times * sum(_bytes(v) for v in eqn.outvars)
        key = tuple(sorted(m for m in ins if m))
        if key:
            totals[key] = totals.get(key, 0.0) + times * equation_flops(eqn)

    propagate(jaxpr, in_masks, charge)
    return PassCost(bits=bits, totals=totals, intermediate_bytes=memory[0])
