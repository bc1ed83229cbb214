"""The streamed store (``extract --out J.zarr``): equal to the in-memory Jacobian for every strategy, layout and slab
size; resumed after an interruption to the same arrays; refused when it holds another computation; read back
lazily by leaf, row, column, example and xarray; summed in a stream.

The store holds the values the same compiled programs hand to the dense sink, so equality is exact.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

import layersens
from layersens import CheckpointError, OutputError
from layersens.compute import StoreSink, run
from tests.conftest import TOL
from tests.tiny_models import ChannelFirst, TinyMLP, random_linen_variables

MODES = {
    "auto": layersens.Auto(),
    "fwd3": layersens.Forward(chunk_size=3),
    "rev5": layersens.Reverse(chunk_size=5),
    "structured": layersens.Structured(),
    "per-leaf": layersens.PerLeaf(),
}
X = np.random.default_rng(3).normal(size=(3, 6, 6, 1)).astype(np.float32)


@pytest.fixture(scope="module")
def models(tiny_cnn):
    first = ChannelFirst()
    mlp = TinyMLP()
    return {
        "cnn": tiny_cnn,
        "channel-first": layersens.from_linen(first, random_linen_variables(first, (6, 6, 1)), (6, 6, 1)),
        "mlp": layersens.from_linen(mlp, random_linen_variables(mlp, (6, 6, 1)), (6, 6, 1)),
    }


def _stream(split, x, path, mode, compressed=False, slab_bytes=None, **kwargs):
    return run(split, x, StoreSink(path, compressed=compressed, slab_bytes=slab_bytes, **kwargs), mode=mode)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("compressed", [False, True], ids=["dense", "compressed"])
@pytest.mark.parametrize(
    ("model", "layer"), [("cnn", "act"), ("cnn", "res"), ("cnn", "head"), ("mlp", "pre"), ("channel-first", "act")]
)
def test_a_store_holds_the_dense_jacobian(models, tmp_path, mode, compressed, model, layer):
    split = layersens.split(models[model], layer)
    dense = layersens.jacobian(split, X, mode=MODES[mode])
    # slabs of a few rows or columns: many slabs per leaf, blocks straddling them
    stored = _stream(split, X, tmp_path / "J.zarr", MODES[mode], compressed, slab_bytes=4096)
    assert stored.complete
    np.testing.assert_array_equal(stored.load().matrix, dense.matrix)
    # a small layer's dense result computes its examples side by side (one vmapped program); the store, one at a
    # time: the layer's values may differ in the last bit of float32
    np.testing.assert_allclose(stored.activation, dense.activation, **TOL[np.float32])
    np.testing.assert_array_equal(stored.inputs, X)
    assert layersens.load_jacobian(tmp_path / "J.zarr").param_names == dense.param_names


def test_compressed_stores_only_the_diagonal_of_coloured_leaves(models, tmp_path):
    split = layersens.split(models["cnn"], "act")
    stored = _stream(split, X, tmp_path / "J.zarr", layersens.Structured(), compressed=True)
    kinds = {a.leaf: a.path.split("/")[0] for a in stored.arrays}
    assert set(kinds.values()) == {"channels"}
    kernel = stored.arrays[[a.leaf for a in stored.arrays].index("conv/kernel")]
    C = split.activation_shape[-1]
    assert kernel.shape[2] * C == int(np.prod(split.params["conv/kernel"].shape))


def test_reading_back_is_lazy_and_exact(models, tmp_path):
    split = layersens.split(models["cnn"], "res")
    dense = layersens.jacobian(split, X)
    for compressed in (False, True):
        stored = _stream(split, X, tmp_path / f"J{compressed}.zarr", layersens.Structured(), compressed, 2048)
        M = stored.matrix
        assert M.shape == dense.matrix.shape
        np.testing.assert_array_equal(M[1, 5], dense.matrix[1, 5])  # one row
        np.testing.assert_array_equal(M[:, :, 7], dense.matrix[:, :, 7])  # one column
        np.testing.assert_array_equal(M[2, 3:9][:, [1, 40, 2]], dense.matrix[2, 3:9][:, [1, 40, 2]])
        np.testing.assert_array_equal(stored.example(0), dense.matrix[0])
        for name, (a, b) in dense.column_ranges.items():
            np.testing.assert_array_equal(stored[name][1], dense.matrix[1][:, a:b])
        assert stored.max_abs() == pytest.approx(float(np.abs(dense.matrix).max()))
        assert len(repr(stored)) < 1000 and "complete='yes'" in repr(stored) and stored._repr_html_()


def test_streamed_sums_equal_the_sensitivity(models, tmp_path):
    split = layersens.split(models["cnn"], "act")
    sens = layersens.sensitivity(split, X)
    for compressed in (False, True):
        stored = _stream(split, X, tmp_path / f"J{compressed}.zarr", layersens.Auto(), compressed, 1024)
        columns, rows = stored.sensitivity_sums(max_memory=4096)  # a few rows per read
        for name in sens.param_names:
            np.testing.assert_allclose(columns[name].reshape(sens.parameter[name].shape), sens.parameter[name])
        np.testing.assert_allclose(np.sqrt(rows).reshape(sens.unit.shape), sens.unit, rtol=1e-6)


def test_to_xarray_names_the_dimensions(models, tmp_path):
    split = layersens.split(models["cnn"], "act")
    stored = _stream(split, X, tmp_path / "J.zarr", layersens.Auto())
    ds = stored.to_xarray()
    kernel = ds["conv/kernel"]
    assert kernel.dims[:2] == ("example", "unit")
    assert kernel.shape[:2] == (3, split.num_outputs)


class Crash(Exception):
    pass


class CrashingSink(StoreSink):
    """A store sink that stops the run after ``after`` slabs, as a killed run would."""

    def __init__(self, path, after, **kwargs):
        super().__init__(path, **kwargs)
        self.after = after

    def _write(self, a, n, index, slab):
        if self.after == 0:
            raise Crash
        self.after -= 1
        super()._write(a, n, index, slab)


# crashed at the first slab written, within the first example, and after it (its slabs are then not recomputed)
@pytest.mark.parametrize(("mode", "after"), [("auto", 0), ("auto", 40), ("rev5", 3), ("rev5", 40)])
def test_an_interrupted_store_resumes_to_the_same_arrays(models, tmp_path, after, mode):
    split = layersens.split(models["cnn"], "head")
    whole = _stream(split, X, tmp_path / "whole.zarr", MODES[mode], slab_bytes=1024)
    with pytest.raises(Crash):
        run(split, X, CrashingSink(tmp_path / "J.zarr", after, slab_bytes=1024), mode=MODES[mode])
    partial = layersens.load_jacobian(tmp_path / "J.zarr")
    assert not partial.complete
    with pytest.raises(CheckpointError, match="unfinished .* rerun the command that made it"):
        partial.load()
    seen = []

    class Counting(StoreSink):
        def put(self, block):
            seen.append(block)
            super().put(block)

    resumed = run(split, X, Counting(tmp_path / "J.zarr", slab_bytes=1024), mode=MODES[mode])
    assert resumed.complete and resumed.progress == whole.progress
    np.testing.assert_array_equal(resumed.load().matrix, whole.load().matrix)
    np.testing.assert_array_equal(resumed.activation, whole.activation)
    per_example = sum(a.num_slabs for a in whole.arrays)
    if after >= per_example:  # example 0 was finished before the crash: the resumed run computes none of it
        assert seen and not any(block.example == 0 for block in seen)


def test_a_finished_store_is_not_recomputed(models, tmp_path):
    split = layersens.split(models["cnn"], "act")
    _stream(split, X, tmp_path / "J.zarr", layersens.Auto())
    seen = []

    class Counting(StoreSink):
        def put(self, block):
            seen.append(block)
            super().put(block)

    again = run(split, X, Counting(tmp_path / "J.zarr"), mode=layersens.Auto())
    assert again.complete and not seen
    assert any(note.startswith("resumed: ") and "already written by an earlier run" in note for note in again.notes)


def test_a_store_of_another_computation_is_refused(models, tmp_path, tiny_cnn):
    split = layersens.split(models["cnn"], "act")
    path = tmp_path / "J.zarr"
    _stream(split, X, path, layersens.Auto())
    with pytest.raises(OutputError, match=r"holds \(part of\) another computation: it differs in the inputs"):
        _stream(split, X[:2], path, layersens.Auto())
    with pytest.raises(OutputError, match="differs in the layer"):
        _stream(layersens.split(models["cnn"], "res"), X, path, layersens.Auto())
    with pytest.raises(OutputError, match=r"the methods \(--mode, --device\)"):
        _stream(split, X, path, layersens.Reverse())
    with pytest.raises(OutputError, match="--overwrite"):
        _stream(split, X, path, layersens.Auto(), compressed=True)
    # overwrite replaces it
    replaced = _stream(split, X[:2], path, layersens.Auto(), overwrite=True)
    assert replaced.num_examples == 2 and replaced.complete


def test_extract_checks_a_store_path_before_computing(tmp_path, lenet_linen):
    folder = tmp_path / "data.zarr"
    folder.mkdir()
    (folder / "keep.txt").write_text("mine")
    with pytest.raises(OutputError, match="is a directory that is not a layersens Jacobian store; nothing was"):
        layersens.extract(lenet_linen, "relu1", num_examples=1, out=folder)
    assert (folder / "keep.txt").read_text() == "mine"
    afile = tmp_path / "file.zarr"
    afile.write_text("x")
    with pytest.raises(OutputError, match="exists and is not a directory"):
        layersens.extract(lenet_linen, "relu1", num_examples=1, out=afile)
    with pytest.raises(OutputError, match="the compressed form is written to a store"):
        layersens.extract(lenet_linen, "relu1", num_examples=1, out=tmp_path / "x.npz", compressed=True)


def test_extract_to_a_store_verifies_and_reports_progress(tmp_path, lenet_linen):
    class Recorder:
        def __init__(self):
            self.stages, self.counts, self.bytes = [], [], 0

        def __call__(self, done, total):
            self.counts.append((done, total))

        def stage(self, text, examples=None):
            self.stages.append((text, examples))

        def wrote(self, nbytes):
            self.bytes += nbytes

    progress = Recorder()
    out = tmp_path / "relu1.zarr"
    stored = layersens.extract(
        lenet_linen, "relu1", num_examples=2, out=out, verify=True, max_memory="8MB", progress=progress
    )
    assert stored.verification is not None and stored.verification.row_error < 1e-5
    texts = [t for t, _ in progress.stages]
    assert texts[0].startswith("tracing") and any(t.startswith("planning and compiling") for t in texts)
    assert ("drelu1/dθ on cpu:0", 2) in progress.stages and "verifying" in texts
    done = [d for d, _ in progress.counts]
    assert done == sorted(done) and progress.counts[-1][0] == progress.counts[-1][1]
    assert progress.bytes == stored.nbytes  # every slab, uncompressed

    npz = Recorder()
    jac = layersens.extract(lenet_linen, "relu1", num_examples=1, out=tmp_path / "r1.npz", progress=npz)
    assert any(t.startswith("writing") for t, _ in npz.stages)
    assert npz.bytes >= jac.nbytes and npz.bytes >= (tmp_path / "r1.npz").stat().st_size  # zip rewrites headers


def test_the_run_display_counts_examples_and_chunks_with_an_eta(monkeypatch):
    import io

    from rich.console import Console

    import layersens_cli._common as common

    screen = io.StringIO()
    monkeypatch.setattr(common, "err", Console(file=screen, force_terminal=True, width=160))
    with common.RunProgress() as progress:
        progress.stage("tracing LeNet to relu2")
        progress.stage("drelu2/dθ on cpu:0", 4)
        time.sleep(0.05)
        progress(2, 8)
        progress.wrote(3 * 2**20)
        progress(4, 8)
    shown = screen.getvalue()
    assert "tracing LeNet to relu2" in shown and "drelu2/dθ on cpu:0" in shown
    assert "2/4 examples · 4/8 chunks" in shown and "chunks/s · ETA 0:00:0" in shown and "3.0 MiB written" in shown
    for quiet, terminal in ((True, True), (False, False)):  # --quiet, or stderr not a terminal: nothing at all
        screen = io.StringIO()
        monkeypatch.setattr(common, "err", Console(file=screen, force_terminal=terminal))
        with common.RunProgress(quiet=quiet) as progress:
            progress.stage("drelu2/dθ on cpu:0", 4)
            progress(2, 8)
        assert screen.getvalue() == ""


@pytest.mark.parametrize("compressed", [False, True], ids=["dense", "compressed"])
def test_a_stored_matrix_indexes_as_numpy_does(tmp_path, tiny_cnn, compressed):
    """Each axis is read on its own (zarr's orthogonal selection); where numpy differs, an index array and an
    integer apart (its axis comes first) is given numpy's answer, and two index arrays (paired element by
    element) are refused."""
    split = layersens.split(tiny_cnn, "act")
    x = np.random.default_rng(0).normal(size=(3, 6, 6, 1)).astype(np.float32)
    stored = layersens.stream_jacobian(split, x, tmp_path / "j.zarr", compressed=compressed)
    J = stored.load().matrix
    keys = [
        np.s_[0, 0:3, [5, 0, 2]],
        np.s_[[1, 0], :, 2],
        np.s_[:, 0, [1, 2]],
        np.s_[..., 3],
        np.s_[2, ...],
        np.s_[:, [3, 1], 0],
        np.s_[1, [0, 4], 2:9],
        np.s_[np.array([True, False, True])],
    ]
    for key in keys:
        for got, want in ((stored.matrix[key], J[key]), (stored["conv/kernel"][key], J[:, :, :27][key])):
            assert got.shape == want.shape, key
            np.testing.assert_array_equal(got, want, err_msg=str(key))
    with pytest.raises(IndexError, match=r"at most one list or 1-D array \(numpy would pair them"):
        stored.matrix[[0, 1], [2, 3]]
