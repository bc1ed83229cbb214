"""Channel structure: which parameter leaves act on the layer one output channel at a time.

Output channel c of a conv or dense layer depends only on channel c's slice of that layer's kernel and bias, and
elementwise operations, normalization with per-channel scale and shift, pooling over other axes and reshapes that
keep the channel axis preserve this. For such a leaf the Jacobian columns of different channels have disjoint
rows, so one JVP can carry one column of every channel at once (column colouring), and one VJP can pull back one
row of every channel at once (row colouring).

We find this by abstract interpretation of the per-example jaxpr: each value is *constant* (does not depend on
the leaf), *channel-diagonal along axis a* (its slice at index c along a depends on the leaf's channel c only), or
*mixed*. The leaf's last axis is its channel axis (Flax kernels are HWIO / (in, out); biases and scales are (C,)).
Primitives without a rule below make any non-constant input mixed, so an unknown operation can only cost
structure, never correctness.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
from jax.extend import core as jcore

from ._dependence import sub_jaxpr as _sub_jaxpr
from ._split import LayerSplit

MIXED = "mixed"

_ELEMENTWISE = {
    "add", "add_any", "sub", "mul", "div", "max", "min", "neg", "exp", "exp2", "log", "log1p", "expm1", "tanh",
    "logistic", "rsqrt", "sqrt", "cbrt", "abs", "sign", "integer_pow", "pow", "square", "select_n",
    "convert_element_type", "copy", "copy_p", "erf", "erfc", "erf_inv", "sin", "cos", "tan", "atan2", "ge", "gt",
    "le", "lt", "eq", "ne", "and", "or", "not", "xor", "clamp", "reduce_precision", "is_finite", "stop_gradient",
    "nextafter", "rem", "floor", "ceil", "round", "imag", "real", "conj", "asinh", "acosh", "atanh", "sinh", "cosh",
}
_REDUCTIONS = {"reduce_sum", "reduce_max", "reduce_min", "reduce_prod", "argmax", "argmin", "reduce_and",
               "reduce_or"}
_WINDOWED = {"reduce_window_max", "reduce_window_min", "reduce_window_sum", "reduce_window"}


@dataclasses.dataclass(frozen=True)
class ChannelStructure:
    """Leaf ``leaf``'s last axis (``channels`` long) maps one to one onto axis ``output_axis`` of the layer."""

    leaf: str
    channels: int
    output_axis: int


def _shape(v):
    return tuple(v.aval.shape)


def _reshape_axis(old, new, axis):
    before = int(np.prod(old[:axis], dtype=np.int64))
    size = old[axis]
    running = 1
    for b, dim in enumerate(new):
        if running == before and dim == size:
            return b
        running *= dim
    return MIXED


def _rule(eqn, states):
    """The output states of one equation, given its input states (None = constant)."""
    name = eqn.primitive.name
    live = [s for s in states if s is not None]
    if not live:
        return [None] * len(eqn.outvars)
    if MIXED in live:
        return [MIXED] * len(eqn.outvars)
    p = eqn.params
    out_shape = _shape(eqn.outvars[0]) if hasattr(eqn.outvars[0].aval, "shape") else ()
    if name in _ELEMENTWISE:
        # Operands may broadcast along size-1 axes, but never along the channel axis.
        axes = set(live)
        shapes_ok = all(
            len(_shape(v)) == len(out_shape) and _shape(v)[s] == out_shape[s]
            for v, s in zip(eqn.invars, states) if s is not None
        )
        return [live[0] if len(axes) == 1 and shapes_ok else MIXED] * len(eqn.outvars)
    (a,) = set(live) if len(set(live)) == 1 else (MIXED,)
    if a == MIXED:
        return [MIXED] * len(eqn.outvars)
    src = next(v for v, s in zip(eqn.invars, states) if s is not None)
    if name == "broadcast_in_dim" and states[0] is not None and len(live) == 1:
        b = p["broadcast_dimensions"][a]
        return [b if out_shape[b] == _shape(src)[a] else MIXED]
    if name == "reshape" and states[0] is not None and len(live) == 1:
        return [_reshape_axis(_shape(src), out_shape, a)]
    if name == "squeeze":
        dims = [d % len(_shape(src)) for d in p["dimensions"]]
        return [MIXED if a in dims else a - sum(d < a for d in dims)]
    if name == "transpose":
        return [list(p["permutation"]).index(a)]
    if name in ("slice", "dynamic_slice") and states[0] is not None and len(live) == 1:
        return [a if out_shape[a] == _shape(src)[a] else MIXED]
    if name in _REDUCTIONS:
        axes = list(p["axes"])
        return [MIXED if a in axes else a - sum(d < a for d in axes)] * len(eqn.outvars)
    if name in _WINDOWED and all(s is None or s == a for s in states):
        keeps = (p["window_dimensions"][a] == 1 and p["window_strides"][a] == 1
                 and tuple(p["padding"][a]) == (0, 0))
        return [a if keeps else MIXED] * len(eqn.outvars)
    if name == "conv_general_dilated" and states[0] is None and states[1] is not None:
        dn = p["dimension_numbers"]
        grouped = p["feature_group_count"] != 1 or p["batch_group_count"] != 1
        return [dn.out_spec[1] if a == dn.rhs_spec[0] and not grouped else MIXED]
    if name == "dot_general" and (states[0] is None) != (states[1] is None):
        (lc, rc), (lb, rb) = p["dimension_numbers"]
        lhs_rank, rhs_rank = len(_shape(eqn.invars[0])), len(_shape(eqn.invars[1]))
        lhs_free = [d for d in range(lhs_rank) if d not in lc and d not in lb]
        rhs_free = [d for d in range(rhs_rank) if d not in rc and d not in rb]
        if states[0] is not None:
            if a in lc:
                return [MIXED]
            return [list(lb).index(a) if a in lb else len(lb) + lhs_free.index(a)]
        if a in rc:
            return [MIXED]
        return [list(rb).index(a) if a in rb else len(rb) + len(lhs_free) + rhs_free.index(a)]
    return [MIXED] * len(eqn.outvars)


def _propagate(jaxpr, in_states):
    env = dict(zip(jaxpr.invars, in_states))

    def read(v):
        return None if isinstance(v, jcore.Literal) else env.get(v)

    for eqn in jaxpr.eqns:
        states = [read(v) for v in eqn.invars]
        sub = _sub_jaxpr(eqn)
        if sub is not None and any(s is not None for s in states):
            outs = _propagate(sub, states)
        else:
            outs = _rule(eqn, states)
        for v, s in zip(eqn.outvars, outs):
            env[v] = s
    return [read(v) for v in jaxpr.outvars]


def channel_structure(split: LayerSplit, x) -> dict[str, ChannelStructure]:
    """The upstream leaves of ``split`` that are channel-diagonal with respect to its layer. Cost: one trace and
    one pass over the equations per leaf."""
    closed = jax.make_jaxpr(split.apply)(split.params, x)
    leaf_names = sorted(split.params)  # jax flattens dicts by sorted key
    invars = closed.jaxpr.invars
    found = {}
    for i, name in enumerate(leaf_names):
        shape = np.shape(split.params[name])
        if not shape:
            continue
        states = [None] * len(invars)
        states[i] = len(shape) - 1
        (out,) = _propagate(closed.jaxpr, states)
        if out is not None and out != MIXED and split.activation_shape[out] == shape[-1]:
            found[name] = ChannelStructure(leaf=name, channels=shape[-1], output_axis=out)
    return found
