"""The benchmark harness: layersens against the scalar-gradient loop a competent user writes and against JAX's own
Jacobians, each result verified before it is timed, written up as Markdown, JSON and a plot.

Not imported by ``import layersens``: it needs matplotlib for its plot (the ``bench`` extra) and runs worker
processes. ``layersens bench`` and ``benchmarks/run_lenet.py`` import it. The method names and the formatters
come without JAX (``layersens bench --help`` lists the methods); the rest is imported on first use.
"""

from __future__ import annotations

import importlib

from ._format import percent as format_percent
from ._format import ratio as format_ratio
from ._format import seconds as format_seconds
from ._format import span as format_span
from ._format import speedup as format_speedup
from ._names import available_methods

_LAZY = {
    "BenchmarkReport": "._results",
    "CaseResult": "._results",
    "MethodResult": "._results",
    "Settings": "._results",
    "run_benchmark": "._run",
    "write_report": "._report",
    "check_report_dir": "._report",
}

__all__ = [
    "BenchmarkReport",
    "CaseResult",
    "MethodResult",
    "Settings",
    "available_methods",
    "check_report_dir",
    "format_percent",
    "format_ratio",
    "format_seconds",
    "format_span",
    "format_speedup",
    "run_benchmark",
    "write_report",
]


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name], __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
