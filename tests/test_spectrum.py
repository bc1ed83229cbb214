"""``layersens.spectrum``: the top singular triplets of each example's J from products, against ``np.linalg.svd``
of the dense ``layersens.jacobian`` matrix (in float64; for a matrix much wider than tall, of its QR factor: the
same singular values and vectors).

Tolerances (float32 Jacobians): singular values within 1e-5·σ₁ (PROPACK and the products round at float32
precision; measured ≤ 1.5e-6 relative on LeNet); the largest principal angle between the computed and the exact
top-k singular subspaces (left and right) at most 1e-2 rad where the gap σ_k − σ_{k+1} is at least 5 % of σ₁;
ranks from the same values, to 1e-5 relative.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.linalg import subspace_angles

import layersens
from tests.tiny_models import TinyMLP, random_linen_variables

X = np.random.default_rng(5).normal(size=(2, 6, 6, 1)).astype(np.float32)


@pytest.fixture(scope="module")
def tiny(tiny_cnn):
    return layersens.split(tiny_cnn, "act")


@pytest.fixture(scope="module")
def lenet():
    return layersens.load_model(layersens.examples.LENET_DIGITS)


def dense_svd(j: np.ndarray):
    """``np.linalg.svd`` of J in float64 (through Jᵀ = QR when J is much wider than tall)."""
    j = j.astype(np.float64)
    if j.shape[1] > 4 * j.shape[0]:
        q, r = np.linalg.qr(j.T)
        u, s, wt = np.linalg.svd(r.T)
        return u, s, (q @ wt.T).T
    return np.linalg.svd(j, full_matrices=False)


def check_against_dense(spec: layersens.Spectrum, matrix: np.ndarray, example: int = 0):
    k = spec.k
    u, s, vt = dense_svd(matrix[example])
    got = spec.values[example]
    np.testing.assert_allclose(got, s[:k], rtol=0, atol=1e-5 * s[0])
    assert np.all(spec.residuals[example] <= 1e-3 * s[0])
    if k < len(s) and s[k - 1] - s[k] >= 0.05 * s[0]:
        assert subspace_angles(spec.right[example].T.astype(np.float64), vt[:k].T).max() <= 1e-2
        assert subspace_angles(spec.left[example].T.astype(np.float64), u[:, :k]).max() <= 1e-2
    # ranks: their definitions, from the dense values restricted the same way
    if spec.frobenius_exact[example]:
        np.testing.assert_allclose(spec.stable_rank[example], np.sum(s**2) / s[0] ** 2, rtol=1e-5)
    else:  # estimated: within three standard errors
        assert abs(spec.frobenius_sq[example] - np.sum(s**2)) <= 3 * spec.frobenius_sq_stderr[example]
    p = s[:k] ** 2 / np.sum(s[:k] ** 2)
    np.testing.assert_allclose(spec.entropy_rank_top_k[example], np.exp(-np.sum(p * np.log(p))), rtol=1e-5)
    np.testing.assert_allclose(spec.condition_top_k[example], s[0] / s[k - 1], rtol=1e-4)
    return u, s, vt


@pytest.mark.parametrize("method", ["krylov", "dense"])
def test_tiny_model_top_k_matches_the_dense_svd(tiny, method):
    spec = layersens.spectrum(tiny, X, k=4, method=method)
    matrix = layersens.jacobian(tiny, X).matrix
    assert spec.values.shape == (2, 4) and spec.left.shape == (2, 4, 108) and spec.right.shape == (2, 4, 36)
    assert spec.method == ("propack" if method == "krylov" else "dense") or spec.method == "arpack"
    for n in range(2):
        check_against_dense(spec, matrix, n)
    assert np.all(np.diff(spec.values, axis=1) <= 0)


def test_auto_forms_j_when_its_short_side_is_small(tiny):
    assert layersens.spectrum(tiny, X[:1], k=6).method == "dense"  # min(M, P) = 36 <= 6k
    assert layersens.spectrum(tiny, X[:1], k=2).method in ("propack", "arpack")


def test_a_narrow_layer_formed_by_unit_pullbacks():
    module = TinyMLP()  # 'pre': 5 units × 25 parameters: J formed by 5 VJPs
    model = layersens.from_linen(module, random_linen_variables(module, (4,)), (4,))
    split = layersens.split(model, "pre")
    x = np.random.default_rng(3).normal(size=(2, 4)).astype(np.float32)
    spec = layersens.spectrum(split, x, k=3)
    assert spec.method == "dense" and list(spec.passes) == [5, 5]
    matrix = layersens.jacobian(split, x).matrix
    for n in range(2):
        check_against_dense(spec, matrix, n)
    assert spec.position_shares.shape == (2, 3) and spec.channel_shares.shape == (2, 3, 5)


def test_directions_are_mapped_back_to_leaves_channels_and_positions(tiny):
    op = layersens.linearize(tiny, X[:1])
    spec = layersens.spectrum(op, k=3, method="krylov")
    jac = layersens.jacobian(tiny, X[:1])
    _, _, vt = dense_svd(jac.matrix[0])
    for i in range(3):
        d = spec.direction(i)
        shares = dict(d.leaf_shares)
        assert sorted(shares) == sorted(tiny.param_names) and abs(sum(shares.values()) - 1) < 1e-5
        assert list(shares.values()) == sorted(shares.values(), reverse=True)
        for name, (a, b) in jac.column_ranges.items():  # the dense right vector's squared mass per leaf
            np.testing.assert_allclose(shares[name], np.sum(vt[i, a:b] ** 2), atol=1e-4)
        u = spec.left[0, i].reshape(6, 6, 3).astype(np.float64)
        np.testing.assert_allclose(d.channel_shares, (u**2).sum(axis=(0, 1)), rtol=1e-6)
        np.testing.assert_allclose(d.position_shares, (u**2).sum(axis=2), rtol=1e-6)
        assert d.channel_shares.shape == (3,) and d.position_shares.shape == (6, 6)
        assert d.top_channels()[0][1] == d.channel_shares.max() and len(d.top_positions(2)) == 2
        assert len(repr(d)) < 400 and json.dumps(d.to_dict())
    assert spec.leaf_shares.shape == (1, 3, 4) and spec.channel_shares.shape == (1, 3, 3)
    assert spec.position_shares.shape == (1, 3, 6, 6)


def test_lenet_relu1(lenet):
    split = layersens.split(lenet, "relu1")
    x = lenet.example_inputs[1:2]
    spec = layersens.spectrum(split, x)
    check_against_dense(spec, layersens.jacobian(split, x).matrix)
    assert spec.frobenius_exact.all()  # the exact norm costs 12 passes (channel colouring): no probes


def test_lenet_fc1_and_relu2(lenet):
    x = lenet.example_inputs[:1]
    fc1 = layersens.split(lenet, "fc1")  # 128 × 206,928
    spec = layersens.spectrum(fc1, x)
    check_against_dense(spec, layersens.jacobian(fc1, x).matrix)
    d = spec.direction(0)
    assert len(d.leaf_shares) == 10 and d.channel_shares.shape == (128,) and d.position_shares.shape == ()
    relu2 = layersens.split(lenet, "relu2", wrt="bn2/*")  # 6,272 × 64 (the full 6,096 columns: 4 min of SVD)
    spec = layersens.spectrum(relu2, x, k=5)
    check_against_dense(spec, layersens.jacobian(relu2, x).matrix)


def test_ranks_report_and_storage(tiny, tmp_path):
    spec = layersens.spectrum(tiny, X, k=3, method="krylov", tol=1e-6)
    text = repr(spec)
    assert text.startswith("Spectrum(layer='act'") and "stable_rank" in text and len(text) < 1000
    report = spec.to_dict()
    json.dumps(report)
    assert report["format"] == "layersens-spectrum/1" and len(report["examples"]) == 2
    assert report["examples"][0]["values"] == [float(v) for v in spec.values[0]]
    path = spec.save(tmp_path / "act")
    with np.load(path) as data:
        meta = json.loads(bytes(data["metadata"]).decode())
        np.testing.assert_array_equal(data["values"], spec.values)
        np.testing.assert_array_equal(data["right"], spec.right)
    assert meta["format"] == "layersens-spectrum/1" and meta["param_names"] == list(tiny.param_names)
    assert np.all(spec.entropy_rank_top_k <= 3 + 1e-9) and np.all(spec.condition_top_k >= 1)
    assert np.all(spec.stable_rank >= 1 - 1e-9) and np.all(spec.stable_rank_stderr >= 0)


def test_bad_arguments(tiny):
    with pytest.raises(layersens.InputShapeError, match="1 <= k <= 36"):
        layersens.spectrum(tiny, X[:1], k=37)
    with pytest.raises(layersens.ModeError, match="krylov"):
        layersens.spectrum(tiny, X[:1], method="lanczos")
    op = layersens.linearize(tiny, X[:1])
    with pytest.raises(layersens.InputShapeError, match="inputs=None"):
        layersens.spectrum(op, X[:1])


def test_where_propack_does_not_converge_arpack_answers(lenet):
    """PROPACK's restarts fail on LeNet's bn1 at k = 1 and 2 ("did not converge within kmax"); ARPACK then answers,
    and the values still equal the dense SVD's."""
    split = layersens.split(lenet, "bn1")
    x = lenet.example_inputs[:1]
    s = dense_svd(layersens.jacobian(split, x).matrix[0])[1]
    for k in (1, 2):
        spec = layersens.spectrum(split, x, k=k, method="krylov")
        np.testing.assert_allclose(np.asarray(spec.values)[0], s[:k], rtol=1e-5)
