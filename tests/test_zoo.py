"""The model zoo (tests/zoo.py): upstream sets and every Jacobian mode against jax.jacrev of hand-written
references, in float64. Test ids read ``<model>-<layer>[-<mode>]``.

* ``test_reference_is_the_model`` (every layer of ``zoo.LAYERS``): without layersens, the hand-written reference
  equals the Flax model at the seeded parameters and wherever any one leaf is moved; moving an expected leaf moves
  the layer, moving any other leaf leaves it bit for bit unchanged. This checks the zoo itself.
* ``test_upstream_params`` (every layer): ``set(split.param_names)`` is exactly the hand-written set.
* ``test_split_apply_matches_reference`` (``zoo.MODE_LAYERS``): layersens's one-example function and its
  ``jax.jacrev`` agree with the reference on the leaves both have, so a disagreement in a mode test is the Jacobian
  machinery's, not the split's or the zoo's.
* ``test_jacobian`` (``zoo.MODE_LAYERS`` × every mode, and ``compressed_jacobian(...).to_dense()``): against
  ``jax.jacrev`` of the reference: every expected leaf present and equal, any extra leaf all zeros, the whole matrix
  equal.

Tolerances: rtol=1e-9, atol=1e-11 in float64. The activations are O(1) and built from a handful of float64
operations, so both sides agree to a few ulps (~1e-15); the tolerances leave 4+ orders of magnitude for
differences in summation order (einsum vs dot_general, LayerNorm's E[x²]−E[x]² vs E[(x−m)²], fusion).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import layersens
from tests import zoo
from tests.compile_options import fast_jit

TOL = dict(rtol=1e-9, atol=1e-11)

MODES = {
    "fwd": lambda: layersens.Forward(),
    "rev": lambda: layersens.Reverse(),
    "per-leaf": lambda: layersens.PerLeaf(),
    "structured": lambda: layersens.Structured(),
    "auto": lambda: layersens.Auto(),
    "fwd3": lambda: layersens.Forward(chunk_size=3),
    "rev5": lambda: layersens.Reverse(chunk_size=5),
    "structured2": lambda: layersens.Structured(chunk_size=2),
    "compressed": None,  # layersens.compressed_jacobian(split, x).to_dense()
}

PAIRS = [pytest.param(c, layer, id=f"{c}-{layer}") for c in zoo.LAYERS for layer in zoo.LAYERS[c]]
MODE_PAIRS = [pytest.param(c, layer, id=f"{c}-{layer}") for c in zoo.LAYERS for layer in zoo.MODE_LAYERS[c]]
# Chunked modes exercise the chunk loops (a linearization applied chunk by chunk, overlapping last chunks); they are
# run on the models whose control flow or structure makes chunking least trivial, the rest of the zoo in one chunk.
CHUNKED = {"fwd3", "rev5", "structured2"}
CHUNKED_MODELS = {"bn_cnn", "transformer", "rnn_scan", "mix_scan", "nnx_scan_layers", "while_loop", "custom_vjp"}
PAIR_MODES = [
    pytest.param(c, layer, mode, id=f"{c}-{layer}-{mode}")
    for c in zoo.LAYERS
    for layer in zoo.MODE_LAYERS[c]
    for mode in MODES
    if mode not in CHUNKED or c in CHUNKED_MODELS
]

# JAX cannot reverse-differentiate a while_loop with a dynamic trip count, so the split's own Jacobian is taken in
# forward mode there. The layersens modes are still all compared against jax.jacrev of the (unrolled) reference.
FLAX_AD = {"while_loop": jax.jacfwd}

# Leaves that feed the layer's computation but whose derivative is exactly zero: the key bias adds q·b_k to every
# logit of a query row, which softmax cancels. They are still upstream (a dependence analysis must keep them);
# their Jacobian blocks are (numerically) zero.
SHIFT_INVARIANT = {"attn/key/bias"}


# The zoo's own programs (references, Flax-side values) are compiled without XLA's backend optimizations: half the
# compile time, and float64 results agree far inside TOL. layersens's programs are compiled as it chooses.
jit = fast_jit


@functools.lru_cache(maxsize=None)
def split_of(case_name: str, layer: str):
    return layersens.split(zoo.case(case_name).model, layer, dtype=np.float64)


def expected_params(c: zoo.Case, layer: str) -> dict:
    return {n: jnp.asarray(c.flat_params[n]) for n in sorted(c.layers[layer].expected)}


@functools.lru_cache(maxsize=None)
def flax_values(case_name: str):
    """jit(vmap) over examples of the Flax model's values of every layer of the case: one compilation."""
    return jit(jax.vmap(zoo.case(case_name).flax_values, in_axes=(None, 0)))


@functools.lru_cache(maxsize=None)
def reference_fn(case_name: str, layer: str):
    """jit(vmap) over examples of ``params -> (reference value, jax.jacrev of the reference)``: one compilation."""
    ref = zoo.case(case_name).layers[layer].reference
    return jit(jax.vmap(lambda p, xi: (ref(p, xi), jax.jacrev(ref)(p, xi)), in_axes=(None, 0)))


@functools.lru_cache(maxsize=None)
def reference(case_name: str, layer: str):
    """Per leaf, the per-example ``jax.jacrev`` of the reference, stacked: (examples,) + act + leaf; and the
    per-example values."""
    c = zoo.case(case_name)
    values, jac = reference_fn(case_name, layer)(expected_params(c, layer), jnp.asarray(c.x))
    return {n: np.asarray(v) for n, v in jac.items()}, np.asarray(values)


@pytest.mark.parametrize("case_name, layer", PAIRS)
def test_reference_is_the_model(case_name, layer):
    """Without layersens: the reference equals the Flax model at the seeded parameters and wherever one leaf is
    moved; moving an expected leaf moves the layer, moving any other leaf leaves it bit for bit unchanged."""
    c = zoo.case(case_name)
    expected = c.layers[layer].expected
    assert expected <= set(c.flat_params), sorted(expected - set(c.flat_params))
    x = jnp.asarray(c.x)
    params = {n: jnp.asarray(v) for n, v in c.flat_params.items()}

    def flax(p, x):
        return flax_values(case_name)(p, x)[layer]

    base = np.asarray(flax(params, x))
    assert base.dtype == np.float64
    np.testing.assert_allclose(base, reference(case_name, layer)[1], **TOL)
    rng = np.random.default_rng(0)
    for name in sorted(params):
        moved = dict(params)
        moved[name] = params[name] + 0.1 * rng.normal(size=params[name].shape)
        value = np.asarray(flax(moved, x))
        if name in expected:
            want, _ = reference_fn(case_name, layer)({n: moved[n] for n in expected}, x)
            np.testing.assert_allclose(value, want, **TOL, err_msg=name)
            if name not in SHIFT_INVARIANT:
                assert np.max(np.abs(value - base)) > 1e-6, f"moving {name} does not move {layer}"
        else:
            np.testing.assert_array_equal(value, base, err_msg=f"{name} is not expected but moves {layer}")


@pytest.mark.parametrize("case_name, layer", MODE_PAIRS)
def test_split_apply_matches_reference(case_name, layer):
    """layersens's one-example function, and its jax.jacrev (jacfwd for while_loop), against the reference on the
    leaves both have. When this passes and a mode disagrees, the Jacobian machinery is wrong, not the zoo."""
    c = zoo.case(case_name)
    split = split_of(case_name, layer)
    ref_jac, ref_values = reference(case_name, layer)
    ad = FLAX_AD.get(case_name, jax.jacrev)
    params = {n: jnp.asarray(v) for n, v in split.params.items()}
    values, jac = jit(jax.vmap(lambda p, xi: (split.apply(p, xi), ad(split.apply)(p, xi)), in_axes=(None, 0)))(
        params, jnp.asarray(c.x)
    )
    np.testing.assert_allclose(values, ref_values, **TOL)
    for name in set(params) & set(ref_jac):
        np.testing.assert_allclose(jac[name], ref_jac[name], **TOL, err_msg=name)


@pytest.mark.parametrize("case_name, layer", PAIRS)
def test_upstream_params(case_name, layer):
    expected = zoo.case(case_name).layers[layer].expected
    got = set(split_of(case_name, layer).param_names)
    assert got == expected, f"missing {sorted(expected - got)}, not upstream {sorted(got - expected)}"


# Where JAX itself cannot carry out an asked-for mode (reverse through a while_loop, forward through a custom_vjp),
# layersens computes those leaves in the other mode and says so in the plan: every mode must give the Jacobian.
FALLBACKS = {
    ("while_loop", "rev"): "fwd",
    ("while_loop", "rev5"): "fwd",
    ("custom_vjp", "fwd"): "rev",
    ("custom_vjp", "fwd3"): "rev",
}


@pytest.mark.parametrize("case_name, layer, mode", PAIR_MODES)
def test_jacobian(case_name, layer, mode):
    c = zoo.case(case_name)
    split = split_of(case_name, layer)
    if MODES[mode] is None:
        jac = layersens.compressed_jacobian(split, c.x).to_dense()
    else:
        jac = layersens.jacobian(split, c.x, mode=MODES[mode]())
    if (case_name, mode) in FALLBACKS:
        assert set(layersens.plan(split, c.x, MODES[mode]()).methods.values()) == {FALLBACKS[case_name, mode]}
        assert "no " + ("reverse" if FALLBACKS[case_name, mode] == "fwd" else "forward") + " mode" in " ".join(
            layersens.plan(split, c.x, MODES[mode]()).notes
        )
    ref_jac, _ = reference(case_name, layer)
    missing = set(ref_jac) - set(jac.param_names)
    assert not missing, f"upstream leaves missing from the Jacobian: {sorted(missing)}"
    n_ex = len(c.x)
    assert jac.matrix.dtype == np.float64
    columns = []
    for name in jac.param_names:
        got = np.asarray(jac[name])
        if name in ref_jac:
            want = ref_jac[name]
            assert got.shape == want.shape, (name, got.shape, want.shape)
            np.testing.assert_allclose(got, want, **TOL, err_msg=f"{mode}: {name}")
        else:
            want = np.zeros_like(got)
            assert not np.any(got), f"{name} is not upstream of {layer} but has nonzero columns"
        columns.append(want.reshape(n_ex, split.num_outputs, -1))
    np.testing.assert_allclose(jac.matrix, np.concatenate(columns, axis=-1), **TOL, err_msg=f"{mode}: matrix")


@pytest.mark.parametrize("case_name, layer", MODE_PAIRS)
def test_every_side_by_side_candidate(case_name, layer, monkeypatch):
    """Small layers run their examples side by side through one program chosen by a timed trial among the plan's
    own, plain reverse and plain forward mode (``compute._side_by_side``): each candidate against the reference,
    whichever the trial picks; a mode JAX cannot carry out is never a candidate."""
    from layersens.compute._side_by_side import compile_side_by_side

    monkeypatch.setenv("LAYERSENS_TRIAL", "1")  # conftest turns trials off for the rest of the suite
    c = zoo.case(case_name)
    split = split_of(case_name, layer)
    prepared = layersens.prepare(split, c.x)
    assert prepared.whole is not None and "plan" in prepared.whole.programs
    blocked = {"while_loop": "rev", "custom_vjp": "fwd"}.get(case_name)
    assert blocked not in prepared.whole.programs
    ref_jac, ref_values = reference(case_name, layer)
    for name, program in prepared.whole.programs.items():
        side = compile_side_by_side(split, {name: program}, prepared.params, c.x, prepared.device)
        matrices, values = (np.asarray(v) for v in side.run(prepared.params, c.x))
        np.testing.assert_allclose(values, ref_values, **TOL, err_msg=name)
        at = 0
        for leaf, shape in zip(split.param_names, split.param_shapes):
            size = int(np.prod(shape, dtype=np.int64))
            block = matrices[:, :, at : at + size].reshape((len(c.x),) + split.activation_shape + shape)
            want = ref_jac.get(leaf, np.zeros_like(block))
            np.testing.assert_allclose(block, want, **TOL, err_msg=f"{name}: {leaf}")
            at += size
