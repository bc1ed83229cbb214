"""Small versions of the architectures people bring to layersens, for ``run_zoo.py``: written the way Flax users
write them (library layers, auto-names), with random weights and sizes cut so that JAX's own dense Jacobians of
every layer run in milliseconds.

* ``vit``: a ViT's patch embedding (a strided conv), a class token and learned position embeddings, one
  pre-norm encoder block (``nn.MultiHeadDotProductAttention``, GELU MLP) and a head.
* ``transformer``: a decoder-style block on token embeddings with causal self-attention and a tied readout.
* ``grouped_cnn``: a ResNeXt/RegNet-style CNN: a stem, a grouped 3×3 conv (4 groups), a depthwise 3×3 conv
  (MobileNet style), a 1×1 conv, average pooling and a head.
* ``lstm``: ``nn.RNN(nn.OptimizedLSTMCell)`` over a short sequence, and a readout of the last state.
* ``lenet``: the shipped LeNet-digits example (its small layers; relu1/relu2/fc1 are ``run_lenet.py``'s).
* ``mlp_out_in``: a plain-JAX MLP (``layersens.from_function``) whose kernels are laid out ``(out, in)`` and applied
  as ``x @ W.T``, as PyTorch ports and the JAX tutorials write them.
* ``conv_oihw``: plain-JAX convolutions with PyTorch-layout ``OIHW`` kernels on NHWC images, and an ``(out, in)``
  readout.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import layersens
from layersens.examples import LENET_DIGITS


class EncoderBlock(nn.Module):
    heads: int = 2

    @nn.compact
    def __call__(self, x):
        h = nn.LayerNorm(name="ln1")(x)
        h = nn.MultiHeadDotProductAttention(num_heads=self.heads, name="attn")(h, h)
        x = x + h
        h = nn.LayerNorm(name="ln2")(x)
        h = nn.Dense(2 * x.shape[-1], name="mlp1")(h)
        h = nn.gelu(h)
        return x + nn.Dense(x.shape[-1], name="mlp2")(h)


class ViT(nn.Module):
    patch: int = 4
    dim: int = 16

    @nn.compact
    def __call__(self, x):
        h = nn.Conv(self.dim, (self.patch, self.patch), strides=self.patch, padding="VALID", name="patch_embed")(x)
        h = h.reshape(h.shape[0], -1, self.dim)
        cls = self.param("cls", nn.initializers.normal(0.02), (1, 1, self.dim))
        h = jnp.concatenate([jnp.broadcast_to(cls, (h.shape[0], 1, self.dim)), h], axis=1)
        h = h + self.param("pos_embed", nn.initializers.normal(0.02), (1, h.shape[1], self.dim))
        h = EncoderBlock(name="block")(h)
        h = nn.LayerNorm(name="norm")(h[:, 0])
        return nn.Dense(10, name="head")(h)


class DecoderBlock(nn.Module):
    vocab: int = 32
    dim: int = 16

    @nn.compact
    def __call__(self, tokens):
        embed = nn.Embed(self.vocab, self.dim, name="embed")
        h = embed(tokens)
        mask = nn.make_causal_mask(tokens)
        a = nn.MultiHeadDotProductAttention(num_heads=2, name="attn")(nn.LayerNorm(name="ln1")(h), mask=mask)
        h = h + a
        m = nn.Dense(self.dim, name="mlp")(nn.LayerNorm(name="ln2")(h))
        h = h + nn.relu(m)
        return embed.attend(nn.LayerNorm(name="ln_f")(h))  # tied readout


class GroupedCNN(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = nn.relu(nn.Conv(16, (3, 3), name="stem")(x))
        h = nn.relu(nn.Conv(16, (3, 3), feature_group_count=4, name="grouped")(h))
        h = nn.relu(nn.Conv(16, (3, 3), feature_group_count=16, name="depthwise")(h))
        h = nn.relu(nn.Conv(8, (1, 1), name="pointwise")(h))
        h = h.mean(axis=(1, 2))
        return nn.Dense(10, name="head")(h)


class LSTM(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = nn.RNN(nn.OptimizedLSTMCell(12), name="lstm")(x)
        return nn.Dense(4, name="readout")(h[:, -1])


def mlp_out_in(sizes=(64, 256, 256, 10), seed=0):
    rng = np.random.default_rng(seed)
    params = {}
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        params[f"layer{i}"] = {
            "weight": (rng.normal(size=(b, a)) / np.sqrt(a)).astype(np.float32),
            "bias": (0.1 * rng.normal(size=(b,))).astype(np.float32),
        }
    depth = len(sizes) - 1

    def apply(p, x):
        for i in range(depth):
            x = x @ p[f"layer{i}"]["weight"].T + p[f"layer{i}"]["bias"]
            if i < depth - 1:
                x = layersens.capture(f"tanh{i}", jnp.tanh(x))
        return x

    return layersens.from_function(apply, params, (sizes[0],), name="mlp_out_in")


def conv_oihw(seed=0):
    rng = np.random.default_rng(seed)
    params = {
        "conv1": {"weight": (0.3 * rng.normal(size=(8, 3, 3, 3))).astype(np.float32), "bias": np.zeros(8, np.float32)},
        "conv2": {"weight": (0.1 * rng.normal(size=(8, 8, 3, 3))).astype(np.float32), "bias": np.zeros(8, np.float32)},
        "fc": {"weight": (0.3 * rng.normal(size=(10, 8))).astype(np.float32), "bias": np.zeros(10, np.float32)},
    }

    def conv(x, layer):
        y = jax.lax.conv_general_dilated(x, layer["weight"], (1, 1), "SAME", dimension_numbers=("NHWC", "OIHW", "NHWC"))
        return y + layer["bias"]

    def apply(p, x):
        h = layersens.capture("tanh1", jnp.tanh(conv(x, p["conv1"])))
        h = layersens.capture("tanh2", jnp.tanh(conv(h, p["conv2"])))
        return h.mean(axis=(1, 2)) @ p["fc"]["weight"].T + p["fc"]["bias"]

    return layersens.from_function(apply, params, (12, 12, 3), name="conv_oihw")


@dataclasses.dataclass(frozen=True)
class ZooModel:
    name: str
    build: Callable[[], layersens.Model]
    inputs: Callable[[int], np.ndarray]


def _linen(module, input_shape, input_dtype="float32", seed=0):
    x = jnp.zeros((1,) + input_shape, input_dtype)
    variables = module.init(jax.random.PRNGKey(seed), x)
    return layersens.from_linen(module, variables, input_shape, input_dtype)


def _normal(shape):
    return lambda n: np.random.default_rng(0).normal(size=(n,) + shape).astype(np.float32)


ZOO = {
    "vit": ZooModel("vit", lambda: _linen(ViT(), (16, 16, 3)), _normal((16, 16, 3))),
    "transformer": ZooModel(
        "transformer",
        lambda: _linen(DecoderBlock(), (8,), "int32"),
        lambda n: np.random.default_rng(0).integers(0, 32, size=(n, 8)).astype(np.int32),
    ),
    "grouped_cnn": ZooModel("grouped_cnn", lambda: _linen(GroupedCNN(), (8, 8, 3)), _normal((8, 8, 3))),
    "lstm": ZooModel("lstm", lambda: _linen(LSTM(), (6, 5)), _normal((6, 5))),
    "mlp_out_in": ZooModel("mlp_out_in", mlp_out_in, _normal((64,))),
    "conv_oihw": ZooModel("conv_oihw", conv_oihw, _normal((12, 12, 3))),
    "lenet": ZooModel(
        "lenet",
        lambda: layersens.load_model(LENET_DIGITS),
        lambda n: np.asarray(layersens.load_model(LENET_DIGITS).example_inputs[:n]),
    ),
}
