"""The installed JAX computes what layersens builds on: examples side by side (``jit(vmap(...))`` of a
forward-mode Jacobian) in float32, against one example at a time in float64 (rtol 1e-5, atol 1e-5). jax/jaxlib
0.10.2 fails this (jax-ml/jax#39103): the project excludes it, and the package warns at import where it is
installed anyway."""

from __future__ import annotations

import os
import subprocess
import sys

from layersens._jax_versions import broken_release

CHECK = """
import jax, jax.numpy as jnp, numpy as np
jax.config.update("jax_enable_x64", True)
rng = np.random.default_rng(0)
xs = rng.standard_normal((3, 17, 16))
p = rng.standard_normal((17, 16)) * 0.02

def f(p, x):  # a residual add and an RMS normalization, as in a ViT's first block
    h = x + p
    return h * jax.lax.rsqrt((h**2).mean(-1, keepdims=True) + 1e-6)

batched = jax.jit(jax.vmap(jax.jacfwd(f), in_axes=(None, 0)))(jnp.float32(p), jnp.float32(xs))
for n, x in enumerate(xs):
    want = np.asarray(jax.jacfwd(f)(jnp.asarray(p, jnp.float64), jnp.asarray(x, jnp.float64)))
    np.testing.assert_allclose(np.asarray(batched[n]), want, rtol=1e-5, atol=1e-5, err_msg=f"example {n}")
print("ok")
"""


def test_side_by_side_forward_jacobians_are_right():
    # in a process of its own, with XLA's default options (the suite compiles with its fast ones: conftest.py),
    # as users run it
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    run = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, env=env)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr[-3000:]


def test_a_broken_release_is_named_and_warned_of():
    assert "39103" in broken_release("0.10.2")
    assert broken_release("0.10.1") is None and broken_release(None) is None
    code = (
        "import importlib.metadata, warnings\n"
        "importlib.metadata.version = lambda name: '0.10.2'\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    import layersens\n"
        "print([str(w.message) for w in caught])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "jaxlib 0.10.2 is installed" in out and "jax!=0.10.2" in out and "39103" in out
