"""How a Jacobian is computed: small strategy objects passed as ``mode=`` with a safe default, ``Auto()``.

Write M for the layer's outputs per example, P for the upstream parameters, and for a leaf that acts on the
layer one channel at a time (see ``_structure``), C for its channels. A strategy turns a split into *blocks*:
sets of leaves and the method computing their columns (see ``_kernels``). Every block works through its basis in
chunks sized from the memory budget.

Costs are estimated per example as passes × the arithmetic of one pass over what depends on the leaves (a JVP is
about one forward pass from the leaf to the layer; a pullback about two), plus the entries each method returns
from the device (see ``_cost``). A reverse pass computes the rows of every leaf of its block at once, so leaves
share reverse blocks.
"""

from __future__ import annotations

import dataclasses
import itertools


from ._errors import SpecError
from ._cost import WRITE_COST, pass_flops
from ._kernels import contiguous_runs, leaf_size
from ._split import LayerSplit

# A pullback costs about two forward passes (the backward of a conv is two convs).
REVERSE_PASS_COST = 2.0


@dataclasses.dataclass(frozen=True)
class Block:
    """Upstream leaves and the method that computes their columns: ``fwd``, ``rev``, ``fwd-colour``,
    ``rev-colour``."""

    names: tuple[str, ...]
    method: str
    chunk_size: int | None = None


@dataclasses.dataclass(frozen=True)
class Forward:
    """Forward mode (``jax.jacfwd``): one JVP per upstream parameter, vmapped over chunks of the parameter basis.

    Cost: P passes per example, the primal shared within a chunk. Memory: chunk × tangents of the intermediates.
    Use when P < M: few parameters feeding a wide layer.
    """

    chunk_size: int | None = None
    name = "fwd"

    def blocks(self, split: LayerSplit, structure=None) -> tuple[Block, ...]:
        return (Block(split.param_names, "fwd", self.chunk_size),)


@dataclasses.dataclass(frozen=True)
class Reverse:
    """Reverse mode (``jax.jacrev``): vmap over the pullback of one ``jax.vjp``, chunks of the output basis.

    Cost: M pullbacks per example after one forward pass. Memory: residuals + chunk × (cotangents + P).
    Use when M < P: narrow layers fed by many parameters.
    """

    chunk_size: int | None = None
    name = "rev"

    def blocks(self, split: LayerSplit, structure=None) -> tuple[Block, ...]:
        return (Block(split.param_names, "rev", self.chunk_size),)


@dataclasses.dataclass(frozen=True)
class PerLeaf:
    """Forward or reverse chosen per leaf by cost, without exploiting structure.

    Cost: Σ over forward leaves of their sizes in JVPs + M pullbacks if any leaf goes reverse, each over only
    what depends on its leaves. Use to compare against :class:`Auto`, or where structure detection is unwanted.
    """

    chunk_size: int | None = None
    name = "per-leaf"

    def blocks(self, split: LayerSplit, structure=None) -> tuple[Block, ...]:
        return plan_blocks(split, {}, self.chunk_size)


@dataclasses.dataclass(frozen=True)
class Structured:
    """Column or row colouring for every channel-diagonal leaf, dense forward/reverse for the rest.

    Cost: P_leaf / C JVPs (fwd-colour) or M / C shared pullbacks (rev-colour) per structured leaf; only the
    block's nonzeros (1 / C of it) leave the device and are written into the zeroed result. Use to force
    colouring; :class:`Auto` uses it only where it is cheaper.
    """

    chunk_size: int | None = None
    name = "structured"

    def blocks(self, split: LayerSplit, structure=None) -> tuple[Block, ...]:
        return plan_blocks(split, structure or {}, self.chunk_size, force_structure=True)


@dataclasses.dataclass(frozen=True)
class Auto:
    """The default: per leaf, the cheapest of forward, reverse, and (where the leaf acts one channel at a time)
    column or row colouring, counting reverse passes as shared between leaves.

    Cost: the minimum over those plans of the estimated device time (passes × their arithmetic + the entries
    returned; see :func:`plan_blocks`), plus placing the result on the host.
    """

    chunk_size: int | None = None
    name = "auto"

    def blocks(self, split: LayerSplit, structure=None) -> tuple[Block, ...]:
        return plan_blocks(split, structure or {}, self.chunk_size)


def plan_blocks(split: LayerSplit, structure: dict, chunk_size=None, force_structure=False) -> tuple[Block, ...]:
    """Chooses a method per leaf minimizing the estimated device time per example.

    Each method is charged its passes times the floating-point operations of one pass over what depends on its
    leaves (``_cost.pass_flops``; a pullback counts ``REVERSE_PASS_COST`` times a JVP), plus ``WRITE_COST`` per
    entry it returns: the dense columns or rows, or only the nonzeros for the colouring methods. Reverse groups
    (dense rows; row colouring per channel count) share their passes between leaves, so we enumerate which
    groups exist (at most a few) and give every leaf the cheapest option among forward (dense or coloured) and
    the existing groups; each candidate plan is then costed with its groups' actual members.
    """
    flops = pass_flops(split)
    M = split.num_outputs
    last_axis = len(split.activation_shape) - 1

    def forward_cost(name):
        s = structure.get(name)
        passes = leaf_size(split, name) // s.channels if s else leaf_size(split, name)
        return passes * (flops([name]) + WRITE_COST * M)

    group_passes = {("rev", None): M}
    for st in structure.values():
        if st.output_axis == last_axis:
            group_passes[("rev-colour", st.channels)] = M // st.channels

    def eligible(name, group):
        kind, channels = group
        if kind == "rev":
            return not (force_structure and name in structure)
        st = structure.get(name)
        return st is not None and st.channels == channels and st.output_axis == last_axis

    def group_cost(group, members):
        passes = group_passes[group]
        return passes * (REVERSE_PASS_COST * flops(members) + WRITE_COST * sum(leaf_size(split, n) for n in members))

    best = None
    for r in range(len(group_passes) + 1):
        for active in itertools.combinations(group_passes, r):
            choice = {}
            for name in split.param_names:
                options = [(forward_cost(name), "fwd")]
                options += [(group_passes[g] * WRITE_COST * leaf_size(split, name), g)  # the passes are shared
                            for g in active if eligible(name, g)]
                choice[name] = min(options, key=lambda o: o[0])[1]
            total = sum(forward_cost(n) for n, c in choice.items() if c == "fwd")
            for g in active:
                members = [n for n, c in choice.items() if c == g]
                total += group_cost(g, members) if members else 0.0
            if best is None or total < best[0]:
                best = (total, choice)
    choice = best[1]

    blocks: list[Block] = []
    plain_forward = {n for n, c in choice.items() if c == "fwd" and n not in structure}
    blocks += [Block(run, "fwd", chunk_size) for run in contiguous_runs(split, plain_forward)]
    # Adjacent coloured leaves of one channel axis share a block: one JVP batch, and one mask writes all their
    # columns at once.
    coloured = [n for n in split.param_names if choice[n] == "fwd" and n in structure]
    for run in contiguous_runs(split, coloured):
        group: list[str] = []
        for name in run:
            key = (structure[name].channels, structure[name].output_axis)
            if group and key != (structure[group[-1]].channels, structure[group[-1]].output_axis):
                blocks.append(Block(tuple(group), "fwd-colour", chunk_size))
                group = []
            group.append(name)
        blocks.append(Block(tuple(group), "fwd-colour", chunk_size))
    for group in group_passes:
        names = tuple(n for n in split.param_names if choice[n] == group)
        if names:
            blocks.append(Block(names, group[0], chunk_size))
    return tuple(blocks)


STRATEGIES = {"auto": Auto, "fwd": Forward, "rev": Reverse, "per-leaf": PerLeaf, "structured": Structured}


def as_strategy(mode):
    """Accepts a strategy object or its name (see ``STRATEGIES``)."""
    if isinstance(mode, str):
        try:
            return STRATEGIES[mode]()
        except KeyError:
            raise SpecError(f"mode {mode!r} is not known; choose one of {sorted(STRATEGIES)}.") from None
    if not hasattr(mode, "blocks"):
        raise SpecError(
            f"mode {mode!r} is not a strategy; pass one of Auto(), Forward(), Reverse(), PerLeaf(), Structured() "
            "or a name."
        )
    return mode
