"""Everything the planner needs to know about a split, from its one jaxpr: computed once per split, kept here.

The analyses are owned by this stage: :func:`analyze` keeps its result per split (weakly: it is freed with the
split), so the split itself carries no analysis and the other stages ask this one.
"""

from __future__ import annotations

import dataclasses
import weakref
from typing import TYPE_CHECKING

from ._cost import PassCost, pass_cost
from ._linearized import AutodiffLimits, autodiff_limits, channel_structure_of, jvp_jaxpr
from ._separation import Separation, separations
from ._structure import ChannelStructure

if TYPE_CHECKING:
    from ..tracing import LayerSplit


@dataclasses.dataclass(frozen=True, eq=False)
class SplitAnalysis:
    """Channel structure of each upstream leaf, the cost of passes, which modes each leaf allows, and the cost
    of carrying each leaf with a channel axis channel-separated (``separation``)."""

    structure: dict[str, ChannelStructure]
    cost: PassCost
    limits: AutodiffLimits
    separation: dict[str, Separation] = dataclasses.field(default_factory=dict)

    def __repr__(self) -> str:
        return (
            f"SplitAnalysis(structured={sorted(self.structure)}, "
            f"forward_blocked={sorted(self.limits.forward_blocked)}, "
            f"reverse_blocked={sorted(self.limits.reverse_blocked)})"
        )


# The analyses hold no reference to their split, so a weak key frees them together.
_ANALYSES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def analyze(split: LayerSplit) -> SplitAnalysis:
    """The analyses of ``split``'s jaxpr (structure, cost, autodiff limits); computed on first use, then kept.

    Cost: one abstract interpretation of the layer's jaxpr and one of its JVP program.
    """
    known = _ANALYSES.get(split)
    if known is not None:
        return known
    bits = {name: 1 << i for i, name in enumerate(split.param_names)}
    masks = [bits.get(n, 0) for n in split.inputs]
    cost = pass_cost(split.jaxpr.jaxpr, masks, bits)
    linearized = jvp_jaxpr(split)
    result = SplitAnalysis(
        structure=channel_structure_of(split, linearized),
        cost=cost,
        limits=autodiff_limits(split, linearized),
        separation=separations(split, linearized),
    )
    _ANALYSES[split] = result
    return result


def channel_structure(split: LayerSplit, x=None) -> dict[str, ChannelStructure]:
    """The upstream leaves of ``split`` that act on its layer one channel at a time (see ``_structure``).
    ``x`` is accepted for compatibility and not needed: the structure is a property of the traced program."""
    return analyze(split).structure
