"""A small GAN on 8×8 digits: a generator and a discriminator in one composite linen model.

Each example is a pair: a latent code ``z`` (``LATENT`` numbers) and a real image (``IMAGE`` = 64 pixels in
[-1, 1]), concatenated into one input vector. The model returns the discriminator's logits for the generated
image ``G(z)`` and for the real one, ``[D(G(z)), D(real)]``. Layers: ``generator/fc1``, ``generator/fc2``,
``generator`` (the image), ``discriminator/act1#0`` (the discriminator's first activation on the generated image),
``discriminator/act1#1`` (on the real one), ``output``. Parameters: ``generator/*`` and ``discriminator/*``.

Training (``train_gan``) uses the non-saturating losses: the discriminator minimizes softplus(-D(real)) +
softplus(D(G(z))) over its own parameters, the generator softplus(-D(G(z))) over its own.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

LATENT = 8
IMAGE = 64
INPUT_SHAPE = (LATENT + IMAGE,)


class Generator(nn.Module):
    hidden: int = 32

    @nn.compact
    def __call__(self, z):
        h = nn.relu(nn.Dense(self.hidden, name="fc1")(z))
        return jnp.tanh(nn.Dense(IMAGE, name="fc2")(h))


class Discriminator(nn.Module):
    hidden: int = 32

    @nn.compact
    def __call__(self, image):
        h = nn.leaky_relu(nn.Dense(self.hidden, name="fc1")(image), 0.2)
        self.sow("intermediates", "act1", h)
        return nn.Dense(1, name="fc2")(h)[..., 0]


class GAN(nn.Module):
    hidden: int = 32

    def setup(self):
        self.generator = Generator(self.hidden)
        self.discriminator = Discriminator(self.hidden)

    def __call__(self, inputs):
        z, real = inputs[..., :LATENT], inputs[..., LATENT:]
        return jnp.stack([self.discriminator(self.generator(z)), self.discriminator(real)], axis=-1)


def generator_loss(logits):
    """Non-saturating generator loss of one example's logits ``[D(G(z)), D(real)]``."""
    return jax.nn.softplus(-logits[0])


def discriminator_loss(logits):
    """The discriminator's loss of one example's logits: real called real, generated called generated."""
    return jax.nn.softplus(-logits[1]) + jax.nn.softplus(logits[0])
