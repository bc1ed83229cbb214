"""The one way the benchmark times calls: wall time from a call to its return, on ``time.perf_counter``.

Every method returns host arrays, so a call's return is its result's end. A call's result is released after its
clock stops, so freeing it (unmapping a large array) is not counted, and before the next call, so two results
never coexist. Imports nothing but the standard library: ``benchmarks/_time_jacobian.py`` loads this file by
path to time older checkouts the same way.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def timed(fn: Callable[[], T]) -> tuple[T, float]:
    """``fn()`` and the seconds it took."""
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def time_calls(fn: Callable[[], object], repeats: int, budget_s: float | None = None) -> list[float]:
    """Seconds of each of up to ``repeats`` calls of ``fn()``. With ``budget_s``, no further call is made once
    another of the mean length so far would take the total past ``budget_s`` (the first call is always made)."""
    times: list[float] = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
        del result
        if budget_s is not None and sum(times) * (1 + 1 / len(times)) > budget_s:
            break
    return times
