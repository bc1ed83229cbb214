"""Execution policy per platform: when examples are computed side by side, how many at once, when one program
builds the whole dense matrix on the device, and how many groups are in flight before the first is copied back.

The CPU numbers were measured (each with its reason below). The accelerator policy follows the reasoning that
an accelerator needs wide batches to be busy and copies results over a bus, not from its own memory: it puts
examples side by side up to far larger layers, assembles every result on the device, and dispatches the next
group before copying the last one back. Its numbers are not yet measured on a GPU (benchmarks/README.md);
``POLICIES`` may be edited per platform.
"""

from __future__ import annotations

import dataclasses

_MIB = 2**20


@dataclasses.dataclass(frozen=True)
class ExecutionPolicy:
    """How a platform runs a plan.

    side_by_side_max_bytes: examples side by side in one program when one example's dense matrix is at most this.
    group_max_bytes: the matrices (or compressed results) of one such group, at most.
    working_max_bytes: a group program's working memory when the user gave no budget.
    device_dense_max_bytes: one example's whole matrix built by one program on the device up to this; above it
      the blocks are placed into a zeroed host matrix.
    in_flight: groups dispatched before the first is copied back (1: one at a time).
    """

    side_by_side_max_bytes: int
    group_max_bytes: int
    working_max_bytes: int
    device_dense_max_bytes: int
    in_flight: int = 1


CPU = ExecutionPolicy(
    # Above 8 MiB one example's work outweighs a dispatch, and a large vmapped output is written to fresh pages
    # (slower on CPU than the per-example loop, measured on relu1 of the shipped LeNet, 14.4 MiB per example).
    side_by_side_max_bytes=8 * _MIB,
    # 64 MiB, not 32: 8 examples of a ViT's MLP layer (6 MiB each) in one group took 84-89 ms against 98-117 ms in
    # two groups of 4 (each copied into a zeroed result), a grouped CNN's layer (4.7 MiB each) 476-555 ms against
    # 527-714.
    group_max_bytes=64 * _MIB,
    # Estimated as the plan does (a tangent or cotangent of every intermediate per basis vector; an overestimate,
    # XLA fuses most). JAX's own jacrev/jacfwd take what they need; a small layer's plan chunked to the default
    # 32 MiB would lose to them by a dispatch per chunk.
    working_max_bytes=512 * _MIB,
    # One program output (one pass, in memory XLA's allocator reuses across calls) instead of zeroed host memory
    # plus placed nonzeros (two passes). Above it, the allocator maps fresh pages for every output (glibc's largest
    # mmap threshold is 32 MiB), whose faults cost more than the host path's. Measured on the shipped LeNet, relu1
    # (14.4 MiB): the whole-matrix program 1.8 ms, against 0.7 ms for the compressed program plus 1.6 ms zeroing
    # and placing on the host.
    device_dense_max_bytes=32 * _MIB,
    # Dispatching the next group before placing this one was measured slower on CPU: two groups' buffers alive
    # made the allocator map fresh pages, and XLA already uses every core.
    in_flight=1,
)

ACCELERATOR = ExecutionPolicy(
    side_by_side_max_bytes=256 * _MIB,
    group_max_bytes=1024 * _MIB,
    working_max_bytes=4096 * _MIB,
    device_dense_max_bytes=1024 * _MIB,
    in_flight=2,
)

POLICIES: dict[str, ExecutionPolicy] = {"cpu": CPU}


def execution_policy(platform: str) -> ExecutionPolicy:
    """The policy for a JAX platform name (``"cpu"``, ``"gpu"``, ``"cuda"``, ``"tpu"``, ...): ``POLICIES``' entry,
    else :data:`ACCELERATOR`."""
    return POLICIES.get(platform, ACCELERATOR)
