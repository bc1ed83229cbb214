"""Every Jacobian path against an independent computation, with tolerances per dtype (see conftest.TOL)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import layersens
from layersens.models import flatten_params
from tests.compile_options import OPTIMIZED
from tests.conftest import TOL
from tests.tiny_models import TinyCNN, TinyCNNNNX, TinyMLP, random_linen_variables, tiny_cnn_act_flat

MODES = [
    layersens.Forward(),
    layersens.Reverse(),
    layersens.Auto(),
    layersens.Forward(chunk_size=7),
    layersens.Reverse(chunk_size=11),
]


@pytest.fixture(scope="module")
def tiny():
    module = TinyCNN()
    variables = random_linen_variables(module, (6, 6, 1))
    model = layersens.from_linen(module, variables, (6, 6, 1), call_kwargs={"train": False})
    # in the model's float32: a float64 batch would be cast to it, with an InputWarning (float64 splits upcast it)
    x = np.random.default_rng(1).normal(size=(3, 6, 6, 1)).astype(np.float32)
    return model, variables, x


def flat_reference(params, variables, x, dtype):
    """jax.jacrev of the hand-written function, per example."""
    constants = jax.tree.map(lambda a: jnp.asarray(a, dtype), dict(variables["batch_stats"]))
    params = {k: jnp.asarray(v, dtype) for k, v in params.items()}
    return [jax.jacrev(lambda p: tiny_cnn_act_flat(p, constants, jnp.asarray(xi, dtype)))(params) for xi in x]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("mode", MODES, ids=lambda m: f"{m.name}{getattr(m, 'chunk_size', '') or ''}")
def test_modes_match_jacrev_of_hand_written_function(tiny, mode, dtype):
    model, variables, x = tiny
    split = layersens.split(model, "act", dtype=dtype)
    jac = layersens.jacobian(split, x, mode=mode)
    assert jac.matrix.dtype == dtype and jac.matrix.shape == (3, 6 * 6 * 3, 3 * 3 * 3 + 9)
    reference = flat_reference(split.params, variables, x, dtype)
    for n in range(len(x)):
        for name in split.param_names:
            np.testing.assert_allclose(jac[name][n], reference[n][name], **TOL[dtype])


def test_dense_layer_matches_closed_form():
    module = TinyMLP()
    variables = module.init(jax.random.key(0), jnp.zeros((1, 3)))
    model = layersens.from_linen(module, variables, (3,))
    x = np.array([[0.5, -1.0, 2.0], [1.5, 0.25, -0.75]], np.float64)
    for mode in ("fwd", "rev"):
        jac = layersens.jacobian(layersens.split(model, "pre", dtype=np.float64), x, mode=mode)
        assert jac.param_names == ("dense1/kernel", "dense1/bias")
        eye = np.eye(5)
        for n in range(2):
            # y_i = sum_j x_j W_ji + b_i  =>  dy_i/dW_jk = x_j δ_ik,  dy_i/db_k = δ_ik
            np.testing.assert_allclose(jac["dense1/kernel"][n], np.einsum("j,ik->ijk", x[n], eye), atol=1e-15)
            np.testing.assert_allclose(jac["dense1/bias"][n], eye, atol=1e-15)


def test_central_finite_differences_float64_sampled(lenet_linen):
    split = layersens.split(lenet_linen, "relu2", dtype=np.float64)
    x = lenet_linen.example_inputs[:1].astype(np.float64)
    jac = layersens.jacobian(split, x, mode="fwd")
    apply = jax.jit(split.apply)
    rng = np.random.default_rng(0)
    active = np.flatnonzero(np.asarray(jac.activation[0]).ravel() > 1e-3)
    rows = rng.choice(active, 12, replace=False)
    ranges = jac.column_ranges
    h = 1e-6
    for name in split.param_names:
        leaf = np.asarray(split.params[name])
        a, b = ranges[name]
        for j in rng.choice(b - a, 3, replace=False):
            bump = np.zeros(leaf.size)
            bump[j] = h
            plus = {**split.params, name: leaf + bump.reshape(leaf.shape)}
            minus = {**split.params, name: leaf - bump.reshape(leaf.shape)}
            fd = (np.asarray(apply(plus, x[0])).ravel() - np.asarray(apply(minus, x[0])).ravel()) / (2 * h)
            np.testing.assert_allclose(jac.matrix[0, rows, a + j], fd[rows], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("framework", ["linen", "nnx"])
def test_lenet_relu1_equals_jacrev_of_flat_function(framework, lenet_linen, lenet_nnx):
    model = lenet_linen if framework == "linen" else lenet_nnx
    split = layersens.split(model, "relu1")
    x = model.example_inputs[:2]
    jac = layersens.jacobian(split, x)
    assert jac.mode == "fwd-colour" and jac.matrix.shape == (2, 15680, 240)
    for n in range(2):
        theta = np.concatenate([np.ravel(split.params[k]) for k in split.param_names])
        sizes = np.cumsum([np.size(split.params[k]) for k in split.param_names])[:-1]

        def flat_fn(t, xn=x[n]):
            pieces = jnp.split(t, sizes)
            return jnp.ravel(
                split.apply({k: p.reshape(np.shape(split.params[k])) for k, p in zip(split.param_names, pieces)}, xn)
            )

        reference = jax.jit(jax.jacrev(flat_fn), compiler_options=OPTIMIZED)(theta)
        np.testing.assert_allclose(jac.matrix[n], reference, **TOL[np.float32])


def test_linen_and_nnx_ports_agree(lenet_linen, lenet_nnx):
    x = lenet_linen.example_inputs[:1]
    a = layersens.jacobian(layersens.split(lenet_linen, "relu2"), x, mode=layersens.Forward(chunk_size=1024))
    b = layersens.jacobian(layersens.split(lenet_nnx, "relu2"), x, mode=layersens.Forward(chunk_size=1024))
    assert a.param_names == b.param_names
    np.testing.assert_allclose(a.matrix, b.matrix, rtol=1e-5, atol=1e-5)


def test_nnx_tiny_model_matches_jacfwd():
    from flax import nnx

    model = layersens.from_nnx(TinyCNNNNX(rngs=nnx.Rngs(3)), (6, 6, 1))
    split = layersens.split(model, "act")
    x = np.random.default_rng(2).normal(size=(2, 6, 6, 1)).astype(np.float32)
    jac = layersens.jacobian(split, x, mode="rev")
    for n in range(2):
        ref = jax.jacfwd(lambda p: split.apply(p, x[n]))(split.params)
        for name in split.param_names:
            np.testing.assert_allclose(jac[name][n], ref[name], **TOL[np.float32])


def test_tiny_memory_budget_forces_small_chunks_with_equal_results(tiny):
    model, _, x = tiny
    split = layersens.split(model, "act")
    full = layersens.jacobian(split, x, mode="fwd")
    narrow = layersens.jacobian(split, x, mode=layersens.Forward(chunk_size=1))
    np.testing.assert_array_equal(full.matrix, narrow.matrix)
    calls = []
    layersens.jacobian(split, x[:1], mode=layersens.Reverse(chunk_size=1), progress=lambda d, t: calls.append((d, t)))
    assert calls[-1] == (108, 108)  # one output row per chunk


def test_a_budget_the_narrowest_chunk_exceeds_is_an_error_naming_both_sizes(tiny):
    model, _, x = tiny
    split = layersens.split(model, "act")
    with pytest.raises(
        layersens.MemoryBudgetError,
        match=r"max_memory is 1 B, but the narrowest chunk of "
        r"fwd\[conv/kernel\+conv/bias\+bn/scale\+bn/bias\] at 1 basis vector\(s\) per chunk needs "
        r"[0-9.]+ KiB of working memory .* Raise --max-memory \(max_memory=\) to at least",
    ):
        layersens.jacobian(split, x, mode="fwd", max_memory=1)


def test_result_metadata_views_and_round_trip(tmp_path, tiny):
    model, _, x = tiny
    jac = layersens.jacobian(layersens.split(model, "act"), x[:2])
    assert jac.column_ranges == {
        "conv/kernel": (0, 27),
        "conv/bias": (27, 30),
        "bn/scale": (30, 33),
        "bn/bias": (33, 36),
    }
    assert jac["conv/kernel"].shape == (2, 6, 6, 3, 3, 3, 1, 3)
    assert np.shares_memory(jac["conv/kernel"], jac.matrix)
    assert jac.excluded_params and "side/kernel" in jac.excluded_params
    assert jac.device.startswith("cpu") and jac.dtype == "float32" and "evaluation mode" in jac.eval_mode
    path = jac.save(tmp_path / "act.npz")
    back = layersens.load_jacobian(path)
    np.testing.assert_array_equal(back.matrix, jac.matrix)
    np.testing.assert_array_equal(back.inputs, jac.inputs)
    assert back.metadata() == jac.metadata()
    assert [p.name for p in tmp_path.iterdir()] == ["act.npz"]  # no temporary file left


def test_jacobian_too_large_names_size_and_fix(lenet_linen, monkeypatch):
    monkeypatch.setattr(layersens.compute._jacobian, "available_memory", lambda: 100 * 2**20)
    with pytest.raises(layersens.JacobianTooLargeError) as info:
        layersens.jacobian(layersens.split(lenet_linen, "relu2"), lenet_linen.example_inputs[:4])
    message = str(info.value)
    assert "583.4 MiB" in message and "4 × 6272 outputs × 6096 parameters × 4 bytes" in message
    assert "--num-examples" in message


def test_flat_params_order_is_forward_order(lenet_linen):
    assert list(layersens.split(lenet_linen, "relu2").params) == [
        "conv1/kernel",
        "conv1/bias",
        "bn1/scale",
        "bn1/bias",
        "conv2/kernel",
        "conv2/bias",
        "bn2/scale",
        "bn2/bias",
    ]
    assert set(flatten_params(lenet_linen.params)) >= set(layersens.split(lenet_linen, "fc2").params)


def test_balanced_chunks_need_no_more_calls_than_the_widest():
    from layersens.planning import balanced_width, chunk_size

    assert balanced_width(128, 109) == 64  # two chunks of 64, not 109 + an overlapping 109
    assert balanced_width(128, 128) == 128 and balanced_width(128, 1) == 1 and balanced_width(7, 3) == 3
    for basis in range(1, 60):
        for most in range(1, basis + 1):
            width = balanced_width(basis, most)
            assert width <= most and -(-basis // width) == -(-basis // most)
    assert chunk_size(128, 1000, 109_000) == 64
    assert chunk_size(128, 1000, 109_000, requested=100) == 100  # a requested size is kept


def test_compiled_programs_fit_the_memory_budget_by_xla_count(lenet_linen):
    from layersens.compute import program_memory

    split = layersens.split(lenet_linen, "fc1")
    x = lenet_linen.example_inputs[:1]
    budget = 4 * 2**20
    reference = layersens.jacobian(split, x, mode="rev")
    # auto (separated and coloured blocks) and reverse mode, whose estimate XLA's count narrows
    for mode in ("auto", "rev"):
        prepared = layersens.prepare(split, x, mode=mode, max_memory=budget)
        result = prepared(x)
        for step in prepared.programs()[0].steps:
            sizes = [program_memory(step.compute, with_arguments=step.linearize is not None)]
            sizes += [program_memory(step.linearize)] if step.linearize is not None else []
            assert max(sizes) <= budget, [b.width for b in prepared.plan.blocks]
        np.testing.assert_allclose(result.matrix, reference.matrix, **TOL[np.float32])
    planned = layersens.plan(split, x[0], mode="rev", max_memory=budget)
    assert prepared.plan.blocks[0].width < planned.blocks[0].width  # narrowed


def test_verify_tells_a_right_jacobian_from_a_wrong_one(lenet_linen):
    import dataclasses

    split = layersens.split(lenet_linen, "relu2")
    jac = layersens.jacobian(split, lenet_linen.example_inputs[:2])
    right = layersens.verify(jac, split, rows=6, entries=4)
    assert right.row_error < 1e-5 and right.difference_error < 2e-2
    wrong_matrix = np.array(jac.matrix)
    wrong_matrix[:, :, 100] *= 1.5  # one parameter's column scaled
    wrong = layersens.verify(dataclasses.replace(jac, matrix=wrong_matrix), split, rows=64, entries=0)
    assert wrong.row_error > 1e-2
    assert "rows against scalar gradients" in right.describe()
