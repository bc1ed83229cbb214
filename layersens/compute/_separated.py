"""Channel-separated tangents: many Jacobian columns carried as one until the layer mixes channels.

A leaf whose last axis is a channel axis (a conv kernel, a bias, a norm's scale) has columns ``(w, c)``. Before
the first equation that mixes channels, the tangents of columns ``(w, 0) .. (w, C-1)`` live on disjoint channel
slices, so one array, the tangent of "``e_w`` in every channel", holds all C of them (column colouring). Column
colouring stops at the mix; this evaluator goes on. It runs the JVP program of the layer (``jax.linearize``'s
linear map, as a jaxpr) over *batches* of tangents in one of two forms:

* :class:`Separated` ``(values[B, *shape], axis, channels, inner)``: column ``(b, c)`` is ``values[b]`` with
  every position whose channel is not ``c`` zeroed (position ``i`` along ``axis`` has channel
  ``(i // inner) % C``);
* :class:`Columns` ``(values[N, *shape])``: N tangents, one column each (``N = B·C``, ``b``-major).

What each equation does is decided from these forms alone by ``analysis.decide`` (the planner's cost estimate
reads the same decisions): equations proven to keep channels apart run once per ``b`` on the separated values;
a convolution or contraction that mixes them computes all C columns at once by a rule of ``SEPARATING_RULES``
(keyed by primitive, as JAX's own rule tables): conv1's columns through conv2 cost one grouped conv2 per ``w``
instead of one conv2 per ``(w, c)``; anything else expands its separated operands into columns and runs
vmapped: unknown code costs speed, never correctness.

Correctness rests on linearity: each equation of the linear map is linear in its tangent operands, so an
equation that keeps channels apart maps each masked tangent to the masked output. Tests check the evaluator
against ``jax.jacfwd`` of the flat function on models with loops, branches, attention and shared weights.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax import lax
from jax.extend import core as jcore
from jax.extend.core import primitives as P

from ..analysis import CALL_BODIES, MIXED, WALKED_CALLS, Action, SeparatedAxis, decide


@dataclasses.dataclass(frozen=True)
class Separated:
    """``B`` tangents standing for ``B·C`` columns: column ``(b, c)`` is ``values[b]`` masked to channel ``c``."""

    values: Any  # (B, *shape)
    axis: int
    channels: int
    inner: int = 1

    def channel_of(self):
        """The channel of each position along ``axis``."""
        length = self.values.shape[1 + self.axis]
        return (jnp.arange(length) // self.inner) % self.channels


@dataclasses.dataclass(frozen=True)
class Columns:
    """``N`` tangents, one column each."""

    values: Any  # (N, *shape)


Tangent = Separated | Columns


def expand(t: Tangent) -> Columns:
    """Separated tangents as the ``B·C`` columns they stand for (``b``-major)."""
    if isinstance(t, Columns):
        return t
    v = t.values
    shape = [1] * v.ndim
    shape[1 + t.axis] = v.shape[1 + t.axis]
    own = t.channel_of().reshape(shape)[:, None] == jnp.arange(t.channels).reshape((1, -1) + (1,) * (v.ndim - 1))
    columns = jnp.where(own, v[:, None], jnp.zeros((), v.dtype))
    return Columns(columns.reshape((-1,) + v.shape[1:]))


def _bind(eqn, args: list):
    out = eqn.primitive.bind(*args, **eqn.params)
    return list(out) if eqn.primitive.multiple_results else [out]


def _vmapped(eqn, args: list, batched: list[bool]) -> list:
    """``eqn`` over a batch of tangents: the batched operands along their axis 0, the others shared."""
    positions = [i for i, b in enumerate(batched) if b]

    def one(*tangents):
        full = list(args)
        for i, t in zip(positions, tangents):
            full[i] = t
        return _bind(eqn, full)

    return jax.vmap(one)(*[args[i] for i in positions])


def _as_columns(eqn, ins: list) -> list:
    """The conservative rule: every tangent operand expanded into columns, the equation vmapped over them."""
    args = [expand(v).values if isinstance(v, (Separated, Columns)) else v for v in ins]
    batched = [isinstance(v, (Separated, Columns)) for v in ins]
    return [Columns(o) for o in _vmapped(eqn, args, batched)]


# primitive -> rule(eqn, ins) -> outs, for equations ``analysis.decide`` calls ``MIX``: ``ins`` hold
# Separated/Columns for tangents and arrays for the rest.
SEPARATING_RULES: dict = {}


def _state(value):
    if isinstance(value, Separated):
        return SeparatedAxis(value.axis, value.inner)
    return MIXED if isinstance(value, Columns) else None


def evaluate(jaxpr: jcore.Jaxpr, consts: list, ins: list, channels: int) -> list:
    """The outputs of ``jaxpr`` given its constants and inputs (arrays, or :class:`Separated`/:class:`Columns`
    batches of tangents of a leaf with ``channels`` channels)."""
    env: dict = {}

    def read(var):
        return var.val if isinstance(var, jcore.Literal) else env[var]

    env.update(zip(jaxpr.constvars, consts))
    env.update(zip(jaxpr.invars, ins))
    for eqn in jaxpr.eqns:
        values = [read(v) for v in eqn.invars]
        states = [_state(v) for v in values]
        if eqn.primitive in WALKED_CALLS and any(s is not None for s in states):
            body = eqn.params[CALL_BODIES[eqn.primitive]]
            closed = body if isinstance(body, jcore.ClosedJaxpr) else jcore.ClosedJaxpr(body, ())
            outs = evaluate(closed.jaxpr, list(closed.consts), values, channels)
        else:
            decision = decide(eqn, states, channels)
            if decision.action is Action.PRIMAL:
                outs = _bind(eqn, values)
            elif decision.action is Action.KEEP:
                args = [v.values if isinstance(v, Separated) else v for v in values]
                kept = _vmapped(eqn, args, [isinstance(v, Separated) for v in values])
                outs = [Separated(o, s.axis, channels, s.inner) for o, s in zip(kept, decision.outs)]
            elif decision.action is Action.MIX:
                outs = SEPARATING_RULES[eqn.primitive](eqn, values)
            else:
                outs = _as_columns(eqn, values)
        env.update(zip(eqn.outvars, outs))
    return [read(v) for v in jaxpr.outvars]


def _register(primitive) -> Callable:
    def decorate(rule):
        SEPARATING_RULES[primitive] = rule
        return rule

    return decorate


def _channel_columns(values, channel_axis: int):
    """``(B, ..., C at channel_axis, ...)`` → columns ``(B·C, ...)``: C brought next to B and merged, b-major."""
    moved = jnp.moveaxis(values, channel_axis, 1)
    return moved.reshape((-1,) + moved.shape[2:])


def _to_columns(values, axis: int, channels: int):
    """``(B, ..., C·O at axis, ...)`` → columns ``(B·C, ..., O, ...)``: split the axis, bring C next to B."""
    shape = values.shape
    split = values.reshape(shape[: 1 + axis] + (channels, shape[1 + axis] // channels) + shape[2 + axis :])
    return _channel_columns(split, 1 + axis)


@_register(P.conv_general_dilated_p)
def _conv(eqn, ins):
    """Separated input features through a constant kernel: one grouped convolution. Output feature ``c·O + o``
    of ``conv(t, K', feature_group_count=C)`` with ``K'[c·O + o, 0] = K[o, c]`` reads input feature c alone
    through ``K[o, c]``: column ``(b, c)``'s output ``o``."""
    lhs, rhs = ins  # analysis.conv_mixes: lhs separated on its feature axis, rhs constant
    p = eqn.params
    dn = p["dimension_numbers"]
    C = lhs.channels
    kernel = jnp.transpose(rhs, (dn.rhs_spec[0], dn.rhs_spec[1], *dn.rhs_spec[2:]))  # (O, I, *spatial)
    out_features = kernel.shape[0]
    grouped = jnp.swapaxes(kernel, 0, 1).reshape((C * out_features, 1) + kernel.shape[2:])
    spatial = len(dn.rhs_spec) - 2
    numbers = lax.ConvDimensionNumbers(dn.lhs_spec, tuple(range(spatial + 2)), dn.out_spec)
    params = {**p, "dimension_numbers": numbers, "feature_group_count": C}
    out = jax.vmap(lambda v: lax.conv_general_dilated_p.bind(v, grouped, **params))(lhs.values)
    return [Columns(_to_columns(out, dn.out_spec[1], C))]


@_register(P.dot_general_p)
def _dot_general(eqn, ins):
    """A contraction over a separated axis with a constant: the channel becomes a batch dimension of both
    operands (the constant's contracted axis split the same way), so column ``(b, c)`` contracts only its
    channel's positions."""
    lhs, rhs = ins  # analysis.dot_mixes: one operand separated on a contracted axis, the other constant
    sep_is_lhs = isinstance(lhs, Separated)
    sep, other = (lhs, rhs) if sep_is_lhs else (rhs, lhs)
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    own_c, own_b, other_c, other_b = (lc, lb, rc, rb) if sep_is_lhs else (rc, rb, lc, lb)
    partner = other_c[list(own_c).index(sep.axis)]
    length = sep.values.shape[1 + sep.axis]
    outer, C, inner = length // (sep.channels * sep.inner), sep.channels, sep.inner

    def split_axis(shape, axis):  # axis → (outer, C, inner): the channel is the middle one
        return shape[:axis] + (outer, C, inner) + shape[axis + 1 :]

    def renumber(dims, axis):  # dimensions of an operand after its ``axis`` became three
        return [d if d < axis else d + 2 for d in dims]

    a, r = sep.axis, partner
    sep_values = sep.values.reshape((sep.values.shape[0],) + split_axis(sep.values.shape[1:], a))
    other_values = other.reshape(split_axis(other.shape, r))
    # the pairs in the original contraction order are kept for the other axes; the split ones are appended
    keep = [i for i, d in enumerate(own_c) if d != a]
    own_contract = [renumber(own_c, a)[i] for i in keep] + [a, a + 2]
    other_contract = [renumber(other_c, r)[i] for i in keep] + [r, r + 2]
    own_batch = renumber(own_b, a) + [a + 1]
    other_batch = renumber(other_b, r) + [r + 1]
    if sep_is_lhs:
        numbers = ((tuple(own_contract), tuple(other_contract)), (tuple(own_batch), tuple(other_batch)))
    else:
        numbers = ((tuple(other_contract), tuple(own_contract)), (tuple(other_batch), tuple(own_batch)))
    params = {**eqn.params, "dimension_numbers": numbers}

    def one(v):
        operands = (v, other_values) if sep_is_lhs else (other_values, v)
        return lax.dot_general_p.bind(*operands, **params)

    out = jax.vmap(one)(sep_values)  # (B, *batch, C, *free)
    return [Columns(_channel_columns(out, 1 + len(lb)))]


def separated_columns(linear: Callable, specs: list, tangents: list[Separated]):
    """Columns of the linear map ``linear`` (``jax.linearize``'s, of primals shaped as ``specs``) along the
    separated ``tangents`` (one per primal, each standing for ``B·C`` columns): ``(B·C, *output shape)``, the
    columns ``b``-major and channel-minor."""
    closed = jax.make_jaxpr(linear)(*specs)
    (out,) = evaluate(closed.jaxpr, list(closed.consts), list(tangents), tangents[0].channels)
    if isinstance(out, (Separated, Columns)):
        return expand(out).values
    # no tangent reaches the output: every column is zero
    count = tangents[0].values.shape[0] * tangents[0].channels
    return jnp.zeros((count,) + tuple(closed.jaxpr.outvars[0].aval.shape), closed.jaxpr.outvars[0].aval.dtype)
