"""Layer naming, upstream parameters from the traced computation, and the split function."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax._src.interpreters import partial_eval as pe

import layersens
from layersens.analysis import input_dependence
from layersens.models import flatten_params, unflatten_params
from tests.tiny_models import TinyCNN, TinyCNNNNX, random_linen_variables


@pytest.fixture(scope="module")
def tiny_linen():
    module = TinyCNN()
    return layersens.from_linen(
        module, random_linen_variables(module, (6, 6, 1)), (6, 6, 1), call_kwargs={"train": False}
    )


@pytest.fixture(scope="module")
def tiny_nnx():
    model = TinyCNNNNX(rngs=nnx_rngs())
    return layersens.from_nnx(model, (6, 6, 1))


def nnx_rngs():
    from flax import nnx

    return nnx.Rngs(0)


def test_layer_names_cover_submodules_sown_values_and_output(tiny_linen, tiny_nnx):
    for model in (tiny_linen, tiny_nnx):
        names = [info.name for info in layersens.list_layers(model)]
        assert {"side", "conv", "bn", "act", "res", "head", "output"} <= set(names)
        assert names.index("conv") < names.index("act") < names.index("res") < names.index("head")


def test_side_branch_run_first_is_not_upstream(tiny_linen, tiny_nnx):
    for model in (tiny_linen, tiny_nnx):
        split = layersens.split(model, "act")
        assert split.param_names == ("conv/kernel", "conv/bias", "bn/scale", "bn/bias")
        assert "side/kernel" in split.excluded and "head/kernel" in split.excluded
        output = layersens.split(model, "output")
        assert "side/kernel" in output.param_names and "res/kernel" in output.param_names


def test_dependence_matches_jax_dead_code_elimination(tiny_linen):
    """The private DCE of JAX is an independent oracle for which inputs each output needs."""
    flat = flatten_params(tiny_linen.params)
    names = list(flat)
    x = jnp.zeros((1, 6, 6, 1))

    def f(leaves):
        captured = tiny_linen.capture(unflatten_params(dict(zip(names, leaves))), x)
        return [captured[k] for k in sorted(captured)]

    leaves = [flat[n] for n in names]
    ours = input_dependence(f, leaves)
    closed = jax.make_jaxpr(f)(leaves)
    for k in range(len(ours)):
        used_outputs = [i == k for i in range(len(closed.jaxpr.outvars))]
        _, used_inputs = pe.dce_jaxpr(closed.jaxpr, used_outputs)
        assert ours[k] == {i for i, u in enumerate(used_inputs) if u}


def test_dependence_through_cond_is_conservative():
    def f(a, b, c):
        return jax.lax.cond(a.sum() > 0, lambda: a * 2, lambda: b), c

    deps = input_dependence(f, jnp.ones(2), jnp.ones(2), jnp.ones(2))
    assert deps == [frozenset({0, 1}), frozenset({2})]


def test_split_apply_equals_the_model(tiny_linen):
    split = layersens.split(tiny_linen, "act")
    x = np.random.default_rng(0).normal(size=(6, 6, 1)).astype(np.float32)
    full = tiny_linen.capture(tiny_linen.params, x[None])["act"][0]
    np.testing.assert_allclose(split.apply(split.params, x), full, rtol=1e-6)


def test_nothing_after_the_split_point_is_compiled(lenet_linen):
    split = layersens.split(lenet_linen, "relu1")
    x = lenet_linen.example_inputs[0]
    hlo = jax.jit(split.apply).lower(split.params, x).compile().as_text()
    assert "convolution" in hlo
    assert " dot(" not in hlo and "reduce-window" not in hlo  # fc1/fc2 and max-pools are gone


def test_lenet_layers_and_upstream_counts(lenet_linen, lenet_nnx):
    for model in (lenet_linen, lenet_nnx):
        infos = {info.name: info for info in layersens.list_layers(model)}
        assert list(infos)[:9] == ["conv1", "bn1", "relu1", "conv2", "bn2", "relu2", "fc1", "relu3", "fc2"]
        assert infos["relu1"].shape == (28, 28, 20) and infos["relu1"].num_outputs == 15680
        assert infos["relu1"].num_upstream_params == 240
        assert infos["relu2"].num_upstream_params == 6096
        assert infos["fc1"].num_upstream_params == 206928
        assert infos["relu1"].jacobian_bytes_per_example == 15680 * 240 * 4


def test_unknown_layer_lists_names_and_closest_match(lenet_linen):
    with pytest.raises(layersens.UnknownLayerError) as info:
        layersens.split(lenet_linen, "relu_1")
    message = str(info.value)
    assert "unknown layer 'relu_1'" in message
    assert "Did you mean 'relu1'?" in message
    assert "conv1, bn1, relu1, conv2" in message


def test_wrong_input_shape_names_both_shapes(lenet_linen):
    with pytest.raises(layersens.InputShapeError, match=r"shape \(3, 28, 28\).*\(examples,\) \+ \(28, 28, 1\)"):
        lenet_linen.check_inputs(np.zeros((3, 28, 28)))


def test_train_mode_linen_model_is_refused_with_the_fix():
    module = TinyCNN()
    model = layersens.from_linen(
        module, random_linen_variables(module, (6, 6, 1)), (6, 6, 1), call_kwargs={"train": True}
    )
    with pytest.raises(layersens.TrainModeError, match=r"training mode.*call_kwargs=\{'train': False\}"):
        layersens.split(model, "act")


def test_float64_needs_x64_message():
    module = TinyCNN()
    model = layersens.from_linen(
        module, random_linen_variables(module, (6, 6, 1)), (6, 6, 1), call_kwargs={"train": False}
    )
    jax.config.update("jax_enable_x64", False)
    try:
        with pytest.raises(layersens.SelectionError, match="jax_enable_x64"):
            layersens.split(model, "act", dtype=np.float64)
    finally:
        jax.config.update("jax_enable_x64", True)
