"""Analyses of a split's one jaxpr: one interpreter, one table of rules per analysis, keyed by primitive."""

from ._cost import COST_RULES, PassCost, equation_flops, pass_cost
from ._dependence import DEPENDENCE, DEPENDENCE_RULES, first_use, input_dependence, jaxpr_dependence, propagate, prune
from ._interpreter import CALL_BODIES, CONTROL_RULES, MAX_ITERATIONS, Analysis, interpret
from ._linearized import AutodiffLimits, autodiff_limits, channel_structure_of, jvp_jaxpr
from ._separation import (
    WALKED_CALLS,
    Action,
    Decision,
    SeparatedAxis,
    Separation,
    decide,
    separations,
    walk,
)
from ._split_analysis import SplitAnalysis, analyze, channel_structure
from ._structure import MIXED, STRUCTURE, STRUCTURE_RULES, ChannelStructure, structure_of
