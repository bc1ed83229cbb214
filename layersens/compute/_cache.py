"""The compiled plans ``jacobian`` and ``compressed_jacobian`` reuse, owned by this stage: a few per split, keyed
by the device and the :class:`~layersens.Plan` itself (two strategies that plan the same blocks share programs),
and freed with their split.

The entries hold their split only through a weak proxy, so the kept programs do not keep the split alive: when
the caller drops the split, its entry goes with it (a long session over hundreds of models otherwise runs out of
memory maps).
"""

from __future__ import annotations

import collections
import weakref
from typing import TYPE_CHECKING

from ..planning import example_spec, plan
from ._prepare import PreparedJacobian, compile_plan, resolve_device

if TYPE_CHECKING:
    from ..tracing import LayerSplit

# Compiled plans kept per split (device × plan); the least recently used is dropped beyond this.
PREPARED_KEPT = 8
_KEPT: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def kept_plans(split: LayerSplit) -> int:
    """How many compiled plans are kept for ``split``."""
    return len(_KEPT.get(split, ()))


def prepared_for(split: LayerSplit, example, mode, max_memory, device) -> tuple[PreparedJacobian, bool]:
    """The compiled plan for these arguments, kept from an earlier call or freshly compiled (then ``True``).

    Planning runs on every call (a pure function of the split's analyses, milliseconds); only compiling is
    saved."""
    example_spec(split, example)
    dev = resolve_device(device)
    planned = plan(split, example, mode, max_memory, dev)
    kept = _KEPT.setdefault(split, collections.OrderedDict())
    key = (dev, planned)
    if key in kept:
        kept.move_to_end(key)
        return kept[key], False
    prepared = compile_plan(split, planned, dev, hold=weakref.proxy)
    kept[key] = prepared
    while len(kept) > PREPARED_KEPT:
        kept.popitem(last=False)
    return prepared, True
