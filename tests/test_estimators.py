"""Estimators of ‖J‖²_F, diag(JᵀJ) and diag(JJᵀ) with stated errors: over 100 seeds the exact value (from the
dense ``layersens.jacobian`` matrix in float64) lies within two standard errors at least 90 % of the time (for the
diagonals, over all entries and seeds; an entry with stderr 0 must match to float32 rounding, 1e-5 relative);
the stopping rule, and the switch to the exact computation exactly where the rule says it costs no more.
"""

from __future__ import annotations

import json

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import pytest

import layersens
from layersens.derivatives._estimate import PILOT, relative, switch_to_exact
from layersens.derivatives._linops import exact_passes
from tests.tiny_models import random_linen_variables

X = np.random.default_rng(7).normal(size=(2, 6, 6, 1)).astype(np.float32)
SEEDS = range(100)


class Mixer(nn.Module):
    """Two dense layers with a centring and a tanh between: every unit of 'mix' depends on every parameter, and
    the centring mixes d1's channels before d2 does (neither colouring nor channel separation of d1)."""

    @nn.compact
    def __call__(self, x):
        h = nn.Dense(48, name="d1")(x)
        h = nn.Dense(48, name="d2")(jnp.tanh(h - h.mean(-1, keepdims=True)))
        self.sow("intermediates", "mix", h)
        return h.sum(-1)


@pytest.fixture(scope="module")
def tiny(tiny_cnn):
    split = layersens.split(tiny_cnn, "act")
    return split, layersens.linearize(split, X[:1]), layersens.jacobian(split, X[:1]).matrix.astype(np.float64)


@pytest.fixture(scope="module")
def mixer():
    module = Mixer()
    model = layersens.from_linen(module, random_linen_variables(module, (8,)), (8,))
    split = layersens.split(model, "mix")
    x = np.random.default_rng(1).normal(size=(1, 8)).astype(np.float32)
    return layersens.linearize(split, x), layersens.jacobian(split, x).matrix.astype(np.float64)


def truth(matrix, quantity):
    sq = np.square(matrix)
    return {"frobenius_sq": sq.sum(axis=(1, 2)), "parameter_diagonal": sq.sum(axis=1), "unit_diagonal": sq.sum(axis=2)}[
        quantity
    ]


ESTIMATORS = {
    "frobenius_sq/hutchinson": (lambda op, **kw: layersens.estimate_frobenius(op, method="hutchinson", **kw)),
    "frobenius_sq/hutch++": (lambda op, **kw: layersens.estimate_frobenius(op, method="hutch++", sketch=4, **kw)),
    "parameter_diagonal": layersens.estimate_parameter_diagonal,
    "unit_diagonal": layersens.estimate_unit_diagonal,
}


@pytest.mark.parametrize("name", list(ESTIMATORS))
def test_the_stated_error_holds_over_100_seeds(tiny, name):
    _, op, matrix = tiny
    quantity = name.split("/")[0]
    true = truth(matrix, quantity)[0].reshape(-1)
    covered, total, rse = 0, 0, []
    for seed in SEEDS:
        est = ESTIMATORS[name](op, rtol=0.1, exact=False, seed=seed)
        assert est.quantity == quantity and not est.exact.any() and est.samples[0] >= PILOT
        value, err = est.value[0].reshape(-1), est.stderr[0].reshape(-1)
        covered += int(np.sum(np.abs(value - true) <= 2 * err + 1e-5 * np.abs(true)))
        total += value.size
        rse.append(est.relative_stderr[0])
    assert covered / total >= 0.9, covered / total
    # the stopping rule: stopped at rtol, or at max_samples
    assert np.all((np.array(rse) <= 0.1) | (est.samples[0] == est.max_samples))


def test_hutch_plus_plus_needs_fewer_probes_when_a_few_directions_dominate(tiny):
    _, op, matrix = tiny
    plain = layersens.estimate_frobenius(op, method="hutchinson", rtol=0.02, exact=False, max_samples=4000)
    sketched = layersens.estimate_frobenius(op, method="hutch++", rtol=0.02, exact=False, max_samples=4000)
    assert sketched.passes[0] < plain.passes[0]
    for est in (plain, sketched):
        assert abs(est.value[0] - truth(matrix, "frobenius_sq")[0]) <= 4 * est.stderr[0]


def test_the_switch_rule():
    # exact costs 100 passes; after 16 probes at relative error 0.2, rtol 0.05 needs 16·16 = 256 probes
    assert switch_to_exact(16, 0.2, 0.05, 1000, 1, 100)  # 240 more probes > 100 exact passes
    assert not switch_to_exact(16, 0.2, 0.05, 1000, 1, 300)
    assert not switch_to_exact(16, 0.2, 0.05, 100, 1, 100)  # capped at max_samples: 84 more < 100
    assert switch_to_exact(16, 0.2, 0.05, 116, 1, 100)  # exactly as many: exact wins the tie
    assert switch_to_exact(16, 0.2, 0.0, 1000, 1, 984) and not switch_to_exact(16, 0.2, 0.0, 1000, 1, 985)
    assert relative(np.zeros(3), np.zeros(3)) == 0 and relative(np.zeros(1), np.ones(1)) == np.inf


def test_exact_when_that_is_cheapest_from_the_start(tiny):
    split, op, matrix = tiny
    assert exact_passes(op) <= PILOT  # colouring: a few passes for conv+bn, fewer than the pilot's probes
    for quantity, f in [
        ("frobenius_sq", layersens.estimate_frobenius),
        ("parameter_diagonal", layersens.estimate_parameter_diagonal),
        ("unit_diagonal", layersens.estimate_unit_diagonal),
    ]:
        est = f(split, X)
        assert est.exact.all() and est.method == "exact" and np.all(est.samples == 0) and np.all(est.stderr == 0)
        exact = truth(layersens.jacobian(split, X).matrix.astype(np.float64), quantity)
        np.testing.assert_allclose(est.value.reshape(2, -1), exact.reshape(2, -1), rtol=1e-5, atol=1e-6)


def test_switch_after_the_pilot_exactly_where_it_costs_no_more(mixer):
    op, matrix = mixer
    cost = exact_passes(op)
    assert PILOT < cost < 200
    # rtol 0.001 cannot be reached: the probes still needed are max_samples - PILOT; exact iff cost <= that
    switched = layersens.estimate_unit_diagonal(op, rtol=1e-3, max_samples=PILOT + cost)
    assert switched.exact.all() and switched.samples[0] == PILOT and switched.passes[0] == PILOT + cost
    np.testing.assert_allclose(switched.value.reshape(-1), truth(matrix, "unit_diagonal")[0], rtol=1e-5)
    kept = layersens.estimate_unit_diagonal(op, rtol=1e-3, max_samples=PILOT + cost - 1)
    assert not kept.exact.any() and kept.samples[0] == PILOT + cost - 1 and kept.relative_stderr[0] > 1e-3
    loose = layersens.estimate_parameter_diagonal(op, rtol=0.5)
    assert not loose.exact.any() and loose.samples[0] == PILOT and loose.relative_stderr[0] <= 0.5
    forced = layersens.estimate_frobenius(op, exact=True)
    assert forced.exact.all() and forced.samples[0] == 0
    np.testing.assert_allclose(forced.value, truth(matrix, "frobenius_sq"), rtol=1e-5)
    zero = layersens.estimate_frobenius(op, rtol=0, max_samples=4 * cost)  # rtol 0: exact where affordable
    assert zero.exact.all()


def test_per_leaf_report_and_storage(tiny, tmp_path):
    split, op, matrix = tiny
    est = layersens.estimate_parameter_diagonal(op, rtol=0.2, exact=False)
    leaves = est.per_leaf()
    assert list(leaves) == list(split.param_names)
    assert leaves["conv/kernel"][0].shape == (1, 3, 3, 1, 3) and leaves["conv/kernel"][1].shape == (1, 3, 3, 1, 3)
    text = repr(est)
    assert text.startswith("Estimate(quantity='parameter_diagonal'") and len(text) < 400
    report = est.to_dict()
    json.dumps(report)
    assert report["samples"] == [int(est.samples[0])] and report["exact"] == [False]
    path = est.save(tmp_path / "diag.npz")
    with np.load(path) as data:
        np.testing.assert_array_equal(data["value"], est.value)
        assert json.loads(bytes(data["metadata"]).decode())["format"] == "layersens-estimate/1"
    unit = layersens.estimate_unit_diagonal(op, rtol=0.2, exact=False)
    assert unit.value.shape == (1, 6, 6, 3)
    with pytest.raises(ValueError, match="parameter_diagonal"):
        unit.per_leaf()


def test_bad_arguments(tiny):
    _, op, _ = tiny
    with pytest.raises(layersens.ModeError, match="rtol"):
        layersens.estimate_frobenius(op, rtol=-1)
    with pytest.raises(layersens.ModeError, match="max_samples"):
        layersens.estimate_unit_diagonal(op, max_samples=0)
    with pytest.raises(layersens.ModeError, match="hutch"):
        layersens.estimate_frobenius(op, method="xtrace")
