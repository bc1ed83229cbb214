"""How a Jacobian is computed: small strategy objects passed as ``mode=`` with a safe default, ``Auto()``.

A strategy turns a split into *blocks*: sets of upstream leaves and the method (``_methods``) that computes their
columns. Every block then works through its basis in chunks sized from the memory budget (``_plan``). Costs are
estimated per example by the methods (passes × the arithmetic of one pass over what depends on the leaves, plus
the entries returned from the device). A reverse pass computes the rows of every leaf of its block at once, so
leaves share reverse blocks.

Where a mode cannot differentiate a leaf (a ``custom_vjp`` has no forward mode; a ``while_loop`` no reverse
mode; see ``analysis.AutodiffLimits``) every strategy computes that leaf in the other mode, and the plan says so.
"""

from __future__ import annotations

import abc
import dataclasses
import itertools
from typing import TYPE_CHECKING, ClassVar

from .._errors import ModeError
from .._modes import MODE_ALIASES, MODE_NAMES
from ..analysis import analyze
from ._layout import contiguous_runs, leaf_size, runs_by
from ._methods import (
    WRITE_COST,
    ColumnColouring,
    DenseForward,
    DenseReverse,
    Method,
    RowColouring,
    SeparatedForward,
    SeparatedForwardFirst,
)

if TYPE_CHECKING:
    from ..tracing import LayerSplit

FORWARD, REVERSE = DenseForward(), DenseReverse()
COLUMNS, ROWS, SEPARATED, SEPARATED_FIRST = (
    ColumnColouring(),
    RowColouring(),
    SeparatedForward(),
    SeparatedForwardFirst(),
)


@dataclasses.dataclass(frozen=True)
class Block:
    """Upstream leaves and the method that computes their columns; ``chunk_size`` fixes the chunk width."""

    names: tuple[str, ...]
    method: Method
    chunk_size: int | None = None


def _dense(split: LayerSplit, method: Method, chunk_size) -> tuple[Block, ...]:
    """Every leaf by ``method``, except leaves that mode cannot differentiate, by the other."""
    limits = analyze(split).limits
    limits.check(split.param_names)
    blocked = limits.forward_blocked if method.forward else limits.reverse_blocked
    other = REVERSE if method.forward else FORWARD
    own = tuple(n for n in split.param_names if n not in blocked)
    rest = tuple(n for n in split.param_names if n in blocked)
    if method.forward:
        return tuple(Block(run, method, chunk_size) for run in contiguous_runs(split, own)) + (
            (Block(rest, other, chunk_size),) if rest else ()
        )
    return ((Block(own, method, chunk_size),) if own else ()) + tuple(
        Block(run, other, chunk_size) for run in contiguous_runs(split, rest)
    )


class Strategy(abc.ABC):
    """Base of the strategies: turns a split into :class:`Block` s, each a set of leaves and the method that
    computes them. Strategies are frozen dataclasses (values: equal strategies plan equally); ``name`` is what the
    command line's ``--mode`` calls it, ``chunk_size`` fixes every block's chunk width when given."""

    name: ClassVar[str]
    chunk_size: int | None

    @abc.abstractmethod
    def blocks(self, split: LayerSplit) -> tuple[Block, ...]:
        """The blocks, together covering every differentiated leaf once."""


@dataclasses.dataclass(frozen=True)
class Forward(Strategy):
    """Forward mode (``jax.jacfwd``): one JVP per upstream parameter, vmapped over chunks of the parameter basis.

    Cost: P passes per example, the primal shared within a chunk. Memory: chunk × tangents of the intermediates.
    Use when P < M: few parameters feeding a wide layer.
    """

    chunk_size: int | None = None
    name: ClassVar[str] = "forward"

    def blocks(self, split: LayerSplit) -> tuple[Block, ...]:
        return _dense(split, FORWARD, self.chunk_size)


@dataclasses.dataclass(frozen=True)
class Reverse(Strategy):
    """Reverse mode (``jax.jacrev``): vmap over the pullback of one ``jax.vjp``, chunks of the output basis.

    Cost: M pullbacks per example after one forward pass. Memory: residuals + chunk × (cotangents + P).
    Use when M < P: narrow layers fed by many parameters.
    """

    chunk_size: int | None = None
    name: ClassVar[str] = "reverse"

    def blocks(self, split: LayerSplit) -> tuple[Block, ...]:
        return _dense(split, REVERSE, self.chunk_size)


@dataclasses.dataclass(frozen=True)
class PerLeaf(Strategy):
    """Forward or reverse chosen per leaf by cost, without exploiting structure.

    Cost: Σ over forward leaves of their sizes in JVPs + M pullbacks if any leaf goes reverse, each over only
    what depends on its leaves. Use to compare against :class:`Auto`, or where structure detection is unwanted.
    """

    chunk_size: int | None = None
    name: ClassVar[str] = "per-leaf"

    def blocks(self, split: LayerSplit) -> tuple[Block, ...]:
        return plan_blocks(split, {}, self.chunk_size, separate=False)


@dataclasses.dataclass(frozen=True)
class Structured(Strategy):
    """Column or row colouring for every channel-diagonal leaf; for the rest the cheapest of dense forward,
    channel-separated forward and reverse mode.

    Cost: P_leaf / C JVPs (column colouring) or M / C shared pullbacks (row colouring) per structured leaf; only
    the block's nonzeros (1 / C of it) leave the device and are written into the zeroed result. Use to force
    colouring; :class:`Auto` uses it only where it is cheaper.
    """

    chunk_size: int | None = None
    channel_first: bool = True  # see Auto
    name: ClassVar[str] = "structured"

    def blocks(self, split: LayerSplit) -> tuple[Block, ...]:
        structure = analyze(split).structure
        return plan_blocks(split, structure, self.chunk_size, force_structure=True, channel_first=self.channel_first)


@dataclasses.dataclass(frozen=True)
class Auto(Strategy):
    """The default: per leaf, the cheapest of forward, reverse, (where the leaf acts one channel at a time)
    column or row colouring, and (where it has a channel axis the layer mixes) channel-separated forward mode,
    counting reverse passes as shared between leaves.

    Cost: the minimum over those plans of the estimated device time (see :func:`plan_blocks`), plus placing the
    result on the host. What it picked, and why, is the plan: ``layersens.plan(split).table()`` lists each
    block's method, passes and chunks; a result's ``mode`` names the methods used.

    ``trial``: on a small layer (one example's matrix ≤ 8 MiB), where what XLA makes of a program matters more
    than the arithmetic counted, the plan's program races plain reverse and forward mode on the first inputs
    (a few runs each, once per input shape) and the fastest is kept; the result's notes give the timings. Costs
    one extra compilation per candidate. ``False`` keeps the plan.

    ``channel_first``: whether a leaf whose channel axis is its first (an ``(out, in)`` kernel) may be coloured or
    carried apart along that axis; a store on disk (``stream_jacobian``) plans without, as its slabs and its
    resume ledger follow ``(w, c)`` columns.
    """

    chunk_size: int | None = None
    trial: bool = True
    channel_first: bool = True
    name: ClassVar[str] = "auto"

    def blocks(self, split: LayerSplit) -> tuple[Block, ...]:
        return plan_blocks(split, analyze(split).structure, self.chunk_size, channel_first=self.channel_first)


def channel_last_only(strategy: Strategy) -> Strategy:
    """``strategy``, colouring only leaves whose channel axis is their last (what a store on disk takes); a
    strategy that cannot be so rebuilt (a subclass with its own ``__init__``) is returned as it is, and a store
    refuses its plan if it colours such a leaf."""
    if getattr(strategy, "channel_first", False):
        try:
            return dataclasses.replace(strategy, channel_first=False)  # type: ignore[type-var]
        except TypeError:
            return strategy
    return strategy


def plan_blocks(
    split: LayerSplit, structure: dict, chunk_size=None, force_structure=False, separate=True, channel_first=True
) -> tuple[Block, ...]:
    """Chooses a method per leaf minimizing the estimated device time per example.

    Reverse groups (dense rows; row colouring per channel count) share their passes between leaves, so we
    enumerate which groups exist (at most a few) and give every leaf the cheapest option among forward (dense or
    coloured) and the existing groups; each candidate plan is then costed with its groups' actual members
    (``Method.cost``). Leaves a mode cannot differentiate never get that mode. ``separate``: channel separation
    may be used; ``channel_first``: leaves may be coloured or carried apart along their first axis.
    """
    limits = analyze(split).limits
    limits.check(split.param_names)
    last_axis = len(split.activation_shape) - 1

    separation = analyze(split).separation if separate else {}
    if not channel_first:  # colouring and separation alike keep to channel-last leaves
        structure = {n: s for n, s in structure.items() if s.channel_last}
        separation = {n: s for n, s in separation.items() if s.leaf_axis == -1}

    def forward_method(name):
        if name in structure:
            return COLUMNS
        if name in separation:
            method = SEPARATED if separation[name].leaf_axis == -1 else SEPARATED_FIRST
            if method.cost(split, (name,)) < FORWARD.cost(split, (name,)):
                return method
        return FORWARD

    groups: dict[tuple[str, int | None], Method] = {("rev", None): REVERSE}
    for st in structure.values():
        if st.output_axis == last_axis:
            groups[("rev-colour", st.channels)] = ROWS

    def eligible(name, group):
        if name in limits.reverse_blocked:
            return False
        kind, channels = group
        if kind == "rev":
            return not (force_structure and name in structure) or name in limits.forward_blocked
        st = structure.get(name)
        return st is not None and st.channels == channels and st.output_axis == last_axis

    def options(name, active):
        found = [] if name in limits.forward_blocked else [(forward_method(name).cost(split, (name,)), "fwd")]
        # a member's share of a group: its writes (the passes are shared and costed with the group)
        found += [
            (groups[g].basis_size(split, (name,)) * WRITE_COST * leaf_size(split, name), g)
            for g in active
            if eligible(name, g)
        ]
        return found

    best = None
    for r in range(len(groups) + 1):
        for active in itertools.combinations(groups, r):
            choice = {}
            for name in split.param_names:
                found = options(name, active)
                if not found:
                    break
                choice[name] = min(found, key=lambda o: o[0])[1]
            else:
                total = sum(forward_method(n).cost(split, (n,)) for n, c in choice.items() if c == "fwd")
                for g in active:
                    members = tuple(n for n, c in choice.items() if c == g)
                    total += groups[g].cost(split, members) if members else 0.0
                if best is None or total < best[0]:
                    best = (total, choice)
    if best is None:  # only when every active group was needed and none fitted: cannot happen after check()
        raise AssertionError("no method can compute some leaf")
    choice = best[1]

    blocks: list[Block] = []
    plain_forward = {n for n, c in choice.items() if c == "fwd" and forward_method(n) is FORWARD}
    blocks += [Block(run, FORWARD, chunk_size) for run in contiguous_runs(split, plain_forward)]
    # Adjacent separated leaves of one channel count share a block (one basis, chunks of whole channels).
    separated = [n for n in split.param_names if choice[n] == "fwd" and forward_method(n) is SEPARATED]
    blocks += [Block(run, SEPARATED, chunk_size) for run in runs_by(split, separated, lambda n: separation[n].channels)]
    # along the first axis, columns (c, w): one leaf per block
    blocks += [
        Block((n,), SEPARATED_FIRST, chunk_size)
        for n in split.param_names
        if choice[n] == "fwd" and forward_method(n) is SEPARATED_FIRST
    ]
    # Adjacent coloured leaves of one channel axis share a block: one JVP batch, and one mask writes all their
    # columns at once. A leaf whose channel is its first axis has (c, w) columns, and a block of its own.
    coloured = [n for n in split.param_names if choice[n] == "fwd" and n in structure]

    def colour_key(n):
        st = structure[n]
        return (st.channels, st.output_axis, None if st.channel_last else n)

    blocks += [Block(run, COLUMNS, chunk_size) for run in runs_by(split, coloured, colour_key)]
    for g, method in groups.items():
        names = tuple(n for n in split.param_names if choice[n] == g)
        if names:
            blocks.append(Block(names, method, chunk_size))
    return tuple(blocks)


STRATEGIES: dict[str, type[Strategy]] = {cls.name: cls for cls in (Auto, Forward, Reverse, PerLeaf, Structured)}
assert tuple(STRATEGIES) == MODE_NAMES, "layersens._modes.MODE_NAMES must list the strategies' names"


def as_strategy(mode) -> Strategy:
    """Accepts a strategy object or its name (see ``STRATEGIES``; ``"fwd"`` and ``"rev"`` are accepted for
    ``"forward"`` and ``"reverse"``)."""
    if isinstance(mode, str):
        try:
            return STRATEGIES[MODE_ALIASES.get(mode, mode)]()
        except KeyError:
            raise ModeError(f"mode {mode!r} is not known; choose one of {', '.join(MODE_NAMES)}.") from None
    if not isinstance(mode, Strategy):
        raise ModeError(
            f"mode {mode!r} is not a strategy; pass one of Auto(), Forward(), Reverse(), PerLeaf(), Structured() "
            "or a name."
        )
    return mode
