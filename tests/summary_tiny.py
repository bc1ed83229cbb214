"""A tiny linen model for the summary and report tests, saved with ``layersens.save_model`` and loaded by import
path (``tests.summary_tiny:Net``, with --allow-import) by the command-line tests."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

INPUT_SHAPE = (4, 4, 1)


class Net(nn.Module):
    """input × 2 sown as 'scaled' (no parameter reaches it) → conv 3×3, 2 features → relu sown as 'act'
    (4×4×2 = 32 outputs, 20 parameters) → dense 3 → tanh sown as 'hidden' → dense 2."""

    @nn.compact
    def __call__(self, x):
        scaled = x * 2.0
        self.sow("intermediates", "scaled", scaled)
        h = nn.relu(nn.Conv(2, (3, 3), padding="SAME", name="conv")(scaled))
        self.sow("intermediates", "act", h)
        h = nn.tanh(nn.Dense(3, name="dense")(h.reshape((x.shape[0], -1))))
        self.sow("intermediates", "hidden", h)
        return nn.Dense(2, name="head")(h)


def variables(seed: int = 0):
    return Net().init(jax.random.key(seed), jnp.zeros((1,) + INPUT_SHAPE, jnp.float32))


def inputs(count: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(count,) + INPUT_SHAPE).astype(np.float32)
