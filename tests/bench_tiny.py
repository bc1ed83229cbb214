"""A tiny linen model for the benchmark tests, saved with ``layersens.save_model`` and loaded by import path
(``tests.bench_tiny:Tiny``), so the benchmark's worker processes can rebuild it."""

from __future__ import annotations

import flax.linen as nn


class Tiny(nn.Module):
    """conv (3×3, 2 features) → relu, sown as 'act' (32 outputs, 20 parameters) → dense (3), sown as 'hidden'."""

    features: int = 2

    @nn.compact
    def __call__(self, x):
        h = nn.relu(nn.Conv(self.features, (3, 3), padding="SAME", name="conv")(x))
        self.sow("intermediates", "act", h)
        h = nn.tanh(nn.Dense(3, name="dense")(h.reshape((x.shape[0], -1))))
        self.sow("intermediates", "hidden", h)
        return nn.Dense(2, name="head")(h)
