"""Small linen modules for the bad-input tests, importable by path (``tests.bad_models:...``)."""

import flax.linen as nn
from flax import nnx


class InputOnly(nn.Module):
    """'scaled' is computed from the input alone: no parameter reaches it."""

    @nn.compact
    def __call__(self, x):
        self.sow("intermediates", "scaled", x * 2.0)
        return nn.Dense(2, name="dense")(x)


class NotFlax:
    """A plain class, not a Flax module."""


class NnxNet(nnx.Module):
    def __init__(self, *, rngs: nnx.Rngs):
        self.dense = nnx.Linear(3, 2, rngs=rngs)

    def __call__(self, x):
        return self.dense(x)
