"""The names of the methods a benchmark compares, without JAX: ``layersens bench --help`` lists them.

What each method computes, and how, is in :mod:`._methods`.
"""

from __future__ import annotations

import layersens

LOOP_METHODS = ("loop-jit", "loop-nojit")
DENSE_METHODS = ("vmap-vjp", "jacrev", "jacfwd")
LAYERSENS_PREFIX = "layersens-"
COMPRESSED_METHOD = "layersens-compressed"

# Working-memory budgets the default benchmark also runs ``layersens-auto`` under (``--max-memory``), so the
# report shows peak memory against each budget.
BUDGETS = ("8MiB", "256MiB")


def layersens_modes() -> tuple[str, ...]:
    """Strategy names to benchmark (``layersens.MODE_NAMES``), ``auto`` first; ``layersens-<alias>`` (e.g.
    ``layersens-fwd``, ``layersens.MODE_ALIASES``) is accepted too."""
    return ("auto",) + tuple(name for name in layersens.MODE_NAMES if name != "auto")


def available_methods() -> tuple[str, ...]:
    """The default method list. Any ``layersens-<mode>@<size>`` (e.g. ``layersens-auto@16MiB``) is accepted too:
    that strategy with ``max_memory=<size>``."""
    return (
        LOOP_METHODS
        + DENSE_METHODS
        + tuple(LAYERSENS_PREFIX + m for m in layersens_modes())
        + tuple(f"{LAYERSENS_PREFIX}auto@{b}" for b in BUDGETS)
        + (COMPRESSED_METHOD,)
    )


def is_method(name: str) -> bool:
    if name in LOOP_METHODS or name in DENSE_METHODS or name == COMPRESSED_METHOD:
        return True
    if not name.startswith(LAYERSENS_PREFIX):
        return False
    mode, _, budget = name[len(LAYERSENS_PREFIX) :].partition("@")
    if mode not in layersens_modes() and mode not in layersens.MODE_ALIASES:
        return False
    if budget:
        try:
            layersens.parse_bytes(budget)
        except layersens.LayersensError:
            return False
    return True


def method_budget(name: str) -> int | None:
    """The ``max_memory`` in bytes of a ``layersens-<mode>@<size>`` method, else ``None``."""
    _, _, budget = name.partition("@")
    return layersens.parse_bytes(budget) if budget else None
