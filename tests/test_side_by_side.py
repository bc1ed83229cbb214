"""Small layers: examples side by side in one program, chosen by a timed trial (``compute._side_by_side``).

The candidates themselves are checked against hand-written references on the whole zoo
(``tests/test_zoo.py::test_every_side_by_side_candidate``); here, the grouping, the padding of the last group, what
the result says about the trial, and that ``Auto(trial=False)`` keeps the plan.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import layersens
from layersens.compute import _side_by_side
from tests.conftest import TOL, cpu_policy


def reference(split, x):
    """jax.jacrev of the flat function, per example, columns in the split's order."""

    def one(xi):
        jac = jax.jacrev(lambda p: jnp.ravel(split.apply(p, xi)))(split.params)
        return np.concatenate([np.asarray(jac[k]).reshape(split.num_outputs, -1) for k in split.param_names], 1)

    return np.stack([one(xi) for xi in x])


@pytest.fixture(autouse=True)
def trials_on(monkeypatch):
    monkeypatch.setenv("LAYERSENS_TRIAL", "1")  # conftest turns them off for the rest of the suite


@pytest.fixture(scope="module")
def split(tiny_cnn):
    return layersens.split(tiny_cnn, "act")


X = np.random.default_rng(3).normal(size=(5, 6, 6, 1)).astype(np.float32)


def test_the_trial_is_reported_and_its_choice_is_the_mode(split):
    jac = layersens.jacobian(split, X)
    np.testing.assert_allclose(jac.matrix, reference(split, X), **TOL[np.float32])
    (note,) = [n for n in jac.notes if n.startswith("timed trial")]
    assert note.startswith("timed trial for 5 example(s) side by side chose ")
    chosen = note.split(" chose ")[1].split(" ")[0]
    assert chosen in {"plan", "rev", "fwd"} and "ms" in note
    plan = layersens.plan(split, X)
    assert jac.mode == (plan.describe() if chosen == "plan" else chosen)
    again = layersens.jacobian(split, X)  # the choice is kept: no second trial, no note
    assert not any(n.startswith("timed trial") for n in again.notes) and again.mode == jac.mode
    assert again.compile_seconds == 0.0


def test_without_a_trial_the_plan_computes(split):
    jac = layersens.jacobian(split, X, mode=layersens.Auto(trial=False))
    assert jac.mode == layersens.plan(split, X).describe()
    assert not any(n.startswith("timed trial") for n in jac.notes)
    np.testing.assert_allclose(jac.matrix, reference(split, X), **TOL[np.float32])


@pytest.mark.parametrize("in_flight", [1, 2, 3])
def test_groups_and_the_topped_up_last_group(split, monkeypatch, in_flight):
    """Groups of 2 (2 + 2 + 1, topped up), handed back in order however many are dispatched ahead (an
    accelerator's policy keeps two in flight)."""
    per_example = split.num_outputs * split.num_params * 4
    cpu_policy(monkeypatch, group_max_bytes=2 * per_example, in_flight=in_flight)
    calls = []
    jac = layersens.jacobian(
        split, X, mode=layersens.Auto(trial=False, chunk_size=10**6), progress=lambda d, t: calls.append((d, t))
    )
    assert calls == [(1, 3), (2, 3), (3, 3)]
    np.testing.assert_allclose(jac.matrix, reference(split, X), **TOL[np.float32])
    np.testing.assert_allclose(
        jac.activation, np.stack([split.evaluate(split.params, xi) for xi in X]), **TOL[np.float32]
    )
    assert not jac.matrix.flags.writeable


def test_large_layers_keep_the_loop_over_examples(split, monkeypatch):
    cpu_policy(monkeypatch, side_by_side_max_bytes=0)
    jac = layersens.jacobian(split, X, mode=layersens.Auto(chunk_size=3))
    assert not any(n.startswith("timed trial") for n in jac.notes)
    np.testing.assert_allclose(jac.matrix, reference(split, X), **TOL[np.float32])


def test_the_chosen_candidate_takes_the_groups_its_own_memory_allows(split, monkeypatch):
    """The trial runs on groups the largest candidate fits; the one chosen then computes in groups sized by its own
    working memory (fewer programs to dispatch, no copies into a zeroed result)."""
    from layersens.compute import _prepare

    prepared = layersens.prepare(split, X)
    working = prepared.whole.working
    if len(set(working.values())) < 2:
        pytest.skip("the candidates' working memories are equal")
    smallest, largest = min(working, key=working.get), max(working.values())
    real = _prepare.compile_side_by_side

    def choose_smallest(split_, programs, params, xs, device):
        # the trial's timing decides between near-equal programs at random: here it always picks the smallest
        side = real(split_, {smallest: programs[smallest]}, params, xs, device)
        trial = _side_by_side.Trial(len(xs), {name: 1.0 for name in programs}, smallest)
        return side if len(programs) == 1 else _side_by_side.SideBySide(len(xs), smallest, side.run, 0.0, trial)

    monkeypatch.setattr(_prepare, "compile_side_by_side", choose_smallest)
    prepared = layersens.prepare(split, X, max_memory=2 * largest)  # the largest candidate: 2 examples at once
    assert prepared.whole.working == working
    assert prepared.whole.group_size(split, 5) == 2  # the trial's groups: 2 + 2 + 1
    wider = prepared.whole.group_size(split, 5, smallest)
    assert wider > 2
    calls = []
    jac = prepared.run(X, progress=lambda d, t: calls.append((d, t)))
    assert calls[-1] == (-(-5 // wider),) * 2
    assert any(n.startswith(f"timed trial for 2 example(s) side by side chose {smallest}") for n in jac.notes)
    assert f"{smallest} then computed {wider} example(s) at a time (its own working memory)" in jac.notes
    np.testing.assert_allclose(jac.matrix, reference(split, X), **TOL[np.float32])
    assert set(prepared._side) == {(2, None), (wider, smallest)}


def test_a_budget_given_bounds_the_groups(split):
    prepared = layersens.prepare(split, X, max_memory=10**9)
    small = max(prepared.whole.working.values())
    bounded = layersens.prepare(split, X, max_memory=small)
    assert bounded.whole.cap == small and bounded.whole.group_size(split, 5) == 1


def test_the_accelerator_policy_on_cpu(monkeypatch):
    """``compute.ACCELERATOR`` (examples side by side up to far larger layers, every result assembled on the device,
    two groups in flight) computes what the CPU policy computes, dense and compressed, on three layers of a tiny
    CNN: the paths a GPU takes, checked where the suite runs."""
    from layersens.compute import _platform
    from tests.tiny_models import TinyCNN, random_linen_variables

    module = TinyCNN()
    model = layersens.from_linen(
        module, random_linen_variables(module, (6, 6, 1)), (6, 6, 1), call_kwargs={"train": False}
    )
    xs = np.random.default_rng(7).normal(size=(5, 6, 6, 1)).astype(np.float32)
    layers = ["act", "res", "output"]  # coloured (fwd-colour/rev-colour), mixed after a residual, a readout
    on_cpu = {name: layersens.jacobian(layersens.split(model, name), xs, mode="structured") for name in layers}
    cpu_policy(monkeypatch, _platform.ACCELERATOR, group_max_bytes=3 * 2**10)  # several groups on every layer
    for name in layers:
        split = layersens.split(model, name)
        assert _side_by_side.fits(split, _platform.execution_policy("cpu"))
        dense = layersens.jacobian(split, xs, mode="structured")
        np.testing.assert_allclose(dense.matrix, on_cpu[name].matrix, **TOL[np.float32], err_msg=name)
        np.testing.assert_allclose(dense.activation, on_cpu[name].activation, **TOL[np.float32], err_msg=name)
        compressed = layersens.compressed_jacobian(split, xs)
        np.testing.assert_allclose(compressed.to_dense().matrix, on_cpu[name].matrix, **TOL[np.float32])
    assert _platform.execution_policy("gpu") is _platform.ACCELERATOR
    assert _platform.execution_policy("tpu") is _platform.ACCELERATOR
