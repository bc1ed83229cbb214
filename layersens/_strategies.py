"""How a Jacobian is computed: small strategy objects passed as ``mode=`` with a safe default, ``Auto()``.

For one example, write M for the layer's number of outputs and P for the number of upstream parameters.

* :class:`Forward` pushes P tangent vectors through the network (vmapped JVPs, ``jax.jacfwd``).
* :class:`Reverse` pulls M cotangent vectors back through it (vmap over one ``jax.vjp`` pullback, ``jax.jacrev``).
* :class:`Auto` picks the cheaper of the two by shape.

Each works through its basis in chunks sized from the memory budget, so working memory stays bounded whatever
M and P are; a chunk never materializes more of the identity basis than its own width.
"""

from __future__ import annotations

import dataclasses

from ._errors import SpecError
from ._split import LayerSplit


@dataclasses.dataclass(frozen=True)
class Block:
    """A set of upstream parameter leaves (adjacent columns) and the method that computes their columns."""

    names: tuple[str, ...]
    method: str  # "fwd" or "rev"
    chunk_size: int | None = None


@dataclasses.dataclass(frozen=True)
class Forward:
    """Forward mode: one JVP per upstream parameter, vmapped over chunks of the parameter basis.

    Cost per example: P pushforwards, each about one forward pass from the first upstream parameter to the
    layer; the primal pass is shared by a chunk. Working memory: chunk × (tangents of every intermediate).
    Use when P < M: few parameters feeding a wide layer (early conv layers).
    """

    chunk_size: int | None = None
    name = "fwd"

    def blocks(self, split: LayerSplit) -> tuple[Block, ...]:
        return (Block(split.param_names, "fwd", self.chunk_size),)


@dataclasses.dataclass(frozen=True)
class Reverse:
    """Reverse mode: one pullback per layer output, vmapped over chunks of the output basis.

    Cost per example: M pullbacks, each about one backward pass from the layer to the first upstream parameter,
    after one shared forward pass. Working memory: the forward residuals plus chunk × (cotangents + P).
    Use when M < P: narrow layers fed by many parameters (dense layers late in the network).
    """

    chunk_size: int | None = None
    name = "rev"

    def blocks(self, split: LayerSplit) -> tuple[Block, ...]:
        return (Block(split.param_names, "rev", self.chunk_size),)


@dataclasses.dataclass(frozen=True)
class Auto:
    """The default: forward mode when the upstream parameters are fewer than the layer's outputs, else reverse.

    Cost: that of the chosen mode, i.e. min(P, M) vectorized passes per example.
    """

    name = "auto"

    def choose(self, split: LayerSplit):
        return Forward() if split.num_params < split.num_outputs else Reverse()

    def blocks(self, split: LayerSplit) -> tuple[Block, ...]:
        return self.choose(split).blocks(split)


STRATEGIES = {"auto": Auto, "fwd": Forward, "rev": Reverse}


def as_strategy(mode) -> Forward | Reverse | Auto:
    """Accepts a strategy object or its name (``"auto"``, ``"fwd"``, ``"rev"``)."""
    if isinstance(mode, str):
        try:
            return STRATEGIES[mode]()
        except KeyError:
            raise SpecError(f"mode {mode!r} is not known; choose one of {sorted(STRATEGIES)}.") from None
    if not hasattr(mode, "blocks"):
        raise SpecError(f"mode {mode!r} is not a strategy; pass Auto(), Forward(), Reverse() or a name.")
    return mode
