"""The compressed form and the store under the complex conventions ('complex', 'holomorphic'): each states the real
problem it computes as ``layersens.jacobian`` states it. Every result is checked against the dense stated Jacobian
and against the independent references of tests/test_complex.py (``jax.jacfwd`` of the real and imaginary parts
split by hand), in complex128 (``TOL``: rtol 1e-10, atol 1e-12); a store's norms against numpy's ``|J|²`` sums of
the dense complex matrix; what a store holds on disk against ``ComplexParts.separate`` of the dense one.
"""

import dataclasses

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import pytest

import layersens
from layersens import CheckpointError, OutputError, SelectionError
from layersens.compute import StoreSink, run
from layersens.compute._complex_sink import stated_compressed
from layersens.compute._sinks import CompressedSink
from tests.conftest import TOL
from tests.test_complex import MODELS, C, f_conv, make, references
from tests.test_store import Crash, CrashingSink

EXACT = TOL[np.float64]


class Intensity(nn.Module):
    """A real layer of complex parameters (rows not stacked): |conv(x)|², its kernel's channels still coloured."""

    @nn.compact
    def __call__(self, x):
        z = nn.Conv(3, (3, 3), name="conv", **C)(x.astype(jnp.complex128))
        h = (z * jnp.conj(z)).real
        self.sow("intermediates", "act", h)
        return h.sum()


def intensity(params, x):
    z = nn.Conv(3, (3, 3), **C).apply({"params": params["conv"]}, x.astype(jnp.complex128)[None])[0]
    return (z * jnp.conj(z)).real


# name → (module, input shape, layer, the layer as a function of (params, one example))
SETUPS = {
    "holo_conv": (*MODELS["holo_conv"], "act", lambda p, e: jnp.sin(f_conv(p, e))),
    "holo_mlp": (*MODELS["holo_mlp"], "output", None),
    "conjugating": (*MODELS["conjugating"], "output", None),
    "real_to_complex": (*MODELS["real_to_complex"], "output", None),
    "intensity": (Intensity(), (5, 5, 2), "act", intensity),
}
CASES = [
    ("holo_conv", "complex"),
    ("holo_conv", "holomorphic"),
    ("holo_mlp", "complex"),
    ("holo_mlp", "holomorphic"),
    ("conjugating", "complex"),
    ("real_to_complex", "complex"),
    ("real_to_complex", "holomorphic"),
    ("intensity", "complex"),
]
_MADE: dict = {}


def case_of(name, mode):
    """The split, examples, dense stated Jacobian and references of one case (made once per test session)."""
    if (name, mode) not in _MADE:
        module, shape, layer, layer_function = SETUPS[name]
        model, params, x, f = make(module, shape)
        split = layersens.split(model, layer, complex_mode=mode)
        dense = layersens.jacobian(split, x)
        want = [references(layer_function or f, params, e, mode, ()) for e in x]
        _MADE[name, mode] = split, x, dense, want
    return _MADE[name, mode]


def check_stated(jac, dense, want, mode):
    """``jac`` (a LayerJacobian) is the dense stated Jacobian, and each leaf its reference."""
    assert jac.param_names == dense.param_names and jac.param_shapes == dense.param_shapes
    assert jac.complex_mode == mode and jac.dtype == "complex128" and jac.matrix.dtype == np.complex128
    np.testing.assert_allclose(jac.matrix, dense.matrix, **EXACT)
    np.testing.assert_allclose(jac.activation, dense.activation, **EXACT)
    for n, per_leaf in enumerate(want):
        assert set(per_leaf) == set(jac.param_names)
        for leaf, value in per_leaf.items():
            np.testing.assert_allclose(jac[leaf][n], value, **EXACT, err_msg=leaf)


@pytest.mark.parametrize("strategy", ["structured", None], ids=["structured", "default"])
@pytest.mark.parametrize("name,mode", CASES)
def test_the_compressed_form_is_the_stated_jacobian(name, mode, strategy):
    split, x, dense, want = case_of(name, mode)
    compressed = layersens.compressed_jacobian(split, x, **({} if strategy is None else {"mode": strategy}))
    assert compressed.param_names == dense.param_names
    if name in ("holo_conv", "intensity"):  # the complex kernel's parts are coloured, and stay a block stated
        kernels = {"conv/kernel"} | ({"conj(conv/kernel)"} if mode == "complex" else set())
        assert kernels <= set(compressed.channel_blocks), compressed
    for leaf, block in compressed.channel_blocks.items():
        s = compressed.structure[leaf]
        assert block.dtype == np.complex128 and block.shape[:-1] == (len(x),) + dense.activation_shape
        assert s.leaf == leaf and dense.activation_shape[s.output_axis] == s.channels
    assert set(compressed.channel_blocks).isdisjoint(compressed.dense_part.param_names)
    assert compressed.dense_part.complex_mode == mode
    check_stated(compressed.to_dense(), dense, want, mode)


def test_a_compressed_form_with_dense_and_coloured_leaves():
    """The MLP's output colours d2 (its kernel and bias per output) and not d1: the stated dense part holds both
    Wirtinger parts of d1's leaves."""
    split, x, dense, want = case_of("holo_mlp", "complex")
    compressed = layersens.compressed_jacobian(split, x)
    assert compressed.dense_part.param_names == ("d1/kernel", "conj(d1/kernel)", "d1/bias", "conj(d1/bias)")
    assert set(compressed.channel_blocks) == {"d2/kernel", "conj(d2/kernel)", "d2/bias", "conj(d2/bias)"}
    check_stated(compressed.to_dense(), dense, want, "complex")


@pytest.mark.parametrize("mode", ["complex", "holomorphic"])
def test_a_pair_split_between_a_block_and_dense_columns_is_stated_whole(mode):
    """Were w.real coloured and w.imag dense (or their channels to differ), the block of w.real is expanded and the
    pair stated from dense columns: never half a block."""
    split, x, dense, want = case_of("holo_conv", mode)
    real = run(split, x, CompressedSink(), mode=layersens.Structured())
    moved = "conv/kernel.imag" if mode == "complex" else "conv/kernel.real"
    whole = real.to_dense()
    a, b = whole.column_ranges[moved]
    assert real.dense_part.param_names == ()
    mixed = dataclasses.replace(
        real,
        channel_blocks={n: v for n, v in real.channel_blocks.items() if n != moved},
        structure={n: v for n, v in real.structure.items() if n != moved},
        dense_part=dataclasses.replace(
            whole, matrix=whole.matrix[:, :, a:b], param_names=(moved,), param_shapes=(whole.param_shapes[0],)
        ),
    )
    stated = stated_compressed(mixed, split.complex)
    pair = ("conv/kernel", "conj(conv/kernel)") if mode == "complex" else ("conv/kernel",)
    assert stated.dense_part.param_names == pair
    assert set(stated.channel_blocks) == {"conv/bias"} | ({"conj(conv/bias)"} if mode == "complex" else set())
    check_stated(stated.to_dense(), dense, want, mode)


def stream(split, x, path, mode=layersens.Auto(), compressed=False, slab_bytes=None):
    return run(split, x, StoreSink(path, compressed=compressed, slab_bytes=slab_bytes), mode=mode)


def check_store(stored, dense, want, mode):
    """Every read of ``stored`` states the dense Jacobian."""
    assert stored.complete and stored.complex_mode == mode and stored.dtype == "complex128"
    assert stored.param_names == dense.param_names and stored.param_shapes == dense.param_shapes
    assert stored.activation_shape == dense.activation_shape and stored.matrix.shape == dense.matrix.shape
    check_stated(stored.load(), dense, want, mode)
    J, M = dense.matrix, dense.num_outputs
    np.testing.assert_allclose(stored.activation, dense.activation, **EXACT)
    # (key, the same from the dense matrix): a stored matrix indexes as numpy does
    last = J.shape[2] - 1
    reads = [
        (np.s_[1, M // 2 - 1 : M // 2 + 2], J[1, M // 2 - 1 : M // 2 + 2]),  # rows about the layer's middle
        (np.s_[:, M - 2 :, 3], J[:, M - 2 :, 3]),  # the last rows: their imaginary parts are the real problem's last
        (np.s_[:, :], J),
        (np.s_[2, -1], J[2, -1]),
        (np.s_[0, ::-1, [5, 0, 2]], J[0, ::-1, [5, 0, 2]]),  # reversed rows, columns out of order (array axis first)
        (np.s_[:, [M - 1, 0, M // 2]], J[:, [M - 1, 0, M // 2]]),  # rows out of order
        (np.s_[1, M // 2, [last, 0]], J[1, M // 2, [last, 0]]),
    ]
    for key, expected in reads:
        np.testing.assert_allclose(stored.matrix[key], expected, **EXACT, err_msg=str(key))
    for n in range(dense.num_examples):
        np.testing.assert_allclose(stored.example(n), J[n], **EXACT)
    for leaf, (a, b) in dense.column_ranges.items():
        np.testing.assert_allclose(stored[leaf][1], J[1][:, a:b], **EXACT, err_msg=leaf)
        np.testing.assert_allclose(stored[leaf][:, M // 2 :, :2], J[:, M // 2 :, a : a + 2], **EXACT, err_msg=leaf)
        assert stored[leaf].shape == (dense.num_examples, M, b - a)
    # a few rows per read (each read costs milliseconds of zarr's: a budget of one row a time would take a minute)
    budget = 1 << 18
    assert stored.max_abs(max_memory=budget) == pytest.approx(float(np.abs(J).max()), rel=1e-12)
    # norms of the complex matrix, with |·|: per parameter Σ_rows |J|², per unit sqrt(Σ_columns |J|²), ‖J‖_F
    squares = np.abs(J) ** 2
    sens = stored.sensitivity(max_memory=budget)
    # (squares of entries that agree to atol 1e-12: an exact zero of one may be 1e-16 in the other)
    for leaf, (a, b) in dense.column_ranges.items():
        shape = (dense.num_examples,) + dense.param_shapes[dense.param_names.index(leaf)]
        column_sums = squares[:, :, a:b].sum(axis=1).reshape(shape)
        np.testing.assert_allclose(sens.parameter[leaf], column_sums, rtol=1e-10, atol=1e-24, err_msg=leaf)
    unit = np.sqrt(squares.sum(axis=2)).reshape((-1,) + dense.activation_shape)
    np.testing.assert_allclose(sens.unit, unit, **EXACT)
    np.testing.assert_allclose(sens.frobenius, np.sqrt(squares.sum(axis=(1, 2))), **EXACT)


# Each case in one layout, each layout in both conventions: the compressed layout reads its dense leaves as the dense
# layout does and its coloured ones through the same stated reads, so a case stored compressed here is stored dense
# elsewhere in this file, not again here: holo_conv 'complex' (slabs and resume tests), intensity 'complex' (the
# refused store, overwritten), holo_mlp 'complex' (the verified store, from extract); holo_conv 'holomorphic' is the
# holomorphic convention of a coloured conv, stored dense by holo_mlp and real_to_complex.
STORES = [
    ("holo_mlp", "holomorphic", "dense"),
    ("conjugating", "complex", "dense"),  # not holomorphic: both Wirtinger parts nonzero
    ("real_to_complex", "complex", "dense"),  # real parameters, complex rows
    ("real_to_complex", "holomorphic", "dense"),
    ("holo_conv", "complex", "compressed"),  # a coloured kernel's parts stored as their channel diagonals
    ("holo_conv", "holomorphic", "compressed"),
    ("holo_mlp", "complex", "compressed"),  # d2 as diagonals, d1 dense
    ("intensity", "complex", "compressed"),  # a real layer of complex parameters
]


@pytest.mark.parametrize("name,mode,layout", STORES)
def test_a_store_states_what_it_reads(tmp_path, name, mode, layout):
    split, x, dense, want = case_of(name, mode)
    path = tmp_path / "J.zarr"
    stored = layersens.stream_jacobian(split, x, path, compressed=layout == "compressed")
    check_store(stored, dense, want, mode)
    back = layersens.load_jacobian(path)  # reopened: the convention is the store's
    assert back.complex_mode == mode and back.load().complex_mode == mode
    # a format of its own: a reader that knows only stores of real Jacobians refuses it instead of misreading it
    import zarr

    assert zarr.open_group(str(path), mode="r").attrs["format"] == "layersens-jacobian-store/2"
    np.testing.assert_allclose(back.load().matrix, dense.matrix, **EXACT)
    # on disk: the real problem itself, rows [Re h; Im h] and columns w.real, w.imag
    problem = back.real_problem()
    assert problem.param_names == split.param_names and problem.activation_shape == split.activation_shape
    assert problem.complex_mode == "" and problem.dtype == "float64"
    np.testing.assert_allclose(problem.load().matrix, split.complex.separate(dense.matrix), **EXACT)


@pytest.mark.parametrize("strategy", ["rev5", "fwd3"])
def test_slabs_across_the_real_and_imaginary_rows(tmp_path, strategy):
    """Slabs of a few rows or columns: in reverse mode some slab holds rows of both Re h and Im h."""
    split, x, dense, want = case_of("holo_conv", "complex")
    mode = layersens.Reverse(chunk_size=5) if strategy == "rev5" else layersens.Forward(chunk_size=3)
    stored = stream(split, x, tmp_path / "J.zarr", mode, slab_bytes=16384)
    M = dense.num_outputs
    straddles = [
        a
        for a in stored.arrays
        for i in range(a.num_slabs)
        if a.slab_axis == 1 and a.slab_range(i)[0] < M < a.slab_range(i)[1]
    ]
    assert straddles or strategy == "fwd3"
    check_store(stored, dense, want, "complex")


def test_an_interrupted_complex_store_resumes_to_the_same_jacobian(tmp_path):
    """Interrupted before its first slab, then again after 5 more (a resumed run interrupted), then resumed."""
    split, x, dense, want = case_of("holo_conv", "complex")
    path = tmp_path / "J.zarr"
    for after in (0, 5):
        with pytest.raises(Crash):
            run(split, x, CrashingSink(path, after, slab_bytes=16384), mode=layersens.Reverse(chunk_size=7))
        partial = layersens.load_jacobian(path)
        assert not partial.complete and partial.complex_mode == "complex"
        with pytest.raises(CheckpointError, match="unfinished .* rerun the command that made it"):
            partial["conj(conv/kernel)"]
    resumed = stream(split, x, path, layersens.Reverse(chunk_size=7), slab_bytes=16384)
    assert "resumed: 5 slab(s) were already written by an earlier run" in resumed.notes
    check_store(resumed, dense, want, "complex")


def test_a_store_of_another_convention_is_refused(tmp_path):
    """The real layer |conv(x)|² is one real problem in 'real' and 'complex' mode: only the convention tells its
    store's numbers apart, and a store of one is never resumed or read as the other."""
    model, *_ = make(Intensity(), (5, 5, 2))
    split, x, dense, want = case_of("intensity", "complex")
    path = tmp_path / "J.zarr"
    real = stream(layersens.split(model, "act", complex_mode="real"), x, path)
    assert real.complex_mode == "real" and real.load().complex_mode == "real" and real.dtype == "float64"
    import zarr

    assert zarr.open_group(str(path), mode="r").attrs["format"] == "layersens-jacobian-store/1"  # a real Jacobian
    with pytest.raises(OutputError, match=r"differs in the complex convention \(--complex\) \('real' then"):
        stream(split, x, path)
    check_store(run(split, x, StoreSink(path, overwrite=True), mode=layersens.Auto()), dense, want, "complex")


def test_a_complex_store_is_verified_through_its_real_problem(tmp_path):
    split, x, dense, want = case_of("holo_mlp", "complex")
    stored = layersens.extract(split.model, "output", x, complex_mode="complex", out=tmp_path / "J.zarr", verify=True)
    assert stored.verification.row_error < 1e-12 and stored.verification.difference_error < 1e-6
    check_store(stored, dense, want, "complex")
    with pytest.raises(SelectionError, match=r"J\.load\(\)\.to_xarray\(\) for the stated Jacobian"):
        stored.to_xarray()
    assert "complex_mode='complex'" in repr(stored)
