"""The XLA compile options the tests choose, for the whole suite (``conftest.py`` puts ``FAST_COMPILE`` into
``XLA_FLAGS``) or per program (``fast_jit``; ``jax.jit(..., compiler_options=OPTIMIZED)``, which overrides the
flags). JAX is not imported here: ``conftest.py`` reads these before JAX loads, and the Flax examples module (which
command lines the tests start import) reads them without the suite's own set-up."""

from __future__ import annotations

# XLA's backend optimizations off (LLVM without its expensive passes): a fraction of the compile time, and the
# results agree with an optimized program's far inside the tests' tolerances.
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
# For a test's own heavy reference program while the suite compiles fast: relu1's jacrev, 15,680 pullbacks, runs
# 3.4 s compiled fast and 1.5 s optimized.
OPTIMIZED = {"xla_backend_optimization_level": 3, "xla_llvm_disable_expensive_passes": False}


def as_flags(options: dict) -> str:
    """``options`` as ``XLA_FLAGS`` spells them."""
    return " ".join(f"--{name}={str(value).lower()}" for name, value in options.items())


def fast_jit(fn):
    """``jax.jit(fn)`` compiled with ``FAST_COMPILE``."""
    import jax

    return jax.jit(fn, compiler_options=FAST_COMPILE)
