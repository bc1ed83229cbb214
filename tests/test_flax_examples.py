"""The architectures of Flax's own examples (tests/flax_examples.py), as their users build them: saved as built,
loaded through the command line, listed, and extracted, each Jacobian against jax.jacrev of the model's own
apply (linen) or call (NNX)."""

import jax
import numpy as np
import pytest
from click.testing import CliRunner

import layersens
from layersens.models import flatten_params
from layersens_cli.main import main
from tests import flax_examples as fx
from tests.compile_options import fast_jit

# float32 models against float32 jax.jacrev of another program: relative to the largest entry
RTOL, ATOL_SCALE = 1e-4, 1e-5


def cli(*args):
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    if "--allow-import" in args:
        assert "importing tests.flax_examples" in result.stderr and "runs its code" in result.stderr
    return result.stdout


def _linen_case(name):
    example = fx.EXAMPLES[name]
    module, variables = example.build(0)
    return example, module, variables


def _inputs(example, n=2):
    if example.input_dtype == "int32":
        return np.asarray(fx.lm_tokens(n, seed=1))
    return np.random.default_rng(1).normal(size=(n,) + tuple(example.input_shape)).astype(example.input_dtype)


def _reference(value):
    """``jax.jacrev`` of ``value(params, one example)`` per example, compiled without XLA's backend optimizations
    (as test_zoo's and test_random_architectures' references: a fraction of the compile time, and the float32
    results well inside RTOL)."""
    return fast_jit(jax.vmap(jax.jacrev(value), in_axes=(None, 0)))


def _compare(jac, reference: dict, n):
    """Every upstream leaf of ``jac`` equals the reference; every other reference leaf is zero."""
    scale = max(float(np.max(np.abs(v))) for v in reference.values()) or 1.0
    for name, want in reference.items():
        if name in jac.param_names:
            np.testing.assert_allclose(jac[name][n], want, rtol=RTOL, atol=ATOL_SCALE * scale, err_msg=name)
        else:
            assert not np.any(want), f"{name} moves the layer but is not upstream"


def _attention_weights(captured, block):
    """Flax's attention weights by hand from the captured query and key: softmax(q·k/√d), causal."""
    import jax.numpy as jnp

    q = captured[f"{block}/query"][0]
    k = captured[f"{block}/key"][0]
    logits = jnp.einsum("qhd,khd->hqk", q / jnp.sqrt(q.shape[-1]), k)
    causal = jnp.tril(jnp.ones((q.shape[0], k.shape[0]), bool))
    return jax.nn.softmax(jnp.where(causal, logits, jnp.finfo(logits.dtype).min), axis=-1)


# Values between modules, written by hand from the module outputs the framework captures itself.
DERIVED = {
    "relu_0": lambda c: jax.nn.relu(c["Conv_0"][0]),
    "decoderblock_0/MultiHeadDotProductAttention_0/softmax_0": lambda c: _attention_weights(
        c, "decoderblock_0/MultiHeadDotProductAttention_0"
    ),
}

LINEN = {
    # example -> (layers to extract, names that `layers` must list)
    "mnist_cnn": (("Conv_0", "relu_0"), ("Conv_0", "relu_0", "relu_1", "Conv_1", "Dense_1", "output")),
    "resnet": (("bn_init", "ResNetBlock_1/norm_proj"), ("conv_init", "ResNetBlock_0", "Dense_0")),
    "decoder_lm": (
        ("decoderblock_0/MultiHeadDotProductAttention_0/softmax_0", "decoderblock_0/MlpBlock_0"),
        ("embed", "decoderblock_0/MultiHeadDotProductAttention_0", "logitdense"),
    ),
}


@pytest.mark.parametrize("name", sorted(LINEN))
def test_linen_example_saved_as_built_then_listed_and_extracted_by_the_cli(name, tmp_path):
    example, module, variables = _linen_case(name)
    x = _inputs(example)
    directory = layersens.save_model(
        tmp_path / name,
        module,
        variables,
        input_shape=example.input_shape,
        input_dtype=example.input_dtype,
        call_kwargs=example.call_kwargs,
        example_inputs=x,
    )
    listed = cli("layers", "--model", directory, "--allow-import")
    assert "importing tests.flax_examples" not in listed  # announced on stderr, apart from the table
    extract_layers, listed_names = LINEN[name]
    for layer in listed_names + extract_layers:
        assert layer in listed, layer
    unboxed = layersens.unbox(variables)
    rest = {k: v for k, v in unboxed.items() if k != "params"}
    model = layersens.load_model(directory, allow_import=True)
    for layer in extract_layers:
        out = tmp_path / f"{layer.replace('/', '_')}.npz"
        cli("extract", "--layer", layer, "--model", directory, "--allow-import", "--num-examples", 2, "--out", out)
        jac = layersens.load_jacobian(out)

        def value(params, xn):
            captured = model.capture(params, xn[None])
            return DERIVED[layer](captured) if layer in DERIVED else captured[layer][0]

        references = _reference(value)(unboxed["params"], x)
        for n in range(2):
            _compare(jac, flatten_params(jax.tree.map(lambda r, n=n: r[n], references)), n)
        assert rest.keys() == model.constants.keys()


NNX = {
    "nnx_mnist_cnn": (dict(), ("conv1", "linear1"), ("conv1", "batch_norm1", "linear2", "output")),
    "nnx_vae": (
        dict(factory=fx.make_nnx_vae, kwargs={"seed": 0}),
        ("encoder/linear_mean", "output"),
        ("encoder/linear1", "decoder", "output"),
    ),
    "nnx_scan_mlp": (dict(kwargs={"dim": fx.SCAN_DIM, "n_layers": fx.SCAN_LAYERS}), ("output",), ("output",)),
}


@pytest.mark.parametrize("name", sorted(NNX))
def test_nnx_example_saved_as_built_then_listed_and_extracted_by_the_cli(name, tmp_path):
    example = fx.EXAMPLES[name]
    model = example.build(0)
    x = _inputs(example)
    model(x[:1]) if name != "nnx_mnist_cnn" else None  # a forward call first, as the examples do (sows kl_loss)
    save_options, extract_layers, listed_names = NNX[name]
    directory = layersens.save_model(
        tmp_path / name,
        model,
        input_shape=example.input_shape,
        input_dtype=example.input_dtype,
        example_inputs=x,
        **save_options,
    )
    listed = cli("layers", "--model", directory, "--allow-import")
    for layer in listed_names:
        assert layer in listed, layer
    loaded = layersens.load_model(directory, allow_import=True)
    for layer in extract_layers:
        out = tmp_path / f"{layer.replace('/', '_')}.npz"
        printed = cli(
            "extract", "--layer", layer, "--model", directory, "--allow-import", "--num-examples", 2, "--out", out
        )
        if name == "nnx_vae":  # the noise is drawn after the encoder's linear layers, before the output
            assert ("draws random numbers" in printed and "reproducible" in printed) == (layer == "output")
        jac = layersens.load_jacobian(out)

        def value(params, xn):
            return loaded.capture(params, xn[None])[layer][0]

        references = _reference(value)(loaded.params, x)
        for n in range(2):
            _compare(jac, flatten_params(jax.tree.map(lambda r, n=n: r[n], references)), n)
    # the loaded model is the saved one: same parameters, and the same noise for the VAE
    np.testing.assert_array_equal(
        np.asarray(layersens.split(loaded, "output").apply(layersens.split(loaded, "output").params, x[0])),
        np.asarray(
            layersens.split(layersens.from_nnx(model, example.input_shape), "output").apply(
                layersens.split(layersens.from_nnx(model, example.input_shape), "output").params, x[0]
            )
        ),
    )


def test_reference_jacobian_is_the_models_own_apply_for_linen():
    """The loaded model's capture is the module's own apply: the reference above is not circular."""
    example, module, variables = _linen_case("mnist_cnn")
    model = layersens.from_linen(module, variables, example.input_shape)
    x = _inputs(example, 1)
    direct = fx.linen_param_jacobian(module, variables, x[0], "Conv_0")
    ours = layersens.jacobian(layersens.split(model, "Conv_0"), x)
    _compare(ours, flatten_params(direct), 0)


def test_boxed_parameters_straight_from_init_work_everywhere(tmp_path):
    example, module, variables = _linen_case("decoder_lm")
    assert any(
        "LogicallyPartitioned" in type(v).__name__
        for v in jax.tree.leaves(variables, is_leaf=lambda v: hasattr(v, "names"))
    )
    model = layersens.from_linen(module, variables, example.input_shape, example.input_dtype)
    jac = layersens.jacobian(layersens.split(model, "decoderblock_0/MlpBlock_0"), _inputs(example, 1))
    assert jac.matrix.dtype == np.float32 and np.isfinite(jac.matrix).all()


def test_resnet_with_block_class_and_config_transformer_are_recorded_by_import_path(tmp_path):
    _, resnet, variables = _linen_case("resnet")
    spec = layersens.read_model_spec(
        layersens.save_model(
            tmp_path / "resnet", resnet, variables, input_shape=fx.RESNET_INPUT_SHAPE, call_kwargs={"train": False}
        )
    )
    assert spec.module == "tests.flax_examples:ResNet"
    assert spec.kwargs["block_cls"] == {"__class__": "tests.flax_examples:ResNetBlock"}
    assert spec.kwargs["stage_sizes"] == {"__tuple__": [1, 1]}
    _, lm, variables = _linen_case("decoder_lm")
    spec = layersens.read_model_spec(
        layersens.save_model(tmp_path / "lm", lm, variables, input_shape=fx.LM_INPUT_SHAPE, input_dtype="int32")
    )
    assert spec.kwargs["config"]["__dataclass__"] == "tests.flax_examples:TransformerConfig"
    assert spec.kwargs["config"]["fields"] == {"deterministic": True}


def test_a_notebook_class_says_what_could_not_be_recorded(tmp_path):
    import flax.linen as nn

    class Local(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(2)(x)

    variables = Local().init(jax.random.key(0), np.ones((1, 3), np.float32))
    with pytest.raises(
        layersens.SpecError,
        match=r"cannot record module class Local: .*defined in a script, "
        r"notebook or function.*move it to a module file",
    ):
        layersens.save_model(tmp_path / "m", Local(), variables, input_shape=(3,))
    assert not (tmp_path / "m").exists()
    model = layersens.from_linen(Local(), variables, (3,))  # in memory it works
    assert layersens.split(model, "Dense_0").param_names == ("Dense_0/kernel", "Dense_0/bias")


def test_dtype_float64_on_a_float32_module_warns_naming_the_module():
    _, module, variables = _linen_case("resnet")
    model = layersens.from_linen(module, variables, fx.RESNET_INPUT_SHAPE, call_kwargs={"train": False})
    with pytest.warns(
        layersens.PrecisionWarning,
        match=r"float64 was asked for, but 'conv_init' computes in "
        r"float32",
    ):
        split = layersens.split(model, "bn_init", dtype="float64")
    assert any("conv_init" in note for note in split.notes)
    jac = layersens.jacobian(split, np.ones((1,) + fx.RESNET_INPUT_SHAPE))
    assert jac.dtype == "float32" and any("float32" in note for note in jac.notes)


def test_train_mode_batchnorm_without_its_statistics_says_which_collection(tmp_path):
    _, module, variables = _linen_case("resnet")
    model = layersens.from_linen(
        module, {"params": variables["params"]}, fx.RESNET_INPUT_SHAPE, call_kwargs={"train": False}
    )
    with pytest.raises(layersens.TrainModeError, match=r"reads a variable its variables lack.*'batch_stats'"):
        layersens.list_layers(model)


@pytest.mark.filterwarnings("ignore:SelfAttention will be deprecated:DeprecationWarning")  # flax's own, on purpose
def test_attention_calling_super_is_listed_once_by_its_plain_name():
    import flax.linen as nn

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.SelfAttention(num_heads=2, qkv_features=4)(x)

    x = np.ones((1, 3, 4), np.float32)
    model = layersens.from_linen(Net(), Net().init(jax.random.key(0), x), (3, 4))
    names = [info.name for info in layersens.list_layers(model)]
    assert "SelfAttention_0" in names and not any(n.startswith("SelfAttention_0#") for n in names)
    assert "SelfAttention_0/softmax_0" in names  # the attention weights


def test_any_function_with_marked_capture_points():
    import jax.numpy as jnp

    def apply_fn(params, x):
        h = layersens.capture("hidden", jnp.tanh(x @ params["w1"] + params["b1"]))
        return {"logits": h @ params["w2"], "h2": layersens.capture("again", h * 2)}

    rng = np.random.default_rng(0)
    params = {"w1": rng.normal(size=(3, 4)), "b1": rng.normal(size=4), "w2": rng.normal(size=(4, 2))}
    model = layersens.from_function(apply_fn, params, input_shape=(3,), input_dtype="float64")
    names = [info.name for info in layersens.list_layers(model)]
    assert {"hidden", "again", "output/logits", "output/h2"} <= set(names)
    x = rng.normal(size=(2, 3))
    split = layersens.split(model, "hidden")
    assert split.param_names == ("w1", "b1")
    jac = layersens.jacobian(split, x)
    for n in range(2):
        reference = jax.jacrev(lambda p: jnp.tanh(x[n] @ p["w1"] + p["b1"]))(params)
        for name in ("w1", "b1"):
            np.testing.assert_allclose(jac[name][n], reference[name], rtol=1e-12, atol=1e-14)
