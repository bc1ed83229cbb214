"""Channel structure: which leaves act on the layer one output channel at a time.

Output channel c of a conv or dense layer depends only on channel c's slice of that layer's kernel and bias, and
elementwise operations, per-channel normalization, pooling over other axes and reshapes that keep the channel
axis preserve this. For such a leaf, Jacobian columns of different channels have disjoint rows: one JVP can carry
one column of every channel at once (column colouring), one pullback one row of every channel (row colouring).

The analysis runs over the *derivative* program: the JVP of the split's jaxpr (``_linearized``), so custom
derivative rules and ``stop_gradient`` are seen as JAX differentiates them. A value's abstract value is
``None`` (no tangent reaches it), an axis ``a`` (its slice ``c`` along ``a`` depends only on the leaf's channel
``c``: the leaf's last axis, as Flax lays out kernels, biases and scales, or failing that its first, as an
``(out, in)`` kernel is laid out) or ``MIXED``. ``STRUCTURE_RULES`` holds
one rule per primitive, keyed by the primitive object; a primitive without a rule makes every non-constant
output ``MIXED``, so an unknown operation costs structure (speed), never correctness.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import numpy as np
from jax.extend.core import primitives as P

from ._interpreter import Analysis, interpret

if TYPE_CHECKING:
    from jax.extend.core import Primitive

MIXED = "mixed"

STRUCTURE_RULES: dict = {}


def register(*primitives):
    """Registers ``rule(eqn, ins) -> outs`` for ``primitives``. The rule sees at least one operand that is not
    constant and none that is ``MIXED`` (those cases are decided before it is called)."""

    def decorate(rule):
        def guarded(eqn, ins):
            if all(s is None for s in ins):
                return [None] * len(eqn.outvars)
            if any(s == MIXED for s in ins):
                return [MIXED] * len(eqn.outvars)
            return rule(eqn, ins)

        guarded.__doc__ = rule.__doc__
        for primitive in primitives:
            if primitive is not None:
                STRUCTURE_RULES[primitive] = guarded
        return rule

    return decorate


def _shape(var) -> tuple[int, ...]:
    return tuple(getattr(var.aval, "shape", ()))


def _mixed(eqn):
    return [MIXED] * len(eqn.outvars)


def _single_axis(ins):
    """The one axis of every non-constant operand, or MIXED."""
    axes = {s for s in ins if s is not None}
    return axes.pop() if len(axes) == 1 else MIXED


def _primitives(*names):
    return [getattr(P, f"{name}_p", None) for name in names]


_ELEMENTWISE = _primitives(
    "add",
    "add_jaxvals",
    "sub",
    "mul",
    "div",
    "max",
    "min",
    "neg",
    "exp",
    "exp2",
    "log",
    "log1p",
    "expm1",
    "tanh",
    "logistic",
    "rsqrt",
    "sqrt",
    "cbrt",
    "abs",
    "sign",
    "integer_pow",
    "pow",
    "square",
    "select_n",
    "convert_element_type",
    "copy",
    "erf",
    "erfc",
    "erf_inv",
    "sin",
    "cos",
    "tan",
    "atan2",
    "ge",
    "gt",
    "le",
    "lt",
    "eq",
    "ne",
    "and",
    "or",
    "not",
    "xor",
    "clamp",
    "reduce_precision",
    "is_finite",
    "stop_gradient",
    "nextafter",
    "rem",
    "floor",
    "ceil",
    "round",
    "imag",
    "real",
    "conj",
    "complex",
    "asinh",
    "acosh",
    "atanh",
    "sinh",
    "cosh",
    "asin",
    "acos",
    "atan",
    "lgamma",
    "digamma",
    "sharding_constraint",
)


@register(*_ELEMENTWISE)
def _elementwise(eqn, ins):
    """Same-shape operands (constants may broadcast): the channel slice of the output reads the same slice of
    every non-constant operand."""
    a = _single_axis(ins)
    out = _shape(eqn.outvars[0])
    if a == MIXED:
        return _mixed(eqn)
    for var, s in zip(eqn.invars, ins):
        if s is not None and (len(_shape(var)) != len(out) or _shape(var)[a] != out[a]):
            return _mixed(eqn)
    return [a] * len(eqn.outvars)


@register(*_primitives("optimization_barrier"))
def _identity_per_operand(eqn, ins):
    return list(ins)


@register(P.broadcast_in_dim_p)
def _broadcast_in_dim(eqn, ins):
    a = ins[0]
    if a is None or any(s is not None for s in ins[1:]):
        return _mixed(eqn)
    b = eqn.params["broadcast_dimensions"][a]
    return [b if _shape(eqn.outvars[0])[b] == _shape(eqn.invars[0])[a] else MIXED]


def reshape_axis(old, new, axis):
    """Where axis ``axis`` of shape ``old`` lands in shape ``new``, if it survives a row-major reshape intact."""
    before = int(np.prod(old[:axis], dtype=np.int64))
    running = 1
    for b, dim in enumerate(new):
        if running == before and dim == old[axis]:
            return b
        running *= dim
    return MIXED


@register(P.reshape_p)
def _reshape(eqn, ins):
    if ins[0] is None or any(s is not None for s in ins[1:]):
        return _mixed(eqn)
    return [reshape_axis(_shape(eqn.invars[0]), _shape(eqn.outvars[0]), ins[0])]


@register(P.squeeze_p)
def _squeeze(eqn, ins):
    (a,) = ins
    dims = [d % len(_shape(eqn.invars[0])) for d in eqn.params["dimensions"]]
    return [MIXED if a in dims else a - sum(d < a for d in dims)]


@register(P.transpose_p)
def _transpose(eqn, ins):
    return [list(eqn.params["permutation"]).index(ins[0])]


def _keeps_full_axis(eqn, ins):
    """Operand 0 alone is not constant, and the output keeps its axis whole."""
    a = ins[0]
    if a is None or any(s is not None for s in ins[1:]):
        return _mixed(eqn)
    return [a if _shape(eqn.outvars[0])[a] == _shape(eqn.invars[0])[a] else MIXED]


register(P.slice_p, P.dynamic_slice_p)(_keeps_full_axis)


_REDUCTIONS = _primitives(
    "reduce_sum", "reduce_max", "reduce_min", "reduce_prod", "reduce_and", "reduce_or", "reduce_xor", "argmax", "argmin"
)


@register(*_REDUCTIONS)
def _reduction(eqn, ins):
    a = _single_axis(ins)
    if a == MIXED:
        return _mixed(eqn)
    axes = list(eqn.params["axes"])
    return [MIXED if a in axes else a - sum(d < a for d in axes)] * len(eqn.outvars)


_CUMULATIVE = _primitives("cumsum", "cumprod", "cummax", "cummin", "cumlogsumexp")


@register(*_CUMULATIVE)
def _cumulative(eqn, ins):
    (a,) = ins
    return [MIXED if eqn.params["axis"] == a else a]


def _window_keeps(params, a) -> bool:
    ones = all(
        params.get(k) is None or params[k][a] == 1
        for k in ("window_dimensions", "window_strides", "base_dilation", "window_dilation")
    )
    return ones and tuple(params["padding"][a]) == (0, 0)


_WINDOWED = _primitives(
    "reduce_window_max", "reduce_window_min", "reduce_window_sum", "reduce_window", "select_and_gather_add"
)


@register(*_WINDOWED)
def _windowed(eqn, ins):
    """Pooling windows (and max-pooling's derivative, select_and_gather_add) that do not span the channel axis."""
    a = _single_axis(ins)
    if a == MIXED or not _window_keeps(eqn.params, a):
        return _mixed(eqn)
    return [a] * len(eqn.outvars)


@register(P.concatenate_p)
def _concatenate(eqn, ins):
    a = _single_axis(ins)
    return [MIXED if a == MIXED or eqn.params["dimension"] == a else a]


@register(P.pad_p)
def _pad(eqn, ins):
    a = ins[0]
    if a is None or ins[1] is not None:
        return _mixed(eqn)
    return [a if tuple(eqn.params["padding_config"][a]) == (0, 0, 0) else MIXED]


@register(P.rev_p)
def _rev(eqn, ins):
    (a,) = ins
    return [MIXED if a in eqn.params["dimensions"] else a]


@register(P.dynamic_update_slice_p)
def _dynamic_update_slice(eqn, ins):
    operand, update, *indices = ins
    a = _single_axis([operand, update])
    if a == MIXED or any(s is not None for s in indices) or _shape(eqn.invars[1])[a] != _shape(eqn.invars[0])[a]:
        return _mixed(eqn)
    return [a]


@register(P.conv_general_dilated_p)
def _conv(eqn, ins):
    """With a constant input, output feature c reads kernel output feature c only. So in grouped and depthwise
    convolutions too (``feature_group_count``): output feature c reads its group's input features through
    kernel[..., c] alone. ``batch_group_count`` (which JAX uses in a grouped kernel's backward pass) splits the
    batch instead, and is left mixed."""
    lhs, rhs = ins
    p = eqn.params
    dn = p["dimension_numbers"]
    if lhs is None and rhs == dn.rhs_spec[0] and p["batch_group_count"] == 1:
        return [dn.out_spec[1]]
    if rhs is None and lhs == dn.lhs_spec[0] and p["batch_group_count"] == 1:
        return [dn.out_spec[0]]  # the batch axis: each output example reads its own input example
    return _mixed(eqn)


@register(P.dot_general_p)
def _dot_general(eqn, ins):
    """A free axis of one operand becomes an output axis; a batch axis shared by both operands stays one."""
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    lhs_rank, rhs_rank = len(_shape(eqn.invars[0])), len(_shape(eqn.invars[1]))
    lhs_free = [d for d in range(lhs_rank) if d not in lc and d not in lb]
    rhs_free = [d for d in range(rhs_rank) if d not in rc and d not in rb]
    left, right = ins
    if left is not None and right is not None:
        if left in lb and right in rb and list(lb).index(left) == list(rb).index(right):
            return [list(lb).index(left)]
        return _mixed(eqn)
    if left is not None:
        if left in lc:
            return _mixed(eqn)
        return [list(lb).index(left) if left in lb else len(lb) + lhs_free.index(left)]
    if right in rc:
        return _mixed(eqn)
    return [list(rb).index(right) if right in rb else len(rb) + len(lhs_free) + rhs_free.index(right)]


@register(P.gather_p)
def _gather(eqn, ins):
    """An embedding lookup: with constant indices, an operand axis sliced whole keeps its channels."""
    a, indices = ins
    if a is None or indices is not None:
        return _mixed(eqn)
    dn = eqn.params["dimension_numbers"]
    batching = tuple(getattr(dn, "operand_batching_dims", ()))
    if (
        a in dn.start_index_map
        or a in dn.collapsed_slice_dims
        or a in batching
        or (eqn.params["slice_sizes"][a] != _shape(eqn.invars[0])[a])
    ):
        return _mixed(eqn)
    kept = [d for d in range(len(_shape(eqn.invars[0]))) if d not in dn.collapsed_slice_dims and d not in batching]
    return [dn.offset_dims[kept.index(a)]]


_split_p: Primitive | None
try:  # lax.split is a primitive of its own in recent JAX, not yet exported by jax.extend
    from jax._src.lax.lax import split_p as _split_p
except ImportError:  # pragma: no cover
    _split_p = None


@register(_split_p)
def _split(eqn, ins):
    (a,) = ins
    return [MIXED if eqn.params["axis"] == a else a] * len(eqn.outvars)


_stack_p: Primitive | None
try:  # jnp.stack is a primitive of its own in recent JAX (a complex layer's [Re h; Im h] is one), not exported
    from jax._src.lax.lax import stack_p as _stack_p
except ImportError:  # pragma: no cover
    _stack_p = None


@register(_stack_p)
def _stack_operands(eqn, ins):
    """Equal-shape operands stacked along a new axis ``axis``: the channel axis moves one right past it."""
    a = _single_axis(ins)
    if a == MIXED:
        return _mixed(eqn)
    return [a + 1 if a >= eqn.params["axis"] else a]


def _unstack(s):
    if s is None or s == MIXED:
        return s
    return MIXED if s == 0 else s - 1  # scanning over the channel axis itself: conservative


def _stack(s):
    return s if s is None or s == MIXED else s + 1


def _join(a, b):
    if a is None:
        return b
    if b is None or a == b:
        return a
    return MIXED


STRUCTURE = Analysis(
    name="structure",
    rules=STRUCTURE_RULES,
    default=lambda eqn, ins: [None if all(s is None for s in ins) else MIXED] * len(eqn.outvars),
    join=_join,
    constant=None,
    control=lambda selector, value: value if selector is None else (None if value is None else MIXED),
    unstack=_unstack,
    stack=_stack,
)


@dataclasses.dataclass(frozen=True)
class ChannelStructure:
    """Leaf ``leaf``'s channel axis (``channels`` long) maps one to one onto axis ``output_axis`` of the layer.

    The channel axis is the leaf's last (``leaf_axis == -1``: Flax's kernels, biases and scales) or its first
    (``leaf_axis == 0``: an ``(out, in)`` kernel used as ``W @ x`` or ``x @ W.T``, a PyTorch-layout ``OIHW``
    convolution kernel). A leaf's columns are its elements in row-major order; column ``(w, c)`` (within-channel
    index ``w`` of ``W = size / C``, channel ``c``) is ``w·C + c`` for the last axis and ``c·W + w`` for the first.
    """

    leaf: str
    channels: int
    output_axis: int
    leaf_axis: int = -1

    @property
    def channel_last(self) -> bool:
        return self.leaf_axis == -1

    def column_strides(self, within: int) -> tuple[int, int]:
        """How far one step of the within-channel index, and of the channel, moves along the leaf's columns."""
        return (self.channels, 1) if self.channel_last else (1, within)

    def columns(self, values):
        """``values[..., C, W]`` (channel, within-channel index) in the leaf's own column order, flattened."""
        ordered = values if not self.channel_last else values.swapaxes(-1, -2)
        return ordered.reshape(ordered.shape[:-2] + (-1,))


def structure_of(jaxpr, in_states: list) -> list:
    """The structure states of ``jaxpr``'s outputs, given its inputs' (``None``, an axis, or ``MIXED``)."""
    return interpret(STRUCTURE, jaxpr, in_states)
