"""What is differentiated: parameter subsets, the input, an earlier layer; one linearization with many products;
readout gradients, Hessian-vector products and Hessians; complex values under a convention. Each against an independent
computation in float64."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import layersens
from tests.conftest import TOL
from tests.tiny_models import TinyCNN, random_linen_variables, tiny_cnn_act_flat

TOL64 = dict(rtol=1e-9, atol=1e-11)


@pytest.fixture(scope="module")
def tiny():
    module = TinyCNN()
    variables = random_linen_variables(module, (6, 6, 1))
    model = layersens.from_linen(module, variables, (6, 6, 1), call_kwargs={"train": False})
    x = np.random.default_rng(1).normal(size=(2, 6, 6, 1))
    return model, variables, x


def test_glob_patterns_and_exclusions_select_exactly_the_named_leaves(tiny):
    model, _, x = tiny
    split = layersens.split(model, "act", dtype=np.float64, wrt=["conv/*", "bn/scale"])
    assert split.param_names == ("conv/kernel", "conv/bias", "bn/scale") and split.frozen == ("bn/bias",)
    assert layersens.split(model, "act", wrt="!conv/*").param_names == ("bn/scale", "bn/bias")
    from flax import nnx

    assert layersens.split(model, "act", wrt=nnx.PathContains("bn")).param_names == ("bn/scale", "bn/bias")
    full = layersens.jacobian(layersens.split(model, "act", dtype=np.float64), x)
    part = layersens.jacobian(split, x)
    assert part.frozen_params == ("bn/bias",) and part.param_names == split.param_names
    for name in split.param_names:
        np.testing.assert_array_equal(part[name], full[name])
    with pytest.raises(
        layersens.SelectionError,
        match=r"wrt head/\* selects none of the leaves upstream of the layer; "
        r"they are: conv/kernel, conv/bias, bn/scale, bn/bias",
    ):
        layersens.split(model, "act", wrt="head/*")


@pytest.mark.parametrize("mode", ["fwd", "rev", "auto", "structured"])
def test_jacobian_with_respect_to_the_input(tiny, mode):
    model, variables, x = tiny
    split = layersens.split(model, "act", dtype=np.float64, wrt="input")
    assert split.param_names == ("input",) and str(split.wrt) == "input"
    assert split.differentiated.kind is layersens.tracing.WrtKind.INPUT and split.differentiated.frozen
    jac = layersens.jacobian(split, x, mode=mode)
    params = {k: jnp.asarray(v, jnp.float64) for k, v in layersens.models.flatten_params(model.params).items()}
    constants = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), dict(variables["batch_stats"]))
    for n in range(len(x)):
        reference = jax.jacrev(lambda xi: tiny_cnn_act_flat(params, constants, xi))(jnp.asarray(x[n]))
        np.testing.assert_allclose(jac["input"][n], reference, **TOL64)


class Chain(nn.Module):
    @nn.compact
    def __call__(self, x):
        a = jnp.tanh(nn.Dense(4, name="first")(x))
        self.sow("intermediates", "a", a)
        b = nn.Dense(3, name="second")(a) * x[..., :3]  # the input also reaches b directly
        return nn.Dense(2, name="third")(jnp.sin(b))


def test_layer_to_layer_jacobian_is_the_partial_through_that_activation():
    module = Chain()
    variables = module.init(jax.random.key(0), jnp.ones((1, 5)))
    model = layersens.from_linen(module, variables, (5,))
    split = layersens.split(model, "output", dtype=np.float64, wrt_layer="a")
    assert split.param_names == ("a",) and str(split.wrt) == "layer:a"
    assert split.wrt == layersens.Wrt.at_layer("a")
    x = np.random.default_rng(2).normal(size=(3, 5))
    p = jax.tree.map(lambda v: jnp.asarray(v, jnp.float64), variables["params"])

    def rest(a, xi):  # output as a function of a, with x held fixed
        b = (a @ p["second"]["kernel"] + p["second"]["bias"]) * xi[:3]
        return jnp.sin(b) @ p["third"]["kernel"] + p["third"]["bias"]

    for mode in ("fwd", "rev", "auto"):
        jac = layersens.jacobian(split, x, mode=mode)
        for n in range(3):
            a = jnp.tanh(x[n] @ p["first"]["kernel"] + p["first"]["bias"])
            np.testing.assert_allclose(jac["a"][n], jax.jacrev(rest)(a, jnp.asarray(x[n])), **TOL64)
            np.testing.assert_allclose(jac.activation[n], rest(a, x[n]), **TOL64)
    with pytest.raises(layersens.UnknownLayerError, match="unknown wrt_layer 'b'"):
        layersens.split(model, "output", wrt_layer="b")
    with pytest.raises(layersens.SelectionError, match="'first' does not depend on 'a'"):
        layersens.split(model, "first", wrt_layer="a")


def test_one_linearization_gives_every_product_and_the_dense_jacobian(tiny):
    model, _, x = tiny
    split = layersens.split(model, "act", dtype=np.float64)
    op = layersens.linearize(split, x)
    dense = layersens.jacobian(split, x).matrix
    n, m, p = op.shape
    assert (n, m, p) == dense.shape
    rng = np.random.default_rng(3)
    v, u = rng.normal(size=p), rng.normal(size=(n, m))
    V, U = rng.normal(size=(n, p, 4)), rng.normal(size=(n, m, 5))
    np.testing.assert_allclose(op.jvp(v), dense @ v, **TOL64)
    np.testing.assert_allclose(op.vjp(u), np.einsum("nmp,nm->np", dense, u), **TOL64)
    np.testing.assert_allclose(op.matmat(V), dense @ V, **TOL64)
    np.testing.assert_allclose(op.rmatmat(U), np.swapaxes(dense, 1, 2) @ U, **TOL64)
    np.testing.assert_allclose(op.to_dense(), dense, **TOL64)
    leaves = {k: rng.normal(size=np.shape(val)) for k, val in split.params.items()}
    flat = np.concatenate([leaves[k].ravel() for k in split.param_names])
    np.testing.assert_allclose(op.jvp(leaves), dense @ flat, **TOL64)


@jax.custom_vjp
def _soft(x):
    return jnp.tanh(x)


_soft.defvjp(lambda x: (jnp.tanh(x), x), lambda x, g: ((1 - jnp.tanh(x) ** 2) * g,))


class Custom(nn.Module):
    @nn.compact
    def __call__(self, x):
        return _soft(nn.Dense(3, name="dense")(x))


class Looped(nn.Module):
    @nn.compact
    def __call__(self, x):
        w = self.param("w", nn.initializers.normal(0.5), (3, 3))
        return jax.lax.while_loop(lambda c: c[0] < 3, lambda c: (c[0] + 1, jnp.tanh(c[1] @ w)), (0, x))[1]


@pytest.mark.parametrize("module", [Custom(), Looped()], ids=["custom_vjp", "while_loop"])
def test_the_operator_through_modes_jax_cannot_run_in_one_direction(module):
    variables = module.init(jax.random.key(1), jnp.ones((1, 3)))
    split = layersens.split(layersens.from_linen(module, variables, (3,)), "output", dtype=np.float64)
    x = np.random.default_rng(4).normal(size=(2, 3))
    op = layersens.linearize(split, x)
    dense = layersens.jacobian(split, x).matrix
    v = np.random.default_rng(5).normal(size=split.num_params)
    np.testing.assert_allclose(op.jvp(v), dense @ v, **TOL64)
    if isinstance(module, Looped):
        with pytest.raises(layersens.LayersensError, match="no reverse products .* through a while_loop"):
            op.vjp(np.ones((2, 3)))
    else:
        np.testing.assert_allclose(op.vjp(np.ones((2, 3))), dense.sum(axis=1), **TOL64)
    np.testing.assert_allclose(op.to_dense(), dense, **TOL64)


@pytest.mark.parametrize("readout", ["sum", "unit:2,3,1", lambda h: jnp.sum(h**2)], ids=["sum", "unit", "fn"])
def test_readout_gradient_hvp_and_hessian_against_finite_differences(tiny, readout):
    model, _, x = tiny
    split = layersens.split(model, "act", dtype=np.float64, wrt="bn/*")
    fn, _ = layersens.derivatives.readout_function(readout, split.activation_shape)
    names = split.param_names

    def scalar(theta, xn):
        leaves = {"bn/scale": theta[:3], "bn/bias": theta[3:]}
        return fn(split.apply(leaves, xn))

    theta = np.concatenate([np.ravel(split.params[k]) for k in names])
    result = layersens.hessian(split, x, readout)
    grads = layersens.readout_gradient(split, x, readout)
    np.testing.assert_allclose(result.gradient, grads.gradient, **TOL64)
    v = np.random.default_rng(6).normal(size=theta.size)
    hv = layersens.hvp(split, x, v, readout)
    h = 1e-5
    for n in range(len(x)):
        grad = jax.grad(scalar)
        np.testing.assert_allclose(grads.gradient[n], grad(theta, x[n]), **TOL64)
        for j in range(theta.size):  # central differences of the gradient, column by column
            e = np.zeros_like(theta)
            e[j] = h
            column = (np.asarray(grad(theta + e, x[n])) - np.asarray(grad(theta - e, x[n]))) / (2 * h)
            np.testing.assert_allclose(result.hessian[n][:, j], column, rtol=1e-6, atol=1e-8)
        np.testing.assert_allclose(hv[n], result.hessian[n] @ v, **TOL64)
    np.testing.assert_allclose(result.hessian, np.swapaxes(result.hessian, 1, 2), **TOL64)


def test_the_full_hessian_is_refused_for_many_parameters_with_the_way_out(tiny):
    model, _, x = tiny
    x = x.astype(np.float32)  # the split computes in float32: a float64 batch would be cast, with an InputWarning
    with pytest.raises(
        layersens.JacobianTooLargeError,
        match=r"computed for at most 10.*Select fewer leaves "
        r"\(wrt=, --wrt\), or use Hessian-vector products",
    ):
        layersens.hessian(layersens.split(model, "act"), x, max_params=10)
    with pytest.raises(
        layersens.SelectionError, match=r"readout is 'unit:99,0,0'; use 'sum', a unit of the activation"
    ):
        layersens.readout_gradient(layersens.split(model, "act"), x, "unit:99,0,0")


def test_complex_parameters_and_layers_need_a_convention_then_take_it():
    """A model of any function (from_function, layersens.capture) with complex values: refused without a
    convention, naming the three; with one, its Jacobian against jax.jacfwd of the parts split by hand."""

    def apply_fn(params, x):
        return jnp.real(x @ params["w"])

    w = (np.arange(6).reshape(3, 2) + 1j * np.arange(6, 12).reshape(3, 2)).astype(np.complex64)
    model = layersens.from_function(apply_fn, {"w": w}, (3,))
    with pytest.raises(
        layersens.SelectionError,
        match=r"leaf 'w' is complex; choose how its Jacobian is stated: complex_mode='real' .* on the command line "
        r"--complex real\|complex\|holomorphic\.",
    ):
        layersens.split(model, "output")
    x = np.random.default_rng(0).normal(size=(2, 3)).astype(np.float32)
    real = layersens.jacobian(layersens.split(model, "output", complex_mode="real"), x)
    assert real.param_names == ("w.real", "w.imag")
    for n in range(2):
        dx, dy = jax.jacfwd(lambda a, b: jnp.real(x[n] @ (a + 1j * b)), argnums=(0, 1))(w.real, w.imag)
        np.testing.assert_allclose(real["w.real"][n], dx, **TOL[np.float32])
        np.testing.assert_allclose(real["w.imag"][n], dy, **TOL[np.float32])

    def complex_out(params, x):
        return layersens.capture("z", (x @ params["w"]) * (1 + 1j))

    model = layersens.from_function(complex_out, {"w": np.ones((3, 2), np.float32)}, (3,))
    with pytest.raises(layersens.SelectionError, match=r"layer 'z' is complex \(complex64\); choose"):
        layersens.split(model, "z")
    stated = layersens.jacobian(layersens.split(model, "z", complex_mode="complex"), x)
    for n in range(2):
        want = jax.jacfwd(lambda v: (x[n] @ v) * (1 + 1j))(np.ones((3, 2), np.float32))
        np.testing.assert_allclose(stated["w"][n], want, **TOL[np.float32])


def test_products_and_hessian_vector_products_from_the_command_line(tmp_path):
    from click.testing import CliRunner

    from layersens.examples import LENET_DIGITS
    from layersens_cli.main import main

    model = layersens.load_model(LENET_DIGITS)
    split = layersens.split(model, "relu1", wrt="bn1/*")
    x = model.example_inputs[:2]
    dense = layersens.jacobian(split, x).matrix
    rng = np.random.default_rng(7)
    np.save(tmp_path / "v.npy", rng.normal(size=(40, 3)).astype(np.float32))
    np.save(tmp_path / "u.npy", rng.normal(size=(2, 15680)).astype(np.float32))
    result = CliRunner().invoke(
        main,
        [
            "products",
            "--layer",
            "relu1",
            "--model",
            str(LENET_DIGITS),
            "--wrt",
            "bn1/*",
            "--num-examples",
            "2",
            "--tangents",
            str(tmp_path / "v.npy"),
            "--cotangents",
            str(tmp_path / "u.npy"),
            "--out",
            str(tmp_path / "p.npz"),
        ],
    )
    assert result.exit_code == 0, result.output
    with np.load(tmp_path / "p.npz") as saved:
        np.testing.assert_allclose(saved["jvp"], dense @ np.load(tmp_path / "v.npy"), rtol=1e-4, atol=1e-3)
        np.testing.assert_allclose(
            saved["vjp"][..., 0], np.einsum("nmp,nm->np", dense, np.load(tmp_path / "u.npy")), rtol=1e-4, atol=1e-2
        )
    np.save(tmp_path / "h.npy", rng.normal(size=6).astype(np.float32))
    result = CliRunner().invoke(
        main,
        [
            "hessian",
            "--layer",
            "fc2",
            "--model",
            str(LENET_DIGITS),
            "--wrt",
            "fc2/bias",
            "--num-examples",
            "1",
            "--readout",
            "unit:3",
            "--vectors",
            str(tmp_path / "h.npy"),
            "--out",
            str(tmp_path / "h"),
        ],
    )
    assert result.exit_code == 1 and "vectors have shape (6,); expected (10,)" in result.stderr
