"""Planning: the methods (what each costs), the strategies that choose them, and the plan that sizes their
chunks. Pure: nothing here builds or runs a device program (that is ``compute``)."""

from ._layout import colour_runs, column_starts, contiguous_runs, leaf_size
from ._memory import available_memory, balanced_width, chunk_size, parse_bytes, working_memory
from ._methods import (
    METHODS,
    ColumnColouring,
    DenseForward,
    DenseReverse,
    Method,
    RowColouring,
    SeparatedForward,
    SeparatedForwardFirst,
)
from ._plan import Plan, PlannedBlock, aligned, describe_blocks, example_spec, plan
from ._strategies import (
    STRATEGIES,
    Auto,
    Block,
    Forward,
    PerLeaf,
    Reverse,
    Strategy,
    Structured,
    as_strategy,
    channel_last_only,
    plan_blocks,
)
