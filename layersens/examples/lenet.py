"""A LeNet-style CNN for 28×28×1 digits, in linen and in NNX, with the same layer names and weights.

conv1 (3×3, 20, SAME) → bn1 → relu1 → 2×2 max-pool → conv2 (3×3, 32, SAME) → bn2 → relu2 → 2×2 max-pool
→ fc1 (128) → relu3 → fc2 (10). The activations ``relu1``, ``relu2`` and ``relu3`` are sown as intermediates.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx

INPUT_SHAPE = (28, 28, 1)


class LeNet(nn.Module):
    num_classes: int = 10
    conv1_features: int = 20
    conv2_features: int = 32
    fc1_features: int = 128

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Conv(self.conv1_features, (3, 3), padding="SAME", name="conv1")(x)
        x = nn.BatchNorm(use_running_average=not train, name="bn1")(x)
        x = nn.relu(x)
        self.sow("intermediates", "relu1", x)
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
        x = nn.Conv(self.conv2_features, (3, 3), padding="SAME", name="conv2")(x)
        x = nn.BatchNorm(use_running_average=not train, name="bn2")(x)
        x = nn.relu(x)
        self.sow("intermediates", "relu2", x)
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
        x = x.reshape((x.shape[0], -1))
        x = nn.Dense(self.fc1_features, name="fc1")(x)
        x = nn.relu(x)
        self.sow("intermediates", "relu3", x)
        return nn.Dense(self.num_classes, name="fc2")(x)


class LeNetNNX(nnx.Module):
    def __init__(
        self,
        num_classes: int = 10,
        conv1_features: int = 20,
        conv2_features: int = 32,
        fc1_features: int = 128,
        *,
        rngs: nnx.Rngs,
    ):
        side = INPUT_SHAPE[0] // 4
        self.conv1 = nnx.Conv(1, conv1_features, (3, 3), padding="SAME", rngs=rngs)
        self.bn1 = nnx.BatchNorm(conv1_features, rngs=rngs)
        self.conv2 = nnx.Conv(conv1_features, conv2_features, (3, 3), padding="SAME", rngs=rngs)
        self.bn2 = nnx.BatchNorm(conv2_features, rngs=rngs)
        self.fc1 = nnx.Linear(side * side * conv2_features, fc1_features, rngs=rngs)
        self.fc2 = nnx.Linear(fc1_features, num_classes, rngs=rngs)

    def __call__(self, x):
        x = nnx.relu(self.bn1(self.conv1(x)))
        self.sow(nnx.Intermediate, "relu1", x)
        x = nnx.max_pool(x, (2, 2), strides=(2, 2))
        x = nnx.relu(self.bn2(self.conv2(x)))
        self.sow(nnx.Intermediate, "relu2", x)
        x = nnx.max_pool(x, (2, 2), strides=(2, 2))
        x = nnx.relu(self.fc1(x.reshape((x.shape[0], -1))))
        self.sow(nnx.Intermediate, "relu3", x)
        return self.fc2(x)


def nnx_from_linen(variables: dict, **kwargs) -> LeNetNNX:
    """An NNX LeNet holding the same weights and BatchNorm statistics as linen ``variables``."""
    model = LeNetNNX(**kwargs, rngs=nnx.Rngs(0))
    params, stats = variables["params"], variables.get("batch_stats", {})
    for name in ("conv1", "conv2", "fc1", "fc2"):
        layer = getattr(model, name)
        layer.kernel[...] = jnp.asarray(params[name]["kernel"])
        layer.bias[...] = jnp.asarray(params[name]["bias"])
    for name in ("bn1", "bn2"):
        layer = getattr(model, name)
        layer.scale[...] = jnp.asarray(params[name]["scale"])
        layer.bias[...] = jnp.asarray(params[name]["bias"])
        layer.mean[...] = jnp.asarray(stats[name]["mean"])
        layer.var[...] = jnp.asarray(stats[name]["var"])
    return model


def resize_digits(images8x8) -> jax.Array:
    """scikit-learn's 8×8 digits (values 0–16) as 28×28×1 float32 images in [0, 1]."""
    x = jnp.asarray(images8x8, jnp.float32).reshape(-1, 8, 8, 1) / 16.0
    return jax.image.resize(x, (x.shape[0],) + INPUT_SHAPE, method="bilinear")
