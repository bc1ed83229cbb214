"""Leaves whose channel axis is their first: an ``(out, in)`` kernel used as ``x @ W.T`` or ``einsum("oi,bi")``
(PyTorch's layout, the JAX tutorials' ``W @ x``) and an ``OIHW`` convolution kernel. The analysis finds them
(``ChannelStructure.leaf_axis == 0``); every colouring path (column and row colouring, chunked, in blocks beside
channel-last leaves, built on the device or placed on the host, the compressed form, the sensitivity sums, a complex
convention) is checked against ``jax.jacrev`` of the flat function in float64 (rtol 1e-10, atol 1e-12); a store
plans them uncoloured and refuses a plan that colours them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import layersens
from layersens.planning import Block, ColumnColouring, DenseForward, DenseReverse, RowColouring, SeparatedForwardFirst
from tests.conftest import ForcedBlocks, cpu_policy

TOL = dict(rtol=1e-10, atol=1e-12)


@pytest.fixture(autouse=True)
def _x64():
    with jax.enable_x64(True):
        yield


def _torch_mlp(dtype=np.float64):
    """h1 = tanh(x Wᵀ + b), h2 = relu(W2 h1 + V x + c): every kernel laid out (out, in)."""
    rng = np.random.default_rng(0)
    params = {
        "V": rng.normal(size=(5, 4)),
        "W1": rng.normal(size=(6, 4)),
        "W2": rng.normal(size=(5, 6)),
        "b1": rng.normal(size=(6,)),
        "c": rng.normal(size=(5,)),
    }
    params = {k: v.astype(dtype) for k, v in params.items()}

    def apply(p, x):
        h = layersens.capture("h1", jnp.tanh(x @ p["W1"].T + p["b1"]))
        return layersens.capture("h2", jax.nn.relu(jnp.einsum("oi,bi->bo", p["W2"], h) + x @ p["V"].T + p["c"]))

    return layersens.from_function(apply, params, (4,), str(np.dtype(dtype)), name="torch_mlp")


def _oihw_conv():
    """A convolution with a PyTorch-layout kernel (O, I, H, W) on NHWC inputs, then a bias and tanh."""
    rng = np.random.default_rng(1)
    params = {"K": rng.normal(size=(3, 2, 3, 3)), "bias": rng.normal(size=(3,))}

    def apply(p, x):
        y = jax.lax.conv_general_dilated(x, p["K"], (1, 1), "SAME", dimension_numbers=("NHWC", "OIHW", "NHWC"))
        return layersens.capture("conv", jnp.tanh(y + p["bias"])).sum(axis=(1, 2))

    return layersens.from_function(apply, params, (5, 4, 2), "float64", name="oihw")


def _reference(split, xs):
    def flat(params, x):
        return jnp.ravel(split.apply(params, x))

    def one(x):
        jac = jax.jacrev(flat)(split.params, x)
        return np.concatenate([np.asarray(jac[k]).reshape(split.num_outputs, -1) for k in split.param_names], 1)

    return np.stack([one(x) for x in xs])


def _inputs(split, n=3, seed=2):
    return np.random.default_rng(seed).normal(size=(n,) + split.input_shape)


def test_the_analysis_finds_channels_on_a_leafs_first_axis():
    structure = layersens.channel_structure(layersens.split(_torch_mlp(), "h1"))
    assert structure["W1"] == layersens.ChannelStructure("W1", 6, 0, leaf_axis=0)
    assert structure["b1"].leaf_axis == -1 and structure["b1"].channel_last
    h2 = layersens.channel_structure(layersens.split(_torch_mlp(), "h2"))
    assert {n: s.leaf_axis for n, s in h2.items()} == {"V": 0, "W2": 0, "c": -1}  # W1 and b1 mix through h1
    conv = layersens.channel_structure(layersens.split(_oihw_conv(), "conv"))
    assert conv["K"] == layersens.ChannelStructure("K", 3, 2, leaf_axis=0)


def test_a_square_kernel_used_both_ways_is_not_channel_diagonal():
    params = {"W": np.random.default_rng(3).normal(size=(4, 4))}

    def apply(p, x):
        return layersens.capture("out", jnp.tanh(x @ p["W"]) @ p["W"].T)

    split = layersens.split(layersens.from_function(apply, params, (4,), "float64"), "out")
    assert layersens.channel_structure(split) == {}
    xs = _inputs(split)
    np.testing.assert_allclose(layersens.jacobian(split, xs).matrix, _reference(split, xs), **TOL)


@pytest.mark.parametrize("mode", ["auto", "structured", "forward", "reverse", "per-leaf"])
@pytest.mark.parametrize("layer", ["h1", "h2"])
def test_every_strategy_on_an_out_in_mlp(mode, layer):
    split = layersens.split(_torch_mlp(), layer)
    xs = _inputs(split)
    np.testing.assert_allclose(layersens.jacobian(split, xs, mode=mode).matrix, _reference(split, xs), **TOL)


FORCED = {
    # column colouring of the OIHW kernel alone, whole and in chunks of 1 and 4 within-channel indices (18 of them)
    "columns": [Block(("K",), ColumnColouring()), Block(("bias",), DenseForward())],
    "columns-1": [Block(("K",), ColumnColouring(), 1), Block(("bias",), ColumnColouring(), 1)],
    "columns-4": [Block(("K",), ColumnColouring(), 4), Block(("bias",), DenseReverse(), 7)],
    # row colouring of a channel-first and a channel-last leaf in one block (two runs), whole and in chunks
    "rows": [Block(("K", "bias"), RowColouring())],
    "rows-3": [Block(("K", "bias"), RowColouring(), 3)],
}


def _every_sink(model, layer, blocks, monkeypatch, leaf: str):
    """The dense result built on the device and placed on the host, the compressed form and the sensitivity sums
    of ``layer`` under the hand-picked ``blocks``, each against ``jax.jacrev``; returns the compressed form."""
    split = layersens.split(model, layer)
    xs = _inputs(split)
    reference = _reference(split, xs)
    strategy = ForcedBlocks(blocks)
    first = split.param_names.index(leaf)
    start = sum(int(np.prod(s)) for s in split.param_shapes[:first])
    shape = split.param_shapes[first]
    np.testing.assert_allclose(layersens.jacobian(split, xs, mode=strategy).matrix, reference, **TOL)
    squares = np.sum(reference**2, axis=1)  # (examples, P): Σ_i J[i, p]²
    sensitivity = layersens.sensitivity(layersens.split(model, layer), xs, mode=strategy)
    expected = squares[:, start : start + int(np.prod(shape))].reshape((len(xs),) + shape)
    np.testing.assert_allclose(sensitivity.parameter[leaf], expected, **TOL)
    np.testing.assert_allclose(sensitivity.unit.reshape(len(xs), -1), np.sqrt(np.sum(reference**2, axis=2)), **TOL)
    compressed = layersens.compressed_jacobian(layersens.split(model, layer), xs, mode=strategy)
    np.testing.assert_allclose(compressed.to_dense().matrix, reference, **TOL)
    # the zeroed host array and placed nonzeros, example by example
    cpu_policy(monkeypatch, device_dense_max_bytes=0, side_by_side_max_bytes=0)
    np.testing.assert_allclose(
        layersens.jacobian(layersens.split(model, layer), xs, mode=strategy).matrix, reference, **TOL
    )
    return compressed, reference


@pytest.mark.parametrize("name", FORCED)
def test_each_colouring_of_an_oihw_kernel(name, monkeypatch):
    compressed, reference = _every_sink(_oihw_conv(), "conv", FORCED[name], monkeypatch, "K")
    assert compressed.channel_blocks["K"].shape == (3, 5, 4, 3, 18)
    np.testing.assert_allclose(compressed.leaf_columns("K"), reference[:, :, :54], **TOL)


def test_row_colouring_over_alternating_channel_first_and_last_leaves():
    split = layersens.split(_torch_mlp(), "h2")
    xs = _inputs(split)
    for chunk in (None, 1, 2):  # V (first), then W1 and b1 (mixed, reverse), W2 (first), c (last)
        strategy = ForcedBlocks([Block(("V", "W2", "c"), RowColouring(), chunk), Block(("W1", "b1"), DenseReverse())])
        result = layersens.jacobian(split, xs, mode=strategy)
        assert result.mode.startswith("rev-colour[V+W2+c]")
        np.testing.assert_allclose(result.matrix, _reference(split, xs), **TOL)
    compressed = layersens.compressed_jacobian(split, xs, mode=strategy)
    np.testing.assert_allclose(compressed.to_dense().matrix, _reference(split, xs), **TOL)


def test_a_complex_out_in_kernel_in_the_complex_convention():
    rng = np.random.default_rng(4)
    params = {"W": (rng.normal(size=(3, 4)) + 1j * rng.normal(size=(3, 4))).astype(np.complex128)}

    def apply(p, x):
        return layersens.capture("out", jnp.sin(x.astype(jnp.complex128) @ p["W"].T))

    model = layersens.from_function(apply, params, (4,), "float64")
    split = layersens.split(model, "out", complex_mode="complex")
    xs = _inputs(split)
    dense = layersens.jacobian(split, xs)
    compressed = layersens.compressed_jacobian(split, xs, mode=layersens.Structured())
    assert set(compressed.channel_blocks) == {"W", "conj(W)"} and compressed.structure["W"].leaf_axis == 0
    np.testing.assert_allclose(compressed.to_dense().matrix, dense.matrix, **TOL)
    holomorphic = jax.jacrev(lambda w, x: apply({"W": w}, x[None])[0], holomorphic=True)
    for n, x in enumerate(xs):
        expected = np.asarray(holomorphic(params["W"], x)).reshape(3, 12)
        np.testing.assert_allclose(dense.matrix[n, :, :12], expected, **TOL)


@pytest.mark.parametrize("compressed", [False, True])
def test_a_store_plans_channel_first_leaves_uncoloured(tmp_path, compressed):
    split = layersens.split(_oihw_conv(), "conv")
    xs = _inputs(split, n=2)
    stored = layersens.stream_jacobian(
        split, xs, tmp_path / "j.zarr", compressed=compressed, mode=layersens.Structured()
    )
    assert "fwd-colour[K]" not in stored.mode and "rev-colour[K" not in stored.mode
    np.testing.assert_allclose(stored.load().matrix, _reference(split, xs), **TOL)


def test_a_store_refuses_a_plan_that_colours_a_channel_first_leaf(tmp_path):
    from layersens.compute import StoreSink
    from layersens.compute._jacobian import _run

    split = layersens.split(_oihw_conv(), "conv")
    xs = _inputs(split, n=1)
    with pytest.raises(ValueError, match=r"a store takes colouring of channel-last leaves only; .*\['K'\]"):
        _run(split, xs, StoreSink(tmp_path / "j.zarr"), ForcedBlocks(FORCED["columns"]), None, None, None)
    assert not (tmp_path / "j.zarr").exists()
    split = layersens.split(_two_oihw_convs(), "out")
    with pytest.raises(ValueError, match=r"a store takes colouring of channel-last leaves only; .*\['K1'\]"):
        _run(
            split,
            _inputs(split, n=1),
            StoreSink(tmp_path / "j.zarr"),
            ForcedBlocks(SEPARATED_FIRST["whole"]),
            *[None] * 3,
        )
    assert not (tmp_path / "j.zarr").exists()
    # stream_jacobian with a strategy it cannot rebuild without channel_first: the same refusal, no traceback
    with pytest.raises(ValueError, match=r"plan with channel_first=False \(Auto, Structured\) or another"):
        layersens.stream_jacobian(
            split, _inputs(split, n=1), tmp_path / "j.zarr", mode=ForcedBlocks(SEPARATED_FIRST["whole"])
        )
    assert not (tmp_path / "j.zarr").exists()


def test_a_store_plans_a_first_axis_uncarried(tmp_path):
    split = layersens.split(_two_oihw_convs(), "out")
    xs = _inputs(split, n=2)
    stored = layersens.stream_jacobian(split, xs, tmp_path / "j.zarr", mode=layersens.Auto())
    assert "separated-first" not in stored.mode
    np.testing.assert_allclose(stored.load().matrix, _reference(split, xs), **TOL)


def _two_oihw_convs():
    """conv(K1) + b1 → tanh → conv(K2) → tanh: K1's output features are K2's input features (mixed there)."""
    rng = np.random.default_rng(5)
    params = {"K1": rng.normal(size=(3, 2, 3, 3)), "b1": rng.normal(size=(3,)), "K2": rng.normal(size=(4, 3, 3, 3))}

    def apply(p, x):
        def conv(h, k):
            return jax.lax.conv_general_dilated(h, k, (1, 1), "SAME", dimension_numbers=("NHWC", "OIHW", "NHWC"))

        return layersens.capture("out", jnp.tanh(conv(jnp.tanh(conv(x, p["K1"]) + p["b1"]), p["K2"])))

    return layersens.from_function(apply, params, (6, 6, 2), "float64", name="two_oihw")


SEPARATED_FIRST = {  # K1: C = 3 output features, W = 18; chunks of whole channels, 12 leaving a partial last one
    "whole": [Block(("K1",), SeparatedForwardFirst()), Block(("b1", "K2"), DenseForward())],
    "chunks-3": [Block(("K1",), SeparatedForwardFirst(), 3), Block(("b1", "K2"), DenseReverse())],
    "chunks-12": [
        Block(("K1",), SeparatedForwardFirst(), 12),
        Block(("b1",), DenseForward()),
        Block(("K2",), ColumnColouring(), 2),
    ],
}


def test_a_first_axis_carried_apart_through_the_next_conv():
    from layersens.analysis import analyze

    split = layersens.split(_two_oihw_convs(), "out")
    separation = analyze(split).separation["K1"]
    assert (separation.leaf_axis, separation.channels) == (0, 3)  # its last axis (kw, 3) could not be mixed
    assert "fwd-separated-first[K1]" in layersens.plan(split, _inputs(split), layersens.Auto()).describe()
    # through a contraction instead (an (out, in) kernel into the next dense layer) the first axis is not taken:
    # measured slower than the shared reverse pass (analysis._separation.FIRST_AXIS_FACTOR's comment)
    mlp = analyze(layersens.split(_torch_mlp(), "h2")).separation
    assert mlp["W1"].leaf_axis == -1
    assert (
        "separated-first" not in layersens.plan(split, _inputs(split), layersens.Auto(channel_first=False)).describe()
    )


@pytest.mark.parametrize("name", SEPARATED_FIRST)
def test_each_chunking_of_a_first_axis_carried_apart(name, monkeypatch):
    assert ForcedBlocks(SEPARATED_FIRST[name]).blocks(None)[0].method.name == "fwd-separated-first"
    _every_sink(_two_oihw_convs(), "out", SEPARATED_FIRST[name], monkeypatch, "K1")


def test_without_channel_first_no_candidate_colours_such_a_leaf(monkeypatch):
    """``Auto(channel_first=False)`` (what a store plans with): neither the plan nor a small layer's trial
    candidates (the plan without separation among them) colour a leaf whose channel axis is its first."""
    from layersens.analysis import analyze
    from layersens.compute._side_by_side import candidates

    monkeypatch.setenv("LAYERSENS_TRIAL", "1")  # conftest turns trials off for the rest of the suite
    split = layersens.split(_two_oihw_convs(), "out")
    xs = _inputs(split, n=2)
    analysis = analyze(split)
    assert analysis.structure["K2"].leaf_axis == 0
    for channel_first in (True, False):
        planned = layersens.plan(split, xs, layersens.Auto(channel_first=channel_first))
        assert "fwd-separated" in planned.describe()  # b1 is carried apart to the mix: the trial races it unseparated
        found = candidates(split, planned, analysis.structure, analysis.limits)
        assert found is not None and len(found.programs) >= 2
        coloured = [name for name in found.programs if "K2" in name.split("colour[")[-1]]
        assert bool(coloured) == channel_first, list(found.programs)
        result = layersens.jacobian(split, xs, mode=layersens.Auto(channel_first=channel_first))
        assert ("colour[K2" in result.mode) <= channel_first
        np.testing.assert_allclose(result.matrix, _reference(split, xs), **TOL)
