"""What one pass through a split costs, per upstream leaf: the numbers the strategies' cost model weighs.

A JVP along a leaf, or a pullback down to it, only runs the operations that depend on that leaf, and of each
only the derivatives with respect to the operands that do: for ``fc1``'s kernel that is one matrix product; for
``conv2``'s kernel one derivative convolution at conv2 and one product at fc1; for ``conv1``'s, conv2's input
derivative as well. We trace the split once (shapes only), propagate which leaves each value depends on (as
``_dependence`` does) and record every equation's floating-point operations with the leaf sets of its operands.
Cost: one trace and one pass over the equations.
"""

from __future__ import annotations

import jax
import numpy as np

from ._dependence import propagate
from ._split import LayerSplit

# Device time of writing one entry of a dense block (and copying it into the host result), in units of one
# floating-point operation of a pass. Measured on the shipped LeNet on a 2-core CPU: a dense entry costs about
# 1.2 ns (written on the device, then copied), a pass's arithmetic runs at 20–50 GFLOP/s (0.02–0.05 ns).
WRITE_COST = 32.0


def _flops(eqn) -> float:
    out = sum(int(np.prod(v.aval.shape, dtype=np.int64)) for v in eqn.outvars if hasattr(v.aval, "shape"))
    name = eqn.primitive.name
    if name == "conv_general_dilated":
        rhs = eqn.invars[1].aval.shape
        out_features = rhs[eqn.params["dimension_numbers"].rhs_spec[0]]
        return 2.0 * out * int(np.prod(rhs, dtype=np.int64)) / out_features
    if name == "dot_general":
        (contract, _), _ = eqn.params["dimension_numbers"]
        lhs = eqn.invars[0].aval.shape
        return 2.0 * out * int(np.prod([lhs[a] for a in contract], dtype=np.int64))
    return float(out)


def pass_flops(split: LayerSplit):
    """``flops(names)``: floating-point operations of one JVP along the named leaves, or of one pullback down to
    them: every operation that depends on them, once per operand that does (a convolution whose input and kernel
    both depend on the leaves needs two derivative convolutions; one whose input alone does, one)."""
    key = ("pass_flops",)
    if key not in split.cache:
        x = jax.ShapeDtypeStruct(tuple(split.input_shape), np.dtype(split.input_dtype))
        closed = jax.make_jaxpr(split.apply)(split.params, x)
        leaves = jax.tree_util.tree_flatten_with_path(split.params)[0]
        order = [path[0].key for path, _ in leaves]  # the jaxpr's inputs, in the dict's flattening order
        totals: dict[tuple[int, ...], float] = {}

        def charge(eqn, operand_masks):
            key = tuple(sorted(m for m in operand_masks if m))
            if key:
                totals[key] = totals.get(key, 0.0) + _flops(eqn)

        propagate(closed.jaxpr, [1 << i for i in range(len(order))] + [0] * (len(closed.jaxpr.invars) - len(order)),
                  charge)
        split.cache[key] = ({name: 1 << i for i, name in enumerate(order)}, totals, {})
    bits, totals, memo = split.cache[key]

    def flops(names) -> float:
        mask = 0
        for name in names:
            mask |= bits[name]
        if mask not in memo:
            memo[mask] = sum(f * sum(1 for m in operands if m & mask) for operands, f in totals.items())
        return memo[mask]

    return flops
