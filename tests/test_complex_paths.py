"""The compressed form under the complex conventions ('complex', 'holomorphic'): it states the real problem it
computes as ``layersens.jacobian`` states it. Every result is checked against the dense stated Jacobian and against
the independent references of tests/test_complex.py (``jax.jacfwd`` of the real and imaginary parts split by hand),
in complex128 (``TOL``: rtol 1e-10, atol 1e-12).
"""

import dataclasses

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import pytest

import layersens
from layersens.compute import run
from layersens.compute._complex_sink import stated_compressed
from layersens.compute._sinks import CompressedSink
from tests.conftest import TOL
from tests.test_complex import MODELS, C, f_conv, make, references

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
