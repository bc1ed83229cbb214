"""The package's shape: a light import, plans as values, compiled plans reused and bounded."""

import subprocess
import sys

import jax
import numpy as np
import pytest

import layersens


def test_import_pulls_in_neither_the_benchmark_nor_matplotlib_nor_optax():
    code = (
        "import sys, layersens; print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('matplotlib', 'optax') or m.startswith('layersens.bench')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_benchmark_plot_leaves_matplotlibs_backend_alone():
    code = (
        "import matplotlib; matplotlib.use('svg'); from layersens.bench._plot import report_plot; "
        "import layersens.bench; print(matplotlib.get_backend())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "svg"


@pytest.fixture(scope="module")
def split(tiny_cnn):
    return layersens.split(tiny_cnn, "act")


def test_plan_takes_what_jacobian_takes_and_is_a_documented_value(split):
    x = np.random.default_rng(0).normal(size=(3, 6, 6, 1)).astype(np.float32)
    plans = [layersens.plan(split, example) for example in (x, x[0], jax.ShapeDtypeStruct((6, 6, 1), np.float32), None)]
    assert all(p == plans[0] for p in plans)
    plan = plans[0]
    assert isinstance(plan, layersens.Plan) and plan.layer == "act" and plan.strategy == "auto"
    assert set(plan.methods) == set(split.param_names)
    assert plan.describe() == "fwd-colour" and "fwd-colour" in plan.table()
    with pytest.raises(layersens.InputShapeError, match=r"example has shape \(5, 5\)"):
        layersens.plan(split, np.zeros((5, 5)))


def test_prepared_plans_are_reused_and_bounded(split):
    from layersens.compute import PREPARED_KEPT, kept_plans

    x = np.random.default_rng(1).normal(size=(2, 6, 6, 1)).astype(np.float32)
    first = layersens.jacobian(split, x, mode="fwd")
    again = layersens.jacobian(split, x, mode="fwd")
    assert first.compile_seconds > 0 and again.compile_seconds == 0
    np.testing.assert_array_equal(first.matrix, again.matrix)
    prepared = layersens.prepare(split, x, "fwd")
    np.testing.assert_array_equal(prepared(x).matrix, first.matrix)
    for k in range(PREPARED_KEPT + 3):
        layersens.jacobian(split, x[:1], mode=layersens.Forward(chunk_size=k + 1))
    assert kept_plans(split) == PREPARED_KEPT


def test_every_subpackage_is_installed():
    """A regular (not editable) install copies only the packages pyproject lists: each one must be there."""
    from pathlib import Path

    import tomllib

    root = Path(__file__).resolve().parent.parent
    listed = set(tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    present = {".".join(p.parent.relative_to(root).parts) for p in (root / "layersens").rglob("__init__.py")}
    assert present - listed == set(), f"add to [tool.setuptools] packages: {sorted(present - listed)}"
    assert "layersens_cli" in listed
