"""Trains the shipped GAN on scikit-learn's 8×8 digits and writes its checkpoint (``gan_digits``).

    python -m layersens.examples.train_gan [--steps 3000] [--seed 0]

Alternating optax Adam steps: the discriminator on its own parameters, then the generator on its own (the
discriminator frozen). The checkpoint's default inputs are 16 (latent code, real image) pairs.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import optax

from layersens import save_model
from layersens.examples import GAN_DIGITS
from layersens.examples.gan import GAN, INPUT_SHAPE, LATENT, discriminator_loss, generator_loss

NUM_EXAMPLE_INPUTS = 16


def load_images():
    from sklearn.datasets import load_digits

    images = load_digits().images.reshape(-1, 64).astype(np.float32)
    return images / 8.0 - 1.0  # pixels 0..16 -> [-1, 1]


def pairs(rng, images, n):
    z = rng.normal(size=(n, LATENT)).astype(np.float32)
    real = images[rng.integers(0, len(images), n)]
    return np.concatenate([z, real], axis=1)


def train(steps: int = 3000, seed: int = 0, batch_size: int = 64):
    images = load_images()
    model = GAN()
    params = model.init(jax.random.key(seed), jnp.zeros((1,) + INPUT_SHAPE))["params"]
    optimizer = optax.adam(1e-3, b1=0.5)
    d_state = optimizer.init(params["discriminator"])
    g_state = optimizer.init(params["generator"])

    def losses(params, batch):
        logits = model.apply({"params": params}, batch)
        return jax.vmap(discriminator_loss)(logits).mean(), jax.vmap(generator_loss)(logits).mean()

    @jax.jit
    def step(params, d_state, g_state, batch):
        def d_loss(d_params):
            return losses({**params, "discriminator": d_params}, batch)[0]

        d_value, d_grads = jax.value_and_grad(d_loss)(params["discriminator"])
        updates, d_state = optimizer.update(d_grads, d_state, params["discriminator"])
        params = {**params, "discriminator": optax.apply_updates(params["discriminator"], updates)}

        def g_loss(g_params):
            return losses({**params, "generator": g_params}, batch)[1]

        g_value, g_grads = jax.value_and_grad(g_loss)(params["generator"])
        updates, g_state = optimizer.update(g_grads, g_state, params["generator"])
        params = {**params, "generator": optax.apply_updates(params["generator"], updates)}
        return params, d_state, g_state, d_value, g_value

    rng = np.random.default_rng(seed)
    for i in range(steps):
        params, d_state, g_state, d_value, g_value = step(params, d_state, g_state, pairs(rng, images, batch_size))
        if (i + 1) % max(1, steps // 10) == 0:
            print(f"step {i + 1:5d}  discriminator loss {float(d_value):.4f}  generator loss {float(g_value):.4f}")
    return (
        model,
        jax.tree.map(np.asarray, params),
        float(d_value),
        float(g_value),
        pairs(rng, images, NUM_EXAMPLE_INPUTS),
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    model, params, d_value, g_value, inputs = train(args.steps, args.seed)
    description = (
        f"GAN on scikit-learn digits (8x8, pixels in [-1, 1]), {args.steps} alternating Adam steps "
        f"(seed {args.seed}); final discriminator loss {d_value:.3f}, generator loss {g_value:.3f}. "
        "Inputs: 8 latent numbers then 64 pixels of a real image; output: [D(G(z)), D(real)]."
    )
    save_model(
        GAN_DIGITS,
        model,
        {"params": params},
        input_shape=INPUT_SHAPE,
        example_inputs=inputs,
        description=description,
        overwrite=True,
    )
    print(f"wrote {GAN_DIGITS}")


if __name__ == "__main__":
    main()
