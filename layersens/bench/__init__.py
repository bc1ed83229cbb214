"""The benchmark harness: layersens against the scalar-gradient loop a competent user writes and against JAX's own
Jacobians, each result verified before it is timed, written up as Markdown, JSON and a plot.

Not imported by ``import layersens``: it needs matplotlib for its plot (the ``bench`` extra) and runs worker
processes. ``layersens bench`` and ``benchmarks/run_lenet.py`` import it.
"""

from ._methods import available_methods
from ._results import BenchmarkReport, CaseResult, MethodResult, Settings
from ._run import run_benchmark
from ._report import write_report

__all__ = ["BenchmarkReport", "CaseResult", "MethodResult", "Settings", "available_methods", "run_benchmark",
           "write_report"]
