"""What a benchmark ran on: devices, versions, thread settings, and this machine's memory-write bandwidth.

The bandwidth is measured in the same run as the methods because a dense Jacobian is mostly written, not
computed: bytes produced per second against the bandwidth of plain writes says how close a method is to the
floor that no method computing the dense matrix can beat.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import statistics
from importlib import metadata

import numpy as np

from ._timing import time_calls

THREAD_VARIABLES = (
    "XLA_FLAGS",
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "JAX_PLATFORMS",
    "JAX_ENABLE_X64",
)
LIBRARIES = ("jax", "jaxlib", "flax", "numpy", "layersens")
DEFAULT_BANDWIDTH_BYTES = 512 * 2**20


@dataclasses.dataclass(frozen=True)
class Environment:
    """The machine and software a benchmark ran on; ``load_average`` is read at the start (the machine may be
    shared)."""

    devices: tuple[str, ...]
    default_backend: str
    versions: tuple[tuple[str, str], ...]
    python: str
    platform: str
    cpu_model: str
    cpu_count: int | None
    usable_cpus: int | None
    thread_settings: tuple[tuple[str, str | None], ...]
    load_average: tuple[float, float, float] | None
    available_memory_bytes: int


@dataclasses.dataclass(frozen=True)
class Bandwidth:
    """Host memory-write bandwidth in bytes per second, medians over ``repeats`` passes over one buffer.

    ``fill``: ``buf.fill(1.0)`` over a buffer already faulted in (the write floor for a result written into
    memory already owned); ``copy``: ``np.copyto`` between two such buffers (bytes written per second; it also
    reads as many); ``first_touch``: filling a fresh ``np.empty`` (page faults included), which is what a
    freshly allocated result costs.
    """

    buffer_bytes: int
    repeats: int
    fill: float
    copy: float
    first_touch: float


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def environment() -> Environment:
    """Reads devices, versions and settings; initializes JAX's backend if it was not yet."""
    import jax

    from layersens import available_memory

    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = None
    load: tuple[float, float, float] | None
    try:
        one, five, fifteen = os.getloadavg()
        load = (round(one, 2), round(five, 2), round(fifteen, 2))
    except OSError:
        load = None
    return Environment(
        devices=tuple(f"{d.platform}:{d.id} ({d.device_kind})" for d in jax.devices()),
        default_backend=jax.default_backend(),
        versions=tuple((name, _version(name)) for name in LIBRARIES),
        python=platform.python_version(),
        platform=platform.platform(),
        cpu_model=_cpu_model(),
        cpu_count=os.cpu_count(),
        usable_cpus=usable,
        thread_settings=tuple((v, os.environ.get(v)) for v in THREAD_VARIABLES),
        load_average=load,
        available_memory_bytes=int(available_memory()),
    )


def _median_rate(nbytes: int, run, repeats: int) -> float:
    return nbytes / statistics.median(time_calls(run, repeats))


def measure_bandwidth(nbytes: int = DEFAULT_BANDWIDTH_BYTES, repeats: int = 5) -> Bandwidth:
    """Write bandwidth over ``nbytes`` of float32 (default 512 MiB, far beyond any cache). Cost: about
    ``3 · repeats`` passes over the buffer and ``2 · nbytes`` of memory while it runs."""
    count = max(1, nbytes // 4)
    nbytes = count * 4
    buf = np.empty(count, np.float32)
    buf.fill(0.0)  # fault every page in before timing
    src = np.ones(count, np.float32)
    fill = _median_rate(nbytes, lambda: buf.fill(1.0), repeats)
    copy = _median_rate(nbytes, lambda: np.copyto(buf, src), repeats)
    src = np.empty(0, np.float32)  # frees it before first touch is measured (the lambdas above are done with it)

    def first_touch():
        fresh = np.empty(count, np.float32)  # large allocations are fresh pages from the kernel each time
        fresh.fill(1.0)

    touch = _median_rate(nbytes, first_touch, repeats)
    return Bandwidth(buffer_bytes=nbytes, repeats=repeats, fill=fill, copy=copy, first_touch=touch)
