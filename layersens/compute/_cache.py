"""The compiled plans ``jacobian`` and ``compressed_jacobian`` reuse, owned by this stage: a few per split, keyed
by the device and the :class:`~layersens.Plan` itself (two strategies that plan the same blocks share programs),
and freed with their split. The plans themselves are kept too, by what they are made from (strategy, budget,
device): planning costs milliseconds, as much as a small layer's whole Jacobian.

The entries hold their split only through a weak proxy, so the kept programs do not keep the split alive: when
the caller drops the split, its entry goes with it (a long session over hundreds of models otherwise runs out of
memory maps).
"""

from __future__ import annotations

import collections
import weakref
from typing import TYPE_CHECKING

from ..planning import Plan, as_strategy, example_spec, plan, working_memory
from ._prepare import PreparedJacobian, compile_plan, resolve_devices

if TYPE_CHECKING:
    from ..tracing import LayerSplit

# Compiled plans kept per split (device × plan); the least recently used is dropped beyond this.
PREPARED_KEPT = 8
_KEPT: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class _Kept:
    """One split's plans (by strategy, budget and device) and compiled plans (by device and plan), each an LRU."""

    def __init__(self):
        self.plans: collections.OrderedDict[tuple, Plan] = collections.OrderedDict()
        self.prepared: collections.OrderedDict[tuple, PreparedJacobian] = collections.OrderedDict()
        # the same, by the arguments as given: a repeated call skips resolving, planning and hashing a plan
        # (tens of microseconds, as much as a small layer's Jacobian)
        self.by_arguments: collections.OrderedDict[tuple, PreparedJacobian] = collections.OrderedDict()


def _remember(table: collections.OrderedDict, key, value):
    table[key] = value
    while len(table) > PREPARED_KEPT:
        table.popitem(last=False)
    return value


def kept_plans(split: LayerSplit) -> int:
    """How many compiled plans are kept for ``split``."""
    kept = _KEPT.get(split)
    return 0 if kept is None else len(kept.prepared)


def prepared_for(split: LayerSplit, example, mode, max_memory, device, devices=None) -> tuple[PreparedJacobian, bool]:
    """The compiled plan for these arguments, kept from an earlier call or freshly compiled (then ``True``)."""
    example_spec(split, example)
    kept = _KEPT.get(split)
    if kept is None:
        kept = _KEPT[split] = _Kept()
    arguments = (mode, max_memory, device, devices)
    try:
        found = kept.by_arguments.get(arguments)
        hashable = True
    except TypeError:  # an unhashable argument: resolved below
        found, hashable = None, False
    if found is not None:
        kept.by_arguments.move_to_end(arguments)
        return found, False
    chosen = resolve_devices(device, devices)
    dev = chosen[0]
    strategy = as_strategy(mode)
    plan_key = (dev, strategy, working_memory(max_memory, dev.platform), max_memory is not None)
    planned = kept.plans.get(plan_key)
    if planned is None:
        planned = _remember(kept.plans, plan_key, plan(split, example, strategy, max_memory, dev))
    key = (chosen, planned)
    prepared = kept.prepared.get(key)
    fresh = prepared is None
    if prepared is None:
        prepared = _remember(kept.prepared, key, compile_plan(split, planned, chosen, hold=weakref.proxy))
    else:
        kept.prepared.move_to_end(key)
    if hashable:
        _remember(kept.by_arguments, arguments, prepared)
    return prepared, fresh
