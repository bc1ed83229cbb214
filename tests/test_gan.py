"""The GAN example: the generator differentiated through a frozen discriminator, exactly and only."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import layersens
from layersens.examples import GAN_DIGITS
from layersens.examples.gan import GAN, LATENT, discriminator_loss, generator_loss
from layersens.models import flatten_params, unflatten_params


@pytest.fixture(scope="module")
def gan():
    model = layersens.load_model(GAN_DIGITS)
    return model, model.example_inputs[:6]


def _hand_written_losses(params, batch):
    """The training losses, written from the module's own apply (as train_gan does)."""
    logits = GAN().apply({"params": params}, batch)
    return jax.vmap(discriminator_loss)(logits).mean(), jax.vmap(generator_loss)(logits).mean()


def test_generator_gradient_and_step_equal_a_hand_written_optax_step(gan):
    model, batch = gan
    # float64 on both sides: Adam's first step divides each gradient entry by its own magnitude
    params = jax.tree.map(lambda a: np.asarray(a, np.float64), model.params)
    batch = batch.astype(np.float64)
    split = layersens.split(model, "output", dtype=np.float64, wrt="generator/*")
    assert all(n.startswith("generator/") for n in split.param_names)
    assert set(split.frozen) == {n for n in flatten_params(params) if n.startswith("discriminator/")}

    n = len(batch)
    ours = layersens.readout_gradient(split, batch, readout=lambda logits: generator_loss(logits) / n).total()
    want = flatten_params(
        jax.grad(lambda g: _hand_written_losses({**params, "generator": g}, batch)[1])(params["generator"])
    )
    for name, value in want.items():
        np.testing.assert_allclose(ours[f"generator/{name}"], value, rtol=1e-10, atol=1e-12, err_msg=name)

    optimizer = optax.adam(1e-3, b1=0.5)
    state = optimizer.init(params["generator"])
    ours_tree = unflatten_params({k[len("generator/") :]: v for k, v in ours.items()})
    updates, _ = optimizer.update(ours_tree, state, params["generator"])
    stepped = {**params, "generator": optax.apply_updates(params["generator"], updates)}
    hand_updates, _ = optimizer.update(unflatten_params(want), state, params["generator"])
    hand = optax.apply_updates(params["generator"], hand_updates)
    for name, value in flatten_params(hand).items():
        np.testing.assert_allclose(flatten_params(stepped["generator"])[name], value, rtol=1e-10, atol=1e-12)
    for name, value in flatten_params(params["discriminator"]).items():  # untouched, bit for bit
        np.testing.assert_array_equal(flatten_params(stepped["discriminator"])[name], value)


def test_gradients_do_not_depend_on_the_order_they_are_taken_in(gan):
    model, batch = gan
    d_split = layersens.split(model, "output", wrt="discriminator/*")
    g_split = layersens.split(model, "output", wrt="generator/*")
    d_first = layersens.readout_gradient(d_split, batch, discriminator_loss)
    g_second = layersens.readout_gradient(g_split, batch, generator_loss)
    g_first = layersens.readout_gradient(g_split, batch, generator_loss)
    d_second = layersens.readout_gradient(d_split, batch, discriminator_loss)
    np.testing.assert_array_equal(d_first.gradient, d_second.gradient)
    np.testing.assert_array_equal(g_first.gradient, g_second.gradient)
    want = flatten_params(
        jax.grad(lambda d: _hand_written_losses({**model.params, "discriminator": d}, batch)[0])(
            model.params["discriminator"]
        )
    )
    for name, value in want.items():
        np.testing.assert_allclose(d_first.total()[f"discriminator/{name}"] / len(batch), value, rtol=1e-5, atol=1e-7)


def test_the_discriminators_first_activation_with_respect_to_the_generator(gan):
    model, batch = gan
    split = layersens.split(model, "discriminator/act1#0", wrt="generator/*")
    jac = layersens.jacobian(split, batch)
    p = flatten_params(model.params)

    def act1(g, x):  # by hand: D's first activation on G(z)
        h = jax.nn.relu(x[:LATENT] @ g["generator/fc1/kernel"] + g["generator/fc1/bias"])
        image = jnp.tanh(h @ g["generator/fc2/kernel"] + g["generator/fc2/bias"])
        return jax.nn.leaky_relu(image @ p["discriminator/fc1/kernel"] + p["discriminator/fc1/bias"], 0.2)

    g = {k: v for k, v in p.items() if k.startswith("generator/")}
    for n, x in enumerate(batch):
        reference = jax.jacrev(act1)(g, x)
        for name in split.param_names:
            np.testing.assert_allclose(jac[name][n], reference[name], rtol=2e-5, atol=2e-6, err_msg=name)


def test_the_cli_lists_the_differentiated_and_the_frozen_leaves(tmp_path):
    from click.testing import CliRunner

    from layersens_cli.main import main

    result = CliRunner().invoke(
        main,
        [
            "gradient",
            "--layer",
            "output",
            "--model",
            str(GAN_DIGITS),
            "--readout",
            "unit:0",
            "--wrt",
            "generator/*",
            "--out",
            str(tmp_path / "g.npz"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "4 leaves (differentiated): generator/fc1/kernel (8, 32)" in result.stdout
    assert "frozen      4 upstream leaves held constant: discriminator/fc1/kernel" in result.stdout
    result = CliRunner().invoke(
        main,
        [
            "extract",
            "--layer",
            "output",
            "--model",
            str(GAN_DIGITS),
            "--wrt",
            "nothing*",
            "--out",
            str(tmp_path / "x.npz"),
        ],
    )
    assert result.exit_code == 1
    assert "wrt nothing* selects none of the leaves upstream of the layer; they are: generator/fc1/kernel" in (
        result.stderr
    )
    assert not (tmp_path / "x.npz").exists()


def test_the_training_script_runs_and_its_losses_are_finite(tmp_path, monkeypatch):
    from layersens.examples import train_gan

    model, params, d_value, g_value, inputs = train_gan.train(steps=3)
    assert np.isfinite(d_value) and np.isfinite(g_value) and inputs.shape == (16, 72)
