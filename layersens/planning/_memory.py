"""Memory budgets: parsing sizes, reading what the machine has, sizing chunks."""

from __future__ import annotations

import math
import os
import re

import numpy as np

from .._errors import BudgetError, ModeError

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1e3,
    "kb": 1e3,
    "kib": 2**10,
    "m": 1e6,
    "mb": 1e6,
    "mib": 2**20,
    "g": 1e9,
    "gb": 1e9,
    "gib": 2**30,
    "t": 1e12,
    "tb": 1e12,
    "tib": 2**40,
}

# Working memory allowed by default when the user gives no budget. On CPU, chunks whose working set stays near
# the caches ran faster than one wide chunk (LeNet fc1, one example: 61 ms at 32 MiB against 90 ms at 512 MiB;
# relu2: 55 against 71 ms; relu1 the same), and the forward pass is shared across chunks anyway. Accelerators
# need wide batches to be busy, and hold more.
DEFAULT_WORKING_MEMORY = {"cpu": 32 * 2**20}
DEFAULT_ACCELERATOR_WORKING_MEMORY = 2**30


def working_memory(max_memory, platform: str) -> int:
    """The working-memory budget in bytes: ``max_memory`` parsed, or the default for ``platform``."""
    if max_memory is not None:
        return parse_bytes(max_memory)
    return DEFAULT_WORKING_MEMORY.get(platform, DEFAULT_ACCELERATOR_WORKING_MEMORY)


def parse_bytes(text, name: str = "max_memory") -> int:
    """``"2GB"``, ``"512MiB"``, ``1e9`` -> bytes."""
    if isinstance(text, (int, float, np.integer, np.floating)):
        value = float(text)
    else:
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([a-zA-Z]*)\s*", str(text))
        if not match or match.group(2).lower() not in _UNITS:
            raise BudgetError(f"{name} is {text!r}; write a size such as '512MB', '2GiB' or a number of bytes.")
        value = float(match.group(1)) * _UNITS[match.group(2).lower()]
    if not math.isfinite(value) or value > 2**62:
        raise BudgetError(f"{name} is {text!r}; write a size such as '512MB' or '2GiB'.")
    if value <= 0:
        raise BudgetError(f"{name} is {text!r}; it must be positive.")
    return int(value)


def available_memory() -> int:
    """Bytes of host memory available now (MemAvailable), or total physical memory where that is unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def chunk_size(num_basis: int, bytes_per_vector: int, budget: int, requested: int | None = None) -> int:
    """How many basis vectors one vectorized call may push through within ``budget`` bytes."""
    if requested is not None:
        if requested < 1:
            raise ModeError(f"chunk_size is {requested}; it must be at least 1.")
        return min(requested, num_basis)
    return balanced_width(num_basis, int(max(1, min(num_basis, budget // max(1, bytes_per_vector)))))


def balanced_width(num_basis: int, most: int) -> int:
    """The narrowest width that needs as few chunks as ``most`` does: 128 vectors at most 109 per chunk are two
    chunks of 64, not 109 + 109 (the last chunk overlaps the one before to keep one compiled width)."""
    chunks = -(-num_basis // max(1, most))
    return -(-num_basis // chunks)
