"""The derivative program of a split, and what it shows: channel structure and the limits of each mode.

The split's jaxpr is differentiated once by ``jax.jvp`` (the jaxpr is re-traced, not the model) into
``(*primal inputs, *tangents of the upstream leaves) -> (activation, its tangent)``. Custom derivative rules
and ``stop_gradient`` appear there as JAX applies them, so the structure analysis reads this program. Two
things make a mode impossible, and both show here: a ``custom_vjp`` function has no forward mode (its tangent
path becomes ``custom_lin``), and a ``while_loop`` has no reverse mode (its carries would need transposing);
for fori_loops with static bounds JAX emits a scan, which has both.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import jax
from jax.extend import core as jcore
from jax.extend.core import primitives as P

from .._errors import LayersensError
from ._dependence import propagate
from ._structure import MIXED, ChannelStructure, structure_of

if TYPE_CHECKING:
    from ..tracing import LayerSplit


@dataclasses.dataclass(frozen=True)
class AutodiffLimits:
    """Leaves whose columns cannot be computed in one mode, with the reason: ``forward_blocked`` (a custom_vjp
    on their path) and ``reverse_blocked`` (a while_loop carrying their derivative)."""

    forward_blocked: dict
    reverse_blocked: dict

    def check(self, names) -> None:
        both = [n for n in names if n in self.forward_blocked and n in self.reverse_blocked]
        if both:
            n = both[0]
            raise LayersensError(
                f"leaf {n!r} cannot be differentiated in either mode: {self.forward_blocked[n]} (no forward mode) "
                f"and {self.reverse_blocked[n]} (no reverse mode) lie on its path to the layer. Give the "
                "while_loop static bounds (lax.fori_loop with Python ints becomes a scan) or a custom_jvp rule."
            )


def jvp_jaxpr(split: LayerSplit) -> jcore.ClosedJaxpr:
    """``(*split.inputs, *tangents of split.params) -> (activation, tangent)`` for one example."""
    function = jcore.jaxpr_as_fun(split.jaxpr)
    names = split.inputs
    positions = [names.index(n) for n in split.param_names]

    def linearized(*args):
        primals = list(args[: len(names)])
        tangents = args[len(names) :]

        def of_upstream(*upstream):
            full = list(primals)
            for i, leaf in zip(positions, upstream):
                full[i] = leaf
            return function(*full)[0]

        return jax.jvp(of_upstream, tuple(primals[i] for i in positions), tuple(tangents))

    avals = [v.aval for v in split.jaxpr.jaxpr.invars]
    specs = [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in avals]
    return jax.make_jaxpr(linearized)(*specs, *[specs[i] for i in positions])


def channel_structure_of(split: LayerSplit, closed) -> dict[str, ChannelStructure]:
    """The upstream leaves of ``split`` that are channel-diagonal with respect to its layer. Cost: one pass over
    the derivative program per leaf and candidate axis."""
    found = {}
    n_primal = len(closed.jaxpr.invars) - len(split.param_names)
    for k, (name, shape) in enumerate(zip(split.param_names, split.param_shapes)):
        if not shape:
            continue
        # The last axis first (Flax's layout); then the first, for a kernel laid out (out, in)
        for leaf_axis in (-1, 0) if len(shape) > 1 else (-1,):
            states: list[int | None] = [None] * len(closed.jaxpr.invars)
            states[n_primal + k] = leaf_axis % len(shape)
            _, out = structure_of(closed.jaxpr, states)
            if out is not None and out != MIXED and split.activation_shape[out] == shape[leaf_axis]:
                found[name] = ChannelStructure(name, shape[leaf_axis], out, leaf_axis)
                break
    return found


def autodiff_limits(split: LayerSplit, closed) -> AutodiffLimits:
    n_primal = len(closed.jaxpr.invars) - len(split.param_names)
    masks = [0] * n_primal + [1 << k for k in range(len(split.param_names))]
    forward: dict[str, str] = {}
    reverse: dict[str, str] = {}

    def note(eqn, ins, outs, times):
        reached = 0
        for m in ins:
            reached |= m
        if not reached:
            return
        if eqn.primitive is P.custom_lin_p:
            blocked, reason = forward, "a custom_vjp function"
        elif eqn.primitive is P.while_p:
            blocked, reason = reverse, "a while_loop"
        else:
            return
        for k, name in enumerate(split.param_names):
            if reached >> k & 1:
                blocked.setdefault(name, reason)

    propagate(closed.jaxpr, masks, note)
    return AutodiffLimits(forward_blocked=forward, reverse_blocked=reverse)
