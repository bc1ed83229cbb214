"""Tiny Flax models for the tests, each with a hand-written flat twin in plain jax.numpy."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx

EPS = 1e-5


class TinyCNN(nn.Module):
    """conv → bn → relu ('act') with a side branch that runs first but never feeds 'act', and a residual tail."""

    features: int = 3

    @nn.compact
    def __call__(self, x, train: bool = False):
        side = nn.Dense(2, name="side")(x.reshape((x.shape[0], -1)))  # runs before the layer, does not feed it
        h = nn.Conv(self.features, (3, 3), padding="SAME", name="conv")(x)
        h = nn.BatchNorm(use_running_average=not train, name="bn")(h)
        h = nn.relu(h)
        self.sow("intermediates", "act", h)
        r = h + nn.Conv(self.features, (3, 3), padding="SAME", name="res")(h)  # a residual connection
        pooled = nn.avg_pool(r, (2, 2), strides=(2, 2))
        y = nn.Dense(4, name="head")(pooled.reshape((x.shape[0], -1)))
        return y + side.sum(-1, keepdims=True)


def tiny_cnn_act_flat(params: dict, constants: dict, x):
    """TinyCNN's 'act' for one example (H, W, C), written without Flax."""
    k, b = params["conv/kernel"], params["conv/bias"]
    h = jax.lax.conv_general_dilated(x[None], k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))[0] + b
    mean, var = constants["bn"]["mean"], constants["bn"]["var"]
    h = (h - mean) / jnp.sqrt(var + EPS) * params["bn/scale"] + params["bn/bias"]
    return jnp.maximum(h, 0)


def random_linen_variables(module, input_shape, seed=0):
    """Initialized variables with nontrivial BatchNorm statistics and affine parameters."""
    variables = module.init(jax.random.key(seed), jnp.zeros((1,) + tuple(input_shape)))
    keys = iter(jax.random.split(jax.random.key(seed + 1), 64))

    def perturb(path, leaf):
        name = jax.tree_util.keystr(path)
        noise = jax.random.normal(next(keys), leaf.shape, leaf.dtype)
        if "var" in name:
            return 0.5 + jnp.abs(noise)
        return leaf + 0.3 * noise

    return jax.tree_util.tree_map_with_path(perturb, variables)


class TinyMLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = nn.Dense(5, name="dense1")(x)
        self.sow("intermediates", "pre", h)
        return nn.Dense(2, name="dense2")(jnp.tanh(h))


class TinyCNNNNX(nnx.Module):
    """TinyCNN in NNX, with the same names."""

    def __init__(self, in_features: int = 1, features: int = 3, side_in: int = 36, *, rngs: nnx.Rngs):
        self.side = nnx.Linear(side_in, 2, rngs=rngs)
        self.conv = nnx.Conv(in_features, features, (3, 3), padding="SAME", rngs=rngs)
        self.bn = nnx.BatchNorm(features, rngs=rngs)
        self.res = nnx.Conv(features, features, (3, 3), padding="SAME", rngs=rngs)
        self.head = nnx.Linear(features * side_in // 4, 4, rngs=rngs)

    def __call__(self, x):
        side = self.side(x.reshape((x.shape[0], -1)))
        h = nnx.relu(self.bn(self.conv(x)))
        self.sow(nnx.Intermediate, "act", h)
        r = h + self.res(h)
        pooled = nnx.avg_pool(r, (2, 2), strides=(2, 2))
        return self.head(pooled.reshape((x.shape[0], -1))) + side.sum(-1, keepdims=True)


class ChannelFirst(nn.Module):
    """conv → relu → channels moved to axis 0: a channel-diagonal layer whose channel is not the last axis."""

    @nn.compact
    def __call__(self, x):
        h = jnp.transpose(nn.relu(nn.Conv(3, (3, 3), padding="SAME", name="conv")(x)), (0, 3, 1, 2))
        self.sow("intermediates", "act", h)
        return nn.Dense(2, name="head")(h.reshape((x.shape[0], -1)))
