"""Everything the planner needs to know about a split, from its one jaxpr: computed once per split."""

from __future__ import annotations

import dataclasses

from ._cost import PassCost, pass_cost
from ._linearized import AutodiffLimits, autodiff_limits, channel_structure_of, jvp_jaxpr
from ._structure import ChannelStructure


@dataclasses.dataclass(frozen=True, eq=False)
class SplitAnalysis:
    """Channel structure of each upstream leaf, the cost of passes, and which modes each leaf allows."""

    structure: dict[str, ChannelStructure]
    cost: PassCost
    limits: AutodiffLimits


def analyze(split) -> SplitAnalysis:
    bits = {name: 1 << i for i, name in enumerate(split.param_names)}
    masks = [bits.get(n, 0) for n in split.inputs]
    cost = pass_cost(split.jaxpr.jaxpr, masks, bits)
    linearized = jvp_jaxpr(split)
    return SplitAnalysis(
        structure=channel_structure_of(split, linearized),
        cost=cost,
        limits=autodiff_limits(split, linearized),
    )
