"""The compressed form of examples side by side: one program per group of examples returns each coloured leaf's
channel blocks, the dense leaves' columns and the layer's values, already in the compressed result's layout.

Why: a compressed Jacobian is small (relu1 of the shipped LeNet: 735 KiB per example), so the per-example loop
spent more on dispatching two programs (the blocks and the layer's values), zeroing the result and copying each
leaf's strided slice into it than on computing (measured 1.5 ms per example, of which the device programs took
0.5 ms). Vmapped over a group, with one output per leaf, the program's outputs become the result without a copy
when one group holds every example.

Used for plans whose blocks are each computed in one chunk (one fused program per example); others keep the
per-example loop.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from ..analysis import ChannelStructure
from ..planning import leaf_size
from ._blocks import Layout
from ._kernels import Kernel
from ._platform import CPU, ExecutionPolicy
from ._side_by_side import groups_within
from ._sinks import within_ranges

if TYPE_CHECKING:
    from ..tracing import LayerSplit


def compressed_program(split: LayerSplit, fused: Kernel, coloured: Mapping[str, ChannelStructure]) -> Callable:
    """``run(params, xs) -> (channel, dense, values)`` for a group ``xs`` of examples: ``channel[leaf]`` is
    ``(G,) + activation_shape + (W_leaf,)`` for each coloured leaf, ``dense`` the ``(G, M, P_dense)`` columns of
    the other leaves in column order, ``values`` the layer's values. ``fused`` computes every block of one
    example in one chunk."""
    within = {n: leaf_size(split, n) // s.channels for n, s in coloured.items()}
    dense_names = [n for n in split.param_names if n not in coloured]
    act, M = tuple(split.activation_shape), split.num_outputs
    dtype = np.dtype(split.activation_dtype)

    def one(params, x):
        channel, columns = {}, {}
        for block in fused.blocks(0, 0, list(fused.compute(params, x, 0))):
            values, names = block.values, block.names
            if block.layout is Layout.CHANNEL_COLUMNS:  # (*act, W of the leaves side by side)
                for name, a, b in within_ranges(within, names):
                    channel[name] = values[..., a:b]
            elif block.layout is Layout.CHANNEL_ROWS:  # (S, C, W of the run): rows are the layer, C last
                for name, a, b in within_ranges(within, names):
                    channel[name] = values[:, :, a:b].reshape(act + (b - a,))
            elif block.layout is Layout.COLUMNS:  # (M, columns of the leaves side by side)
                at = 0
                for name in names:
                    size = leaf_size(split, name)
                    columns[name] = values[:, at : at + size]
                    at += size
            elif block.layout is Layout.ROWS:  # (M, P_leaf): a whole-basis block has every row
                (name,) = names
                columns[name] = values
            else:
                raise ValueError(f"a fused block has no {block.layout} layout")
        dense = (
            jnp.concatenate([columns[n].astype(dtype) for n in dense_names], axis=1)
            if dense_names
            else jnp.zeros((M, 0), dtype)
        )
        return {n: v.astype(dtype) for n, v in channel.items()}, dense, split.evaluate(params, x)

    return jax.vmap(one, in_axes=(None, 0))


def example_bytes(split: LayerSplit, coloured: Mapping[str, ChannelStructure]) -> int:
    """Bytes of one example's compressed result (channel blocks, dense columns, layer values)."""
    item = np.dtype(split.activation_dtype).itemsize
    within = sum(leaf_size(split, n) // s.channels for n, s in coloured.items())
    dense = sum(leaf_size(split, n) for n in split.param_names if n not in coloured)
    return split.num_outputs * (within + dense + 1) * item


def group_size(
    per_example: int, working: int | None, num_examples: int, budget: int | None = None, policy: ExecutionPolicy = CPU
) -> int:
    """Examples per program: all of them, up to ``policy.group_max_bytes`` of results and the one-example
    program's working memory (``working``, XLA's count) times the group within ``budget`` (the user's
    ``max_memory``) or ``policy.working_max_bytes``; equal groups."""
    cap = policy.working_max_bytes if budget is None else budget
    return groups_within(num_examples, per_example, policy.group_max_bytes, working or 0, cap)
