"""The CNN of Flax's MNIST example (google/flax, examples/mnist/train.py), with its layers named so that layersens
can address them:

    conv1 (32, 3×3, SAME) → relu1 → avg-pool 2×2 → conv2 (64, 3×3, SAME) → relu2 → avg-pool 2×2 → flatten
    → fc1 (256) → relu3 → fc2 (10), on 28×28×1 inputs.

Flax's example builds the same layers with automatic names (``Conv_0``, ``Dense_1``, ...) and returns logits;
here the modules are named and the ReLU outputs are sown as intermediates (``relu1``, ``relu2``, ``relu3``), which
changes no computation. The second conv's output, ``conv2``, is 14×14×64 = 12,544 values per example fed by
conv1's and conv2's kernels and biases (320 + 18,496 = 18,816 parameters): its dense Jacobian is
12,544 × 18,816 × 4 bytes = 944 MB per example.

Used by ``benchmarks/run_summaries.py``, which builds it (briefly fitted or random weights), saves it with
``layersens.save_model`` into a temporary directory and loads it from there (``allow_import=True``: this file is
user code to layersens).
"""

from __future__ import annotations

import flax.linen as nn

INPUT_SHAPE = (28, 28, 1)


class FlaxMnistCNN(nn.Module):
    """Flax's MNIST example CNN with named layers (see the module docstring)."""

    num_classes: int = 10

    @nn.compact
    def __call__(self, x):
        x = nn.Conv(features=32, kernel_size=(3, 3), name="conv1")(x)
        x = nn.relu(x)
        self.sow("intermediates", "relu1", x)
        x = nn.avg_pool(x, window_shape=(2, 2), strides=(2, 2))
        x = nn.Conv(features=64, kernel_size=(3, 3), name="conv2")(x)
        x = nn.relu(x)
        self.sow("intermediates", "relu2", x)
        x = nn.avg_pool(x, window_shape=(2, 2), strides=(2, 2))
        x = x.reshape((x.shape[0], -1))  # flatten
        x = nn.Dense(features=256, name="fc1")(x)
        x = nn.relu(x)
        self.sow("intermediates", "relu3", x)
        return nn.Dense(features=self.num_classes, name="fc2")(x)
