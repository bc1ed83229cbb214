"""What a benchmark produces: frozen records of its settings, each method's outcome on each case, and the run.

They hold numbers only; :mod:`layersens.bench._report` turns them into words, tables and a plot.
"""

from __future__ import annotations

import dataclasses

from ._env import Bandwidth, Environment
from ._worker import PeakMemory

# A dense JAX method whose compiled program needs more than this fraction of available memory is skipped
# rather than run into the out-of-memory killer (jax.jacfwd materializes the whole identity basis).
MEMORY_FRACTION = 0.6


@dataclasses.dataclass(frozen=True)
class Settings:
    """How the benchmark was run: what the report's numbers mean depends on these."""

    repeats: int
    loop_budget_s: float
    loop_sample: int  # gradients timed to estimate (and, beyond the budget, extrapolate) loop-jit
    nojit_sample: int  # gradients timed for loop-nojit, always extrapolated beyond them
    seed: int
    rtol: float
    atol: float
    methods: tuple[str, ...]
    method_budget_s: float | None = None  # caps the timed runs of any other method (None: always ``repeats``)
    run_limit_s: float | None = None  # compile + one run, in its own process, beyond this: skipped (None: no limit)
    memory_fraction: float = MEMORY_FRACTION


@dataclasses.dataclass(frozen=True)
class MethodResult:
    """One method on one case. ``status`` is ``"ok"`` (verified, then timed), ``"failed"`` (raised, or its result
    differs from the reference: not timed) or ``"skipped"`` (would not fit in memory, or its first run, in a
    process of its own, passed the run limit); ``reason`` says why.

    Times are seconds for all examples. ``steady_seconds`` is the median of the timed runs, or for an
    extrapolated loop the sample's median scaled to every gradient. For layersens methods it is the median wall
    time of whole calls after the first (which plans and compiles, and reports that as ``compile_seconds``);
    ``compute_seconds`` is the median of what those calls report as ``LayerJacobian.seconds`` (the call less
    input checks and the lookup of the cached plan).
    """

    name: str
    status: str
    reason: str = ""
    max_abs_error: float | None = None
    checked_entries: int = 0
    compile_seconds: float | None = None
    steady_seconds: float | None = None
    runs_seconds: tuple[float, ...] = ()
    compute_seconds: float | None = None
    extrapolated: bool = False
    sampled_gradients: int | None = None
    total_gradients: int | None = None
    timing: str = ""
    working_bytes: int | None = None
    result_bytes: int | None = None  # bytes of what the method returns, where that is not the dense matrix
    memory: PeakMemory | None = None
    speedup_vs_loop: float | None = None
    speedup_vs_best_jax: float | None = None
    bytes_per_second: float | None = None
    write_fraction: float | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclasses.dataclass(frozen=True)
class CaseResult:
    """Every method on one layer and number of examples; ``summary`` says in words what the numbers show."""

    layer: str
    num_examples: int
    num_outputs: int
    num_params: int
    num_leaves: int
    jacobian_bytes: int
    reference: str
    methods: tuple[MethodResult, ...]
    summary: str = ""

    def method(self, name: str) -> MethodResult | None:
        return next((m for m in self.methods if m.name == name), None)


@dataclasses.dataclass(frozen=True)
class BenchmarkReport:
    """One benchmark run: the model, how it was run, where, the machine's write bandwidth, every case, and a
    paragraph across cases. ``files`` lists what :func:`write_report` wrote, when ``out_dir`` was given."""

    model_dir: str
    model_name: str
    framework: str
    eval_mode: str
    created: str
    settings: Settings
    environment: Environment
    bandwidth: Bandwidth
    cases: tuple[CaseResult, ...]
    overview: str = ""
    files: tuple[str, ...] = ()
