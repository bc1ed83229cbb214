"""Sensitivity (diag(JᵀJ), per-unit norms, ‖J‖_F) accumulated from chunks, against the same quantities computed
from the dense ``layersens.jacobian`` matrix in float64: every strategy and layout, chunk sizes that do not divide
the basis, wrt="input" and wrt_layer, the zoo's scan and attention, storage, and no size check.

Tolerances: float32 (the chunk values squared in float64 on both sides; only the summation order differs):
rtol=1e-5 and atol 1e-6 of the largest value; float64: rtol=1e-10, atol 1e-12 of the largest value.
"""

from __future__ import annotations

import numpy as np
import pytest

import layersens
from layersens.compute import Layout, SensitivitySink
from layersens.results import Entry, load_sensitivity
from tests.tiny_models import ChannelFirst, TinyCNN, random_linen_variables

TOL = {np.float32: (1e-5, 1e-6), np.float64: (1e-10, 1e-12)}
MODES = {
    "auto": layersens.Auto(),
    "fwd3": layersens.Forward(chunk_size=3),
    "rev5": layersens.Reverse(chunk_size=5),
    "structured": layersens.Structured(),
    "per-leaf": layersens.PerLeaf(),
}


@pytest.fixture(scope="module")
def tiny():
    module = TinyCNN()
    return layersens.from_linen(
        module, random_linen_variables(module, (6, 6, 1)), (6, 6, 1), call_kwargs={"train": False}
    )


@pytest.fixture(scope="module")
def lenet():
    return layersens.load_model(layersens.examples.LENET_DIGITS)


X = np.random.default_rng(3).normal(size=(2, 6, 6, 1))
X32 = X.astype(np.float32)


class Recording(SensitivitySink):
    """The sensitivity sink, remembering which layouts it was given."""

    def begin(self, job):
        super().begin(job)
        self.layouts = set()

    def put(self, block):
        self.layouts.add(block.layout)
        super().put(block)


def reference(jac: layersens.LayerJacobian) -> dict:
    squares = np.square(jac.matrix.astype(np.float64))
    n = jac.num_examples
    columns = squares.sum(axis=1)
    parameter = {
        name: columns[:, a:b].reshape((n,) + shape)
        for (name, (a, b)), shape in zip(jac.column_ranges.items(), jac.param_shapes)
    }
    return {
        "parameter": parameter,
        "unit": np.sqrt(squares.sum(axis=2)).reshape((n,) + jac.activation_shape),
        "frobenius": np.sqrt(squares.sum(axis=(1, 2))),
    }


def close(actual, expected, dtype):
    rtol, scale = TOL[np.dtype(dtype).type]
    assert actual.shape == expected.shape and actual.dtype == np.float64
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=scale * max(1.0, float(np.max(expected, initial=0))))


def check(split, x, mode, dtype=np.float32) -> tuple[layersens.Sensitivity, set]:
    sink = Recording()
    sens = layersens.compute.run(split, x, sink, mode=mode)
    ref = reference(layersens.jacobian(split, x, mode=mode))
    assert sens.param_names == split.param_names and sens.activation_shape == split.activation_shape
    assert set(sens.parameter) == set(ref["parameter"])
    for name in split.param_names:
        close(sens.parameter[name], ref["parameter"][name], dtype)
    close(sens.unit, ref["unit"], dtype)
    close(sens.frobenius, ref["frobenius"], dtype)
    return sens, sink.layouts


@pytest.mark.parametrize("mode", MODES, ids=list(MODES))
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_tiny_cnn_every_strategy(tiny, mode, dtype):
    split = layersens.split(tiny, "act", dtype=dtype)
    _, layouts = check(split, X.astype(dtype), MODES[mode], dtype)
    expected = {"fwd3": Layout.COLUMNS, "rev5": Layout.ROWS, "structured": Layout.CHANNEL_COLUMNS}.get(mode)
    assert expected is None or expected in layouts


@pytest.mark.parametrize("mode", ["structured", "rev5"])
def test_a_channel_axis_that_is_not_the_last(mode):
    module = ChannelFirst()
    model = layersens.from_linen(module, random_linen_variables(module, (5, 4, 2)), (5, 4, 2))
    split = layersens.split(model, "act", dtype=np.float64)
    assert split.activation_shape == (3, 5, 4)
    x = np.random.default_rng(4).normal(size=(2, 5, 4, 2))
    _, layouts = check(split, x, MODES[mode], np.float64)
    assert (Layout.CHANNEL_COLUMNS if mode == "structured" else Layout.ROWS) in layouts


LENET_CASES = [("relu1", m, None) for m in MODES] + [
    ("relu2", "auto", Layout.CHANNEL_COLUMNS),
    ("fc1", "structured", Layout.CHANNEL_ROWS),
    ("fc1", "rev5", Layout.ROWS),
]


@pytest.mark.parametrize("layer,mode,layout", LENET_CASES, ids=[f"{a}-{b}" for a, b, _ in LENET_CASES])
def test_lenet(lenet, layer, mode, layout):
    x = lenet.example_inputs[:1] if layer == "relu1" else lenet.example_inputs[:2]
    _, layouts = check(layersens.split(lenet, layer), x, MODES[mode])
    assert layout is None or layout in layouts


@pytest.mark.parametrize("wrt", ["input", "layer"])
def test_input_and_layer_splits(tiny, wrt):
    if wrt == "input":
        split = layersens.split(tiny, "act", dtype=np.float64, wrt="input")
    else:
        split = layersens.split(tiny, "head", dtype=np.float64, wrt_layer="act")
    for mode in ("auto", "rev5", "fwd3"):
        sens, _ = check(split, X, MODES[mode], np.float64)
    assert sens.wrt == str(split.wrt)


@pytest.mark.parametrize("case,layer", [("rnn_scan", "final"), ("transformer", "attn")])
def test_zoo_scan_and_attention(case, layer):
    from tests import zoo

    c = zoo.case(case)
    split = layersens.split(c.model, layer, dtype=np.float64)
    for mode in ("auto", "fwd3", "rev5"):
        check(split, c.x, MODES[mode], np.float64)


def test_a_whole_matrix_block_and_any_order_of_blocks(tiny):
    """Blocks given in any order, or one whole matrix per example, accumulate the same numbers."""
    split = layersens.split(tiny, "act", dtype=np.float64)

    class Keep(layersens.Sink):
        def begin(self, job):
            self.job, self.blocks = job, []

        def put(self, block):
            self.blocks.append(block)

        def finish(self, done):
            return self, done

    kept, done = layersens.compute.run(split, X, Keep(), mode=MODES["structured"])
    dense = layersens.jacobian(split, X).matrix
    forward, backward, whole = SensitivitySink(), SensitivitySink(), SensitivitySink()
    for sink, blocks in [
        (forward, kept.blocks),
        (backward, kept.blocks[::-1]),
        (
            whole,
            [layersens.compute.JacobianBlock(n, Layout.WHOLE, split.param_names, 0, dense[n]) for n in range(len(X))],
        ),
    ]:
        sink.begin(kept.job)
        for block in blocks:
            sink.put(block)
    results = [sink.finish(done) for sink in (forward, backward, whole)]
    for other in results[1:]:
        close(other.unit, results[0].unit, np.float64)
        close(other.frobenius, results[0].frobenius, np.float64)
        for name in split.param_names:
            close(other.parameter[name], results[0].parameter[name], np.float64)


def test_derived_quantities(tiny):
    split = layersens.split(tiny, "act", dtype=np.float64)
    sens = layersens.sensitivity(split, X)
    ref = reference(layersens.jacobian(split, X))
    assert sens.num_examples == 2 and not SensitivitySink.whole_matrix
    totals = sens.leaf_totals()
    assert list(totals) == list(split.param_names)
    for name, total in totals.items():
        np.testing.assert_allclose(total, ref["parameter"][name].sum(), rtol=1e-12)
        np.testing.assert_allclose(sens.per_channel(name), ref["parameter"][name].reshape(2, -1, 3).sum(1), rtol=1e-12)
    np.testing.assert_allclose(sum(totals.values()), np.sum(sens.frobenius**2), rtol=1e-12)
    np.testing.assert_allclose(sens.unit_channels(), np.square(ref["unit"]).reshape(2, -1, 3).sum(1), rtol=1e-12)
    np.testing.assert_allclose(sens.unit_channels().sum(1), sens.frobenius**2, rtol=1e-12)

    flat = np.concatenate([ref["parameter"][n].sum(0).reshape(-1) for n in split.param_names])
    top = sens.top_parameters(5)
    assert len(top) == 5 and all(isinstance(e, Entry) for e in top)
    np.testing.assert_allclose([e.value for e in top], np.sort(flat)[::-1][:5], rtol=1e-12)
    for e in top:
        assert e.value == pytest.approx(sens.parameter[e.leaf].sum(0)[e.index], rel=1e-12)
    units = sens.top_units(3)
    assert [e.leaf for e in units] == ["act"] * 3 and all(len(e.index) == 3 for e in units)
    np.testing.assert_allclose(
        [e.value for e in units], np.sort(np.square(ref["unit"]).sum(0).reshape(-1))[::-1][:3], rtol=1e-12
    )
    assert len(sens.top_parameters(10**6)) == split.num_params
    with pytest.raises(KeyError, match="not a differentiated leaf"):
        sens.per_channel("head/kernel")
    text = repr(sens)
    assert text.startswith("Sensitivity(layer='act'") and len(text) < 1000 and "<table>" in sens._repr_html_()


def test_progress_and_timings(tiny):
    calls = []
    sens = layersens.sensitivity(
        layersens.split(tiny, "act"),
        X32,
        mode=layersens.Forward(chunk_size=7),
        progress=lambda done, total: calls.append((done, total)),
    )
    assert calls and calls[-1][0] == calls[-1][1] and sens.seconds > 0 and sens.mode == "fwd"


def test_save_and_load_round_trip(tiny, tmp_path):
    sens = layersens.sensitivity(layersens.split(tiny, "act"), X32)
    path = sens.save(tmp_path / "act")
    assert path.name == "act.npz"
    back = load_sensitivity(path)
    for field in (
        "layer",
        "model",
        "param_names",
        "param_shapes",
        "activation_shape",
        "wrt",
        "mode",
        "device",
        "seconds",
        "compile_seconds",
        "notes",
    ):
        assert getattr(back, field) == getattr(sens, field), field
    np.testing.assert_array_equal(back.unit, sens.unit)
    np.testing.assert_array_equal(back.frobenius, sens.frobenius)
    for name in sens.param_names:
        np.testing.assert_array_equal(back.parameter[name], sens.parameter[name])
    jac_path = layersens.jacobian(layersens.split(tiny, "act"), X32).save(tmp_path / "jac.npz")
    with pytest.raises(layersens.CheckpointError, match="holds a Jacobian"):
        load_sensitivity(jac_path)
    import json

    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files}
    meta = json.loads(bytes(arrays["metadata"]).decode())
    meta["param_shapes"][0] = [99]
    arrays["metadata"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(layersens.CheckpointError, match="inconsistent metadata"):
        load_sensitivity(tmp_path / "bad.npz")


def test_to_xarray(tiny, monkeypatch):
    xr = pytest.importorskip("xarray")
    sens = layersens.sensitivity(layersens.split(tiny, "act"), X32)
    ds = sens.to_xarray()
    assert isinstance(ds, xr.Dataset)
    assert ds["unit"].dims == ("example", "height", "width", "channel")
    assert ds["frobenius"].dims == ("example",)
    assert ds["conv/kernel"].dims == ("example",) + tuple(f"conv/kernel_axis{k}" for k in range(4))
    np.testing.assert_array_equal(ds["bn/scale"].values, sens.parameter["bn/scale"])
    flat = layersens.sensitivity(layersens.split(tiny, "head"), X32).to_xarray()
    assert flat["unit"].dims == ("example", "unit_axis0")
    monkeypatch.setitem(__import__("sys").modules, "xarray", None)
    with pytest.raises(layersens.LayersensError, match="pip install xarray"):
        sens.to_xarray()


def test_a_jacobian_too_large_for_memory_is_not_refused(tiny, monkeypatch):
    """``jacobian`` refuses a result over the memory limit; ``sensitivity`` never makes it, so never asks."""
    from layersens.compute import _jacobian

    split = layersens.split(tiny, "act")
    monkeypatch.setattr(_jacobian, "available_memory", lambda: 1024)
    monkeypatch.setattr(_jacobian, "_ALWAYS_FITS", 0)  # small results are not checked
    with pytest.raises(layersens.JacobianTooLargeError):
        layersens.jacobian(split, X32)

    def refuse(*args):
        raise AssertionError("sensitivity must not check the dense size")

    monkeypatch.setattr(_jacobian, "check_size", refuse)
    sens = layersens.sensitivity(split, X32)
    assert sens.frobenius.shape == (2,) and np.all(sens.frobenius > 0)
