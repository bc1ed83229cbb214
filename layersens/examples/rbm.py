"""A complex-valued restricted Boltzmann machine (RBM) wave function for spin-1/2 chains, in linen.

For N spins σ = (σ_1 … σ_N), σ_i = ±1 (float32 inputs of shape (batch, N)), and H = alpha·N hidden units, the
amplitude is ψ(σ) = exp(σ·a) ∏_j 2 cosh(θ_j) up to a constant, with θ = σ·W + b, and the model returns

    log ψ(σ) = σ·a + Σ_j log cosh(θ_j)          (complex, shape (batch,))

with complex64 parameters ``params/visible_bias`` a (N,), ``params/hidden_bias`` b (H,) and ``params/kernel``
W (N, H). log ψ is holomorphic in the parameters. The values ``theta`` (θ, shape (H,)) and ``log_cosh``
(log cosh θ, shape (H,)) are sown as intermediates; the output is log ψ.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

NUM_SPINS = 6


def complex_normal(stddev: float = 0.1):
    """An initializer drawing real and imaginary parts independently from N(0, stddev²)."""

    def init(key, shape, dtype=jnp.complex64):
        real_dtype = jnp.finfo(dtype).dtype
        re, im = jax.random.normal(key, (2,) + tuple(shape), real_dtype) * stddev
        return jax.lax.complex(re, im).astype(dtype)

    return init


def log_cosh(x):
    """log cosh x for complex x, without overflow for large |Re x|; its derivative is tanh x everywhere.

    Equal to ``jnp.log(jnp.cosh(x))`` where |Im x| < π/2, and to it modulo 2πi elsewhere (exp of it is cosh x). It
    is holomorphic except on the cuts Re x = 0, |Im x| > π/2, where it jumps by a multiple of 2πi (any single-valued
    log cosh has cuts: cosh has zeros at iπ/2 + iπk).
    """
    # log cosh is even: flip to Re x >= 0, where e^{-2x} cannot overflow and log1p's cut (1 + e^{-2x} <= 0) is unmet.
    x = jnp.where(jnp.real(x) < 0, -x, x)
    return x - math.log(2.0) + jnp.log1p(jnp.exp(-2.0 * x))


class ComplexRBM(nn.Module):
    alpha: int = 2
    param_dtype: Any = jnp.complex64
    init_stddev: float = 0.1

    @nn.compact
    def __call__(self, x):
        num_spins = x.shape[-1]
        num_hidden = self.alpha * num_spins
        init = complex_normal(self.init_stddev)
        a = self.param("visible_bias", init, (num_spins,), self.param_dtype)
        b = self.param("hidden_bias", init, (num_hidden,), self.param_dtype)
        w = self.param("kernel", init, (num_spins, num_hidden), self.param_dtype)
        x = jnp.asarray(x)
        theta = x @ w + b
        self.sow("intermediates", "theta", theta)
        lncosh = log_cosh(theta)
        self.sow("intermediates", "log_cosh", lncosh)
        return x @ a + jnp.sum(lncosh, axis=-1)
