"""Planning: the methods, the strategies that choose them, and the plan that sizes their chunks."""

from ._memory import available_memory, balanced_width, chunk_size, parse_bytes, working_memory
from ._methods import (METHODS, ColumnColouring, DenseForward, DenseReverse, Kernel, Method, RowColouring,
                       dense_program, fused_kernel)
from ._strategies import STRATEGIES, Auto, Block, Forward, PerLeaf, Reverse, Structured, as_strategy, plan_blocks
from ._plan import Plan, PlannedBlock, example_spec, plan
