"""Models shipped with layersens, with trained checkpoints that need no download."""

from pathlib import Path

EXAMPLES_DIR = Path(__file__).parent
LENET_DIGITS = EXAMPLES_DIR / "lenet_digits"
LENET_DIGITS_NNX = EXAMPLES_DIR / "lenet_digits_nnx"
GAN_DIGITS = EXAMPLES_DIR / "gan_digits"
RBM_SPINS = EXAMPLES_DIR / "rbm_spins"
