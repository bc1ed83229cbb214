"""Summaries without the matrix, against the dense Jacobian (``layersens.jacobian``) and ``np.linalg.svd``: every
number of a ``LayerSummary`` (‖J‖_F, leaf and channel shares, unit norms, top units and parameters, singular
values, stable and entropy ranks, the condition estimate, directions by leaf and channel, the traced NTK), its
``to_dict``, the profile's rows per layer, and each result file read back (``layersens.summaries.read_result``).

Tolerances: J is float32 on both sides and squared in float64 (rtol 1e-5); singular values come from Krylov
products in float32 against an SVD of the same float32 matrix in float64 (rtol 1e-4 of σ₁).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import layersens
from layersens.summaries import read_result
from tests.summary_tiny import INPUT_SHAPE, Net, inputs, variables

RTOL = 1e-5
SVD_RTOL = 1e-4


@pytest.fixture(scope="module")
def tiny():
    return layersens.from_linen(Net(), variables(), INPUT_SHAPE)


@pytest.fixture(scope="module")
def lenet():
    return layersens.load_model(layersens.examples.LENET_DIGITS)


def dense(split, x):
    """The dense reference: J (examples, M, P) in float64, its SVD, and the column ranges of the leaves."""
    jac = layersens.jacobian(split, x)
    j = jac.matrix.astype(np.float64)
    u, s, vt = np.linalg.svd(j, full_matrices=False)
    return jac, j, u, s, vt


def check_summary(summary, split, x, k):
    jac, j, u, s, vt = dense(split, x)
    n = len(x)
    squares = np.square(j)
    whole = squares.sum()
    np.testing.assert_allclose(summary.frobenius, np.sqrt(squares.sum(axis=(1, 2))), rtol=RTOL)
    np.testing.assert_allclose(summary.singular_values, s[:, :k], rtol=SVD_RTOL, atol=SVD_RTOL * float(s[:, 0].max()))
    np.testing.assert_allclose(summary.stable_rank, squares.sum(axis=(1, 2)) / s[:, 0] ** 2, rtol=SVD_RTOL)
    p = s[:, :k] ** 2 / (s[:, :k] ** 2).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(summary.entropy_rank, np.exp(-(p * np.log(p)).sum(axis=1)), rtol=SVD_RTOL)
    np.testing.assert_allclose(summary.condition_top_k, s[:, 0] / s[:, k - 1], rtol=SVD_RTOL)
    columns = squares.sum(axis=1)  # (examples, P)
    shares = summary.leaf_shares()
    for name, (a, b) in jac.column_ranges.items():
        assert shares[name] == pytest.approx(columns[:, a:b].sum() / whole, rel=RTOL)
        shape = jac.param_shapes[jac.param_names.index(name)]
        channels = shape[-1] if len(shape) > 1 else (shape[0] if shape else 1)
        per = columns[:, a:b].sum(axis=0).reshape(-1, channels).sum(axis=0) / whole
        np.testing.assert_allclose(summary.channel_shares(name), per, rtol=RTOL, atol=1e-12)
    units = np.sqrt(squares.sum(axis=2)).reshape((n,) + jac.activation_shape)
    np.testing.assert_allclose(summary.unit_map(), units.mean(axis=0), rtol=RTOL, atol=1e-9)
    unit_totals = np.square(units).sum(axis=0).reshape(-1)
    top = summary.top_units(3)  # (ties in either order)
    np.testing.assert_allclose([v for _, v in top], np.sort(unit_totals)[::-1][:3] / whole, rtol=RTOL)
    np.testing.assert_allclose(
        [unit_totals[np.ravel_multi_index(i, jac.activation_shape)] / whole for i, _ in top],
        [v for _, v in top],
        rtol=RTOL,
    )
    best = summary.top_parameters(1)[0]
    a, _ = jac.column_ranges[best[0]]
    shape = jac.param_shapes[jac.param_names.index(best[0])]
    assert a + np.ravel_multi_index(best[1], shape) == int(np.argmax(columns.sum(axis=0)))
    assert best[2] == pytest.approx(columns.sum(axis=0).max() / whole, rel=RTOL)
    # The top direction by leaf and by channel (σ₁ is well separated in these layers).
    for e in range(n):
        assert s[e, 0] - s[e, 1] > 1e-3 * s[e, 0]
        d = summary.spectrum.direction(0, e)
        v2, u2 = vt[e, 0] ** 2, (u[e, :, 0] ** 2).reshape(jac.activation_shape)
        for name, share in d.leaf_shares:
            lo, hi = jac.column_ranges[name]
            assert share == pytest.approx(v2[lo:hi].sum(), abs=1e-3)
        np.testing.assert_allclose(d.channel_shares, u2.reshape(-1, u2.shape[-1]).sum(axis=0), atol=1e-3)
    if summary.ntk is not None:
        flat = j.reshape(n, -1)
        np.testing.assert_allclose(summary.ntk.values, flat @ flat.T, rtol=RTOL)
    return jac, s


def check_dict(summary):
    data = json.loads(json.dumps(summary.to_dict()))  # JSON-able, numbers kept
    for n, row in enumerate(data["per_example"]):
        assert row["frobenius"] == summary.frobenius[n]
        assert row["singular_values"] == list(summary.singular_values[n])
        assert row["stable_rank"] == summary.stable_rank[n]
        assert row["entropy_rank_top_k"] == summary.entropy_rank[n]
        assert row["condition_top_k"] == summary.condition_top_k[n]
        assert len(row["directions"]) == summary.singular_values.shape[1]
    shares = summary.leaf_shares()
    assert {leaf["name"]: leaf["share"] for leaf in data["leaves"]} == shares
    for leaf in data["leaves"]:
        assert leaf["channel_shares"] == list(summary.channel_shares(leaf["name"]))
    assert [tuple(u["index"]) for u in data["top_units"]] == [i for i, _ in summary.top_units(10)]
    if summary.ntk is not None:
        assert data["ntk"]["values"] == summary.ntk.values.tolist()


def test_lenet_relu1_every_number_against_the_dense_jacobian(lenet):
    split = layersens.split(lenet, "relu1")
    x = lenet.example_inputs[:2]
    summary = layersens.summarize_layer(split, x, k=4, max_memory="64MB")
    assert summary.spectrum.method == "propack"  # J is never formed: 15,680 × 240, k = 4
    check_summary(summary, split, x, 4)
    check_dict(summary)
    assert "LayerSummary(layer='relu1'" in repr(summary) and len(repr(summary)) < 1000


@pytest.mark.parametrize("layer", ["act", "hidden"])
def test_tiny_layers_with_the_ntk_either_way(tiny, layer, monkeypatch):
    split = layersens.split(tiny, layer)
    x = inputs(3)
    k = min(3, split.num_outputs)
    summary = layersens.summarize_layer(split, x, k=k)
    check_summary(summary, split, x, k)
    check_dict(summary)
    # A budget smaller than the dense J of all examples: the NTK from the compressed J or products, the same numbers.
    small = layersens.summarize_layer(split, x, k=k, max_memory=split.num_outputs * split.num_params * 4)
    assert summary.ntk.method == "contraction" and small.ntk.method in ("compressed", "products")
    np.testing.assert_allclose(small.ntk.values, summary.ntk.values, rtol=RTOL)


def test_no_spectrum_no_ntk_and_k_checked(tiny):
    split = layersens.split(tiny, "act")
    bare = layersens.summarize_layer(split, inputs(2), k=0, ntk=False)
    assert bare.spectrum is None and bare.ntk is None and bare.stable_rank is None
    assert bare.to_dict()["per_example"][0].keys() == {"frobenius"}
    for k in (-1, 21, 2.5, True):
        with pytest.raises(layersens.InputShapeError, match="choose 0 to 20 singular values"):
            layersens.summarize_layer(split, inputs(2), k=k)


@pytest.fixture(scope="module")
def profile(tiny):
    return layersens.profile(tiny, inputs(2), k=2)


def test_profile_rows_equal_per_layer_dense_computations(tiny, profile):
    x = inputs(2)
    names = [info.name for info in layersens.list_layers(tiny)]
    assert profile.skipped == (("scaled", layersens.summaries.NO_PARAMETERS),)
    assert profile.layers == tuple(n for n in names if n != "scaled")
    assert [r.depth for r in profile.rows] == [names.index(r.layer) for r in profile.rows]
    for row in profile.rows:
        split = layersens.split(tiny, row.layer)
        jac, j, _, s, _ = dense(split, x)
        squares = np.square(j)
        np.testing.assert_allclose(row.frobenius, np.sqrt(squares.sum(axis=(1, 2))), rtol=RTOL)
        np.testing.assert_allclose(row.singular_values, s[:, :2], rtol=SVD_RTOL, atol=SVD_RTOL * float(s[:, 0].max()))
        np.testing.assert_allclose(row.stable_rank, squares.sum(axis=(1, 2)) / s[:, 0] ** 2, rtol=SVD_RTOL)
        assert row.frobenius_mean == pytest.approx(np.sqrt(squares.sum(axis=(1, 2))).mean(), rel=RTOL)
        expected = {name: squares[:, :, a:b].sum() / squares.sum() for name, (a, b) in jac.column_ranges.items()}
        assert [name for name, _ in row.leaf_shares] == sorted(expected, key=lambda name: -expected[name])
        for name, share in row.leaf_shares:
            assert share == pytest.approx(expected[name], rel=RTOL)
    data = json.loads(json.dumps(profile.to_dict()))
    assert [r["layer"] for r in data["rows"]] == list(profile.layers) and data["skipped"][0]["layer"] == "scaled"
    only = layersens.profile(tiny, x, layers=["head", "act"])
    assert only.layers == ("act", "head") and only.rows[1].frobenius == pytest.approx(profile["head"].frobenius)
    assert "skipped=('scaled',)" in repr(profile)
    with pytest.raises(layersens.UnknownLayerError, match="Did you mean 'head'"):
        layersens.profile(tiny, x, layers=["heads"])
    with pytest.raises(layersens.InputShapeError, match="k >= 1"):
        layersens.profile(tiny, x, k=0)


def test_to_xarray(tiny, profile):
    pytest.importorskip("xarray")
    summary = layersens.summarize_layer(layersens.split(tiny, "act"), inputs(2), k=2)
    ds = summary.to_xarray()
    assert ds["singular_values"].dims == ("example", "singular_index") and ds["ntk"].shape == (2, 2)
    assert ds["unit"].dims == ("example", "height", "width", "channel")
    prof = profile.to_xarray()
    assert prof["frobenius"].dims == ("layer", "example") and list(prof["layer"].values) == list(profile.layers)
    np.testing.assert_allclose(prof["frobenius"].sel(layer="act"), summary.frobenius)
    np.testing.assert_allclose(prof["stable_rank"].sel(layer="act"), summary.stable_rank, rtol=SVD_RTOL)


def test_read_result_reads_every_kind(tiny, tmp_path):
    split = layersens.split(tiny, "hidden")
    x = inputs(2)
    sens = layersens.sensitivity(split, x)
    back = read_result(sens.save(tmp_path / "s.npz"))
    assert isinstance(back, layersens.Sensitivity) and np.array_equal(back.frobenius, sens.frobenius)
    grad = layersens.readout_gradient(split, x, "sum")
    back = read_result(grad.save(tmp_path / "g.npz"))
    assert isinstance(back, layersens.ReadoutDerivative) and np.array_equal(back.gradient, grad.gradient)
    hess = layersens.hessian(layersens.split(tiny, "hidden", wrt="dense/*"), x, "sum")
    back = read_result(hess.save(tmp_path / "h.npz"))
    assert np.array_equal(back.hessian, hess.hessian) and back.param_names == ("dense/kernel", "dense/bias")
    prods = layersens.products(split, x, np.ones(split.num_params, np.float32), np.ones((2, 3), np.float32))
    back = read_result(prods.save(tmp_path / "p.npz"))
    assert isinstance(back, layersens.JacobianProducts) and np.array_equal(back.vjp, prods.vjp)
    jac = layersens.jacobian(split, x)
    assert isinstance(read_result(jac.save(tmp_path / "j.npz")), layersens.LayerJacobian)
    other = read_result(layersens.spectrum(split, x, k=1).save(tmp_path / "sp.npz"))
    assert other.format == "layersens-spectrum/1" and other.arrays["values"].shape == (2, 1)
    np.save(tmp_path / "x.npy", x)
    with pytest.raises(layersens.CheckpointError, match="it is a single .npy array"):
        read_result(tmp_path / "x.npy")
    meta = {
        "format": "layersens-readout-gradient/1",
        "layer": "hidden",
        "readout": "sum",
        "param_names": ["a"],
        "param_shapes": [[3]],
    }
    layersens.results.write_npz(tmp_path / "bad.npz", {"values": np.zeros(2), "gradient": np.zeros((2, 5))}, meta)
    with pytest.raises(layersens.CheckpointError, match="inconsistent metadata .*gradient is float64 \\(2, 5\\)"):
        read_result(tmp_path / "bad.npz")
