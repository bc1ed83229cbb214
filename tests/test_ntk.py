"""``layersens.layer_ntk``: the layer's empirical NTK against the dense ``layersens.jacobian`` matrices in float64:
traced, Θ[n, m] = tr(J_n J_mᵀ); untraced, the block J Jᵀ. Both methods (contraction of the dense J, and products
on either side of J). Tolerance: 1e-5 of the largest entry (float32 Jacobians; contractions in float64).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import layersens
from tests.tiny_models import TinyMLP, random_linen_variables

X = np.random.default_rng(11).normal(size=(3, 6, 6, 1)).astype(np.float32)


@pytest.fixture(scope="module")
def tiny(tiny_cnn):
    split = layersens.split(tiny_cnn, "act")
    return split, layersens.jacobian(split, X).matrix.astype(np.float64)


@pytest.fixture(scope="module")
def lenet():
    return layersens.load_model(layersens.examples.LENET_DIGITS)


def close(actual, expected):
    assert actual.shape == expected.shape and actual.dtype == np.float64
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


def traced(j):
    return np.einsum("nip,mip->nm", j, j)


def block(j):
    return np.einsum("nip,mjp->nimj", j, j)


@pytest.mark.parametrize("method", ["contraction", "products"])
def test_traced_and_full_kernels_of_a_tiny_cnn(tiny, method):
    split, j = tiny
    ntk = layersens.layer_ntk(split, X, method=method)
    assert ntk.method == method and ntk.trace_axes and ntk.values.shape == (3, 3)
    close(ntk.values, traced(j))
    np.testing.assert_allclose(ntk.values, ntk.values.T)
    full = layersens.layer_ntk(split, X, trace_axes=False, method=method)
    assert full.values.shape == (3, 108, 3, 108)
    close(full.values, block(j))
    close(full.matrix, j.reshape(3 * 108, -1) @ j.reshape(3 * 108, -1).T)
    # the trace over the activation axes of the full block is the traced kernel
    close(np.einsum("nimi->nm", full.values), ntk.values)


def test_products_by_unit_pullbacks_when_the_layer_is_narrow():
    module = TinyMLP()  # 'pre': 5 units, 4·5 + 5 = 25 parameters: the unit side is shorter
    model = layersens.from_linen(module, random_linen_variables(module, (4,)), (4,))
    split = layersens.split(model, "pre")
    x = np.random.default_rng(2).normal(size=(4, 4)).astype(np.float32)
    j = layersens.jacobian(split, x).matrix.astype(np.float64)
    op = layersens.linearize(split, x)  # one linearization, reused
    ntk = layersens.layer_ntk(op, method="products")
    assert ntk.passes == 5
    close(ntk.values, traced(j))
    close(layersens.layer_ntk(op, trace_axes=False, method="products").values, block(j))


def test_lenet_relu1_and_fc1(lenet):
    x = lenet.example_inputs[:2]
    relu1 = layersens.split(lenet, "relu1")
    j = layersens.jacobian(relu1, x).matrix.astype(np.float64)
    auto = layersens.layer_ntk(relu1, x)
    assert auto.method == "contraction" and auto.passes == 12  # the dense J is small; its plan colours channels
    close(auto.values, traced(j))
    close(layersens.layer_ntk(relu1, x, method="products").values, traced(j))
    fc1 = layersens.split(lenet, "fc1")
    j = layersens.jacobian(fc1, x).matrix.astype(np.float64)
    close(layersens.layer_ntk(fc1, x).values, traced(j))
    full = layersens.layer_ntk(fc1, x[:1], trace_axes=False)  # (N·M)²·P multiply-adds: one example here
    assert full.values.shape == (1, 128, 1, 128)
    close(full.values, block(j[:1]))


def test_the_full_block_is_refused_when_it_cannot_fit(lenet):
    split = layersens.split(lenet, "relu1")
    with pytest.raises(layersens.JacobianTooLargeError, match=r"\(16, 15680, 16, 15680\).*trace_axes=True"):
        layersens.layer_ntk(split, lenet.example_inputs, trace_axes=False)


def test_report_and_storage(tiny, tmp_path):
    split, j = tiny
    ntk = layersens.layer_ntk(split, X)
    text = repr(ntk)
    assert text.startswith("LayerNTK(layer='act'") and len(text) < 300
    report = ntk.to_dict()
    json.dumps(report)
    assert report["format"] == "layersens-ntk/1" and report["shape"] == [3, 3]
    np.testing.assert_allclose(report["values"], ntk.values)
    np.testing.assert_allclose(report["trace"], np.trace(ntk.values))
    path = ntk.save(tmp_path / "ntk")
    with np.load(path) as data:
        np.testing.assert_array_equal(data["values"], ntk.values)
        assert json.loads(bytes(data["metadata"]).decode())["trace_axes"] is True
    full = layersens.layer_ntk(split, X[:2], trace_axes=False).to_dict()
    assert "values" not in full and full["shape"] == [2, 108, 2, 108]
    with pytest.raises(layersens.ModeError, match="products"):
        layersens.layer_ntk(split, X, method="ntvp")


def test_the_compressed_jacobian_gives_the_traced_kernel_where_the_dense_one_is_too_large(tiny, lenet, monkeypatch):
    """A channel-diagonal leaf's block is zero off its diagonal: the inner products of the compressed blocks are
    those of the dense ones. ``auto`` takes that way when the dense J of all examples is over the limit."""
    from layersens.derivatives import _ntk

    split, j = tiny
    close(layersens.layer_ntk(split, X, method="compressed").values, traced(j))
    x = lenet.example_inputs[:2]
    relu2 = layersens.split(lenet, "relu2")
    dense = layersens.layer_ntk(relu2, x, method="contraction")
    monkeypatch.setattr(_ntk, "CONTRACTION_BYTES", 100 * 2**20)  # relu2 × 2 is 306 MB dense, ~20 MB compressed
    picked = layersens.layer_ntk(relu2, x)
    assert picked.method == "compressed"
    close(picked.values, dense.values)
    with pytest.raises(layersens.ModeError, match="traced kernel only"):
        layersens.layer_ntk(split, X, trace_axes=False, method="compressed")
