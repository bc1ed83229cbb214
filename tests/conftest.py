import os
import shutil
import tempfile

from tests.compile_options import FAST_COMPILE, as_flags

# The command lines the tests start inherit this environment, and importing JAX here would set its own default
# (1) first: set the command line's own (XLA's C++ log lines off; see cli/main.py) before it does.
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
# XLA's fast-compile options (LLVM without its expensive passes) for every program the suite compiles, in the test
# processes and the command lines they start: compiling is most of the suite's time, and what the tests check is
# layersens's arithmetic against independent computations, not XLA's optimizer (measured: 20 % less time for
# test_zoo, test_jacobian and test_strategies). `LAYERSENS_TEST_XLA=default python -m pytest` compiles as users do;
# tests/test_jax_release.py checks the installed JAX with XLA's defaults either way.
FAST_XLA_FLAGS = as_flags(FAST_COMPILE)
if os.environ.get("LAYERSENS_TEST_XLA", "fast") == "fast" and FAST_XLA_FLAGS not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {FAST_XLA_FLAGS}".strip()
# A test's own heavy reference may be compiled optimized: jax.jit(..., compiler_options=compile_options.OPTIMIZED).

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from hypothesis import settings  # noqa: E402

# Small layers' timed trials (extra compilations per plan) are off, except in the tests of the trial itself
# (tests/test_side_by_side.py, tests/test_zoo.py::test_every_side_by_side_candidate), which turn them on.
os.environ["LAYERSENS_TRIAL"] = "0"
jax.config.update("jax_platforms", "cpu")
jax.config.update("jax_enable_x64", True)  # float64 checks; models still default to float32

import layersens  # noqa: E402
from layersens.examples import LENET_DIGITS, LENET_DIGITS_NNX  # noqa: E402

# Property tests: a fast profile by default (CI), a thorough one by `LAYERSENS_HYPOTHESIS=thorough python -m pytest`.
settings.register_profile("fast", max_examples=5)
settings.register_profile("thorough", max_examples=200)
settings.load_profile(os.environ.get("LAYERSENS_HYPOTHESIS", "fast"))


def pytest_configure(config):
    """One compilation cache for the run, in a fresh directory shared by the test processes (pytest-xdist's workers
    inherit it from the process that starts them) and the command lines they run: the same programs (the shipped
    LeNet's layers above all) are compiled once per run instead of once per process. tests/test_scale.py checks the
    cache itself with directories of its own."""
    if not hasattr(config, "workerinput"):  # the process that starts the workers, or the only one
        os.environ["LAYERSENS_CACHE_DIR"] = config._layersens_cache = tempfile.mkdtemp(prefix="layersens-tests-")
    import layersens

    layersens.use_compile_cache()


def pytest_unconfigure(config):
    directory = getattr(config, "_layersens_cache", None)
    if directory is not None:
        shutil.rmtree(directory, ignore_errors=True)


# Tolerances per dtype for comparisons against an independent computation of the same Jacobian.
TOL = {np.float32: dict(rtol=2e-5, atol=2e-5), np.float64: dict(rtol=1e-10, atol=1e-12)}


class ForcedBlocks(layersens.Structured):
    """A strategy with hand-picked blocks, to reach kernel paths the cost model rarely picks."""

    def __init__(self, blocks):
        object.__setattr__(self, "chosen", tuple(blocks))

    def blocks(self, split):
        return self.chosen

    def __hash__(self):
        return hash(self.chosen)


def cpu_policy(monkeypatch, policy=None, **changes):
    """Runs the rest of a test under another CPU execution policy (``layersens.compute.POLICIES``): ``policy``
    (default: the CPU one) with ``changes``."""
    import dataclasses

    from layersens.compute import POLICIES

    monkeypatch.setitem(POLICIES, "cpu", dataclasses.replace(policy or POLICIES["cpu"], **changes))


@pytest.fixture(scope="session")
def lenet_linen():
    import layersens

    return layersens.load_model(LENET_DIGITS)


@pytest.fixture(scope="session")
def lenet_nnx():
    import layersens

    return layersens.load_model(LENET_DIGITS_NNX)


@pytest.fixture(scope="session")
def tiny_cnn():
    """tests.tiny_models.TinyCNN with random weights on 6×6×1 inputs, in evaluation mode."""
    import layersens
    from tests.tiny_models import TinyCNN, random_linen_variables

    module = TinyCNN()
    return layersens.from_linen(
        module, random_linen_variables(module, (6, 6, 1)), (6, 6, 1), call_kwargs={"train": False}
    )
