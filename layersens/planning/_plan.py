"""A plan: which method computes which leaves, in chunks of what width, under which memory budget.

``plan(split, example, mode, max_memory)`` is pure: it reads the split's analyses and returns a :class:`Plan`
value, computing nothing. ``layersens.prepare`` compiles a plan; once compiled, XLA's own count of each
program's memory may narrow the chunks further (the compiled object's ``plan`` shows the final widths).
"""

from __future__ import annotations

import dataclasses
import html
from typing import TYPE_CHECKING

import jax
import numpy as np

from .._errors import InputShapeError, format_bytes
from .._repr import Summarized
from ..analysis import analyze
from ._memory import chunk_size, working_memory
from ._methods import Method
from ._strategies import Auto, as_strategy

if TYPE_CHECKING:
    from ..tracing import LayerSplit


@dataclasses.dataclass(frozen=True, repr=False)
class PlannedBlock(Summarized):
    """One block of a plan.

    Attributes:
      names: its upstream leaves (adjacent columns for the colouring methods).
      method: the :class:`~layersens.planning.Method` computing them.
      basis: basis vectors (passes) per example.
      width: basis vectors per chunk (one compiled program per width).
      bytes_per_vector: estimated device memory of one basis vector.
      cost: the method's estimated device time per example (flop-equivalents).
      fixed_width: the strategy asked for this chunk width; it is never narrowed.
    """

    names: tuple[str, ...]
    method: Method
    basis: int
    width: int
    bytes_per_vector: int
    cost: float
    fixed_width: bool = False

    def _summary(self):
        return [
            ("method", self.method.name),
            ("names", self.names),
            ("basis", self.basis),
            ("width", self.width),
            ("chunks", self.chunks),
        ]

    @property
    def chunks(self) -> int:
        return -(-self.basis // max(1, self.width))

    @property
    def describe(self) -> str:
        return describe_block(self)


@dataclasses.dataclass(frozen=True, repr=False)
class Plan(Summarized):
    """What a strategy computes for a split, and how.

    Attributes:
      layer: the split's layer.
      strategy: the strategy's name (``"auto"``, ...).
      blocks: the :class:`PlannedBlock` s, together covering every upstream leaf once.
      budget: working-memory budget in bytes.
      budget_given: whether the user gave the budget (else it is the platform default).
      platform: the device platform the budget is for.
      notes: what the plan changed from what the strategy asked for, and why.
      trial: a small layer's whole-matrix program may be chosen by a timed trial against plain reverse and
        forward mode (``Auto``'s ``trial``; see ``compute._side_by_side``).
      channel_first: leaves whose channel axis is their first may be coloured (the strategy's ``channel_first``);
        a trial's other candidates keep to it.
    """

    layer: str
    strategy: str
    blocks: tuple[PlannedBlock, ...]
    budget: int
    budget_given: bool
    platform: str
    notes: tuple[str, ...] = ()
    trial: bool = False
    channel_first: bool = True

    def _summary(self):
        return [
            ("layer", self.layer),
            ("strategy", self.strategy),
            ("methods", self.describe()),
            ("blocks", len(self.blocks)),
            ("budget", format_bytes(self.budget)),
            ("platform", self.platform),
            ("notes", len(self.notes)),
        ]

    def _repr_html_(self) -> str:
        return "<pre>" + html.escape(self.table()) + "</pre>"

    @property
    def methods(self) -> dict[str, str]:
        """``leaf -> method name``."""
        return {name: b.method.name for b in self.blocks for name in b.names}

    @property
    def coloured(self) -> tuple[str, ...]:
        """The leaves a colouring method computes (channel-diagonal, kept as channel blocks by compressed sinks)."""
        return tuple(n for b in self.blocks if b.method.colouring for n in b.names)

    @property
    def cost(self) -> float:
        return sum(b.cost for b in self.blocks)

    def describe(self) -> str:
        """``"fwd-colour"`` when one method computes everything, else each method with its leaves."""
        return describe_blocks(self.blocks)

    def table(self) -> str:
        """One line per block: method, leaves, passes, chunk width, estimated memory per chunk."""
        lines = [f"plan for {self.layer!r} ({self.strategy}, budget {format_bytes(self.budget)} on {self.platform})"]
        for b in self.blocks:
            lines.append(
                f"  {b.method.name:<10} {'+'.join(b.names)}: {b.basis} passes in {b.chunks} chunk(s) of "
                f"{b.width}, ~{format_bytes(b.width * b.bytes_per_vector)} per chunk"
            )
        lines += [f"  note: {note}" for note in self.notes]
        return "\n".join(lines)


def describe_block(block) -> str:
    """One block (a plan's, or a strategy's ``Block``): its method with its leaves."""
    return f"{block.method.name}[{'+'.join(block.names)}]"


def describe_blocks(blocks) -> str:
    """Blocks (a plan's, or a strategy's ``Block`` s) as a result's ``mode`` names them: one method's name, or each
    method with its leaves."""
    methods = {b.method.name for b in blocks}
    if len(methods) == 1:
        return methods.pop()
    return ", ".join(describe_block(b) for b in blocks)


def example_spec(split: LayerSplit, example) -> jax.ShapeDtypeStruct:
    """The shape and dtype of one example, from an example, a batch, a ShapeDtypeStruct or ``None`` (the
    model's input shape); says which shape was expected when it does not fit."""
    want = tuple(split.input_shape)
    if example is None:
        return jax.ShapeDtypeStruct(want, np.dtype(split.input_dtype))
    shape = tuple(getattr(example, "shape", np.shape(example)))
    if shape[1:] == want:
        shape = shape[1:]
    if shape != want:
        raise InputShapeError(
            f"example has shape {shape}; the model expects one example of shape {want} or a batch (examples,) + {want}."
        )
    return jax.ShapeDtypeStruct(want, np.dtype(split.input_dtype))


def _platform(device) -> str:
    if device is None:
        return jax.devices()[0].platform
    return getattr(device, "platform", None) or str(device)


def plan(split: LayerSplit, example=None, mode=Auto(), max_memory=None, device=None) -> Plan:
    """The blocks ``mode`` computes for ``split``, each with its basis size and chunk width (no computation).

    ``example`` is one example, a batch, a ``jax.ShapeDtypeStruct`` or ``None``; only its shape matters.
    """
    example_spec(split, example)
    strategy = as_strategy(mode)
    platform = _platform(device)
    budget = working_memory(max_memory, platform)
    planned, notes = [], []
    for block in strategy.blocks(split):
        planned += _size(split, block, budget)
    asked = getattr(strategy, "name", type(strategy).__name__)
    limits = analyze(split).limits
    for name, reason in limits.forward_blocked.items():
        notes.append(f"{name}: {reason} has no forward mode; its columns are computed in reverse mode")
    for name, reason in limits.reverse_blocked.items():
        notes.append(f"{name}: {reason} has no reverse mode; its columns are computed in forward mode")
    return Plan(
        layer=split.layer,
        strategy=asked,
        blocks=tuple(planned),
        budget=budget,
        budget_given=max_memory is not None,
        platform=platform,
        notes=tuple(notes),
        trial=bool(getattr(strategy, "trial", False)),
        channel_first=bool(getattr(strategy, "channel_first", True)),
    )


def aligned(width: int, align: int) -> int:
    """``width`` rounded down to a multiple of ``align``, at least ``align``."""
    return max(align, width // align * align)


def _size(split: LayerSplit, block, budget: int) -> list[PlannedBlock]:
    method, names = block.method, block.names
    basis = method.basis_size(split, names)
    per_vector = method.bytes_per_vector(split, names)
    width = aligned(chunk_size(basis, per_vector, budget, block.chunk_size), method.align(split, names))
    if method.colouring and method.forward and len(names) > 1 and width < basis:
        # Several coloured leaves share a program only when they fit in one chunk; otherwise one each.
        return [p for name in names for p in _size(split, dataclasses.replace(block, names=(name,)), budget)]
    return [
        PlannedBlock(names, method, basis, width, per_vector, method.cost(split, names), block.chunk_size is not None)
    ]
