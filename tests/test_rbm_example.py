"""The shipped complex RBM example (layersens/examples/rbm_spins): its checkpoint, its layers, its log-cosh."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import layersens
from layersens.examples import RBM_SPINS
from layersens.examples.rbm import NUM_SPINS, ComplexRBM, log_cosh
from layersens.examples.train_rbm import configurations, exact_ground_state, heisenberg_hamiltonian, variational_energy
from layersens.models import flatten_params


@pytest.fixture(scope="module")
def rbm():
    return layersens.load_model(RBM_SPINS)


def _recorded(what):
    """A number recorded in the checkpoint's description by train_rbm."""
    found = re.search(rf"{what} (-?\d+\.\d+)", layersens.read_model_spec(RBM_SPINS).description)
    assert found, f"no {what} in the description"
    return float(found.group(1))


def test_checkpoint_loads_with_complex64_parameters(rbm):
    leaves = flatten_params(rbm.params)
    assert sorted(leaves) == ["hidden_bias", "kernel", "visible_bias"]
    assert {k: v.shape for k, v in leaves.items()} == {
        "visible_bias": (NUM_SPINS,),
        "hidden_bias": (2 * NUM_SPINS,),
        "kernel": (NUM_SPINS, 2 * NUM_SPINS),
    }
    assert all(np.asarray(v).dtype == np.complex64 for v in leaves.values())
    assert all(np.any(np.imag(np.asarray(v)) != 0) for v in leaves.values())  # trained phases, not real numbers
    x = rbm.example_inputs
    assert x.shape == (16, NUM_SPINS) and x.dtype == np.float32 and set(np.unique(x)) == {-1.0, 1.0}
    assert rbm.input_shape == (NUM_SPINS,) and rbm.input_dtype == "float32"


def test_loaded_model_matches_a_fresh_apply(rbm):
    x = configurations()
    captured = rbm.capture(rbm.params, x)
    out, state = ComplexRBM().apply({"params": rbm.params}, x, mutable=["intermediates"])
    np.testing.assert_allclose(captured["output"], out, rtol=1e-6)
    np.testing.assert_allclose(captured["theta"], state["intermediates"]["theta"][0], rtol=1e-6)
    np.testing.assert_allclose(captured["log_cosh"], state["intermediates"]["log_cosh"][0], rtol=1e-6)
    assert out.dtype == jnp.complex64 and out.shape == (len(x),)


def test_list_layers_names_the_complex_layers(rbm):
    layers = {info.name: info for info in layersens.list_layers(rbm)}
    assert list(layers) == ["theta", "log_cosh", "output"]
    assert {n: (i.shape, i.dtype) for n, i in layers.items()} == {
        "theta": ((2 * NUM_SPINS,), "complex64"),
        "log_cosh": ((2 * NUM_SPINS,), "complex64"),
        "output": ((), "complex64"),
    }
    assert layers["output"].num_upstream_params == 90


def _moderate(rng, n):
    """Complex numbers with |Re| < 4, |Im| < 1.4 (where log cosh is the principal log of cosh) and |z| > 0.3 (where
    the reference jnp.log(jnp.cosh(z)) itself keeps 1e-12 relative accuracy)."""
    z = rng.uniform(-4, 4, n) + 1j * rng.uniform(-1.4, 1.4, n)
    return z[np.abs(z) > 0.3]


def test_log_cosh_matches_the_reference_and_is_holomorphic():
    rng = np.random.default_rng(0)
    z = jnp.asarray(_moderate(rng, 80), jnp.complex128)
    np.testing.assert_allclose(log_cosh(z), jnp.log(jnp.cosh(z)), rtol=1e-12)
    forward = jax.jit(jax.jacfwd(log_cosh, holomorphic=True))(z)
    reverse = jax.jit(jax.jacrev(log_cosh, holomorphic=True))(z)
    np.testing.assert_allclose(forward, reverse, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(jnp.diagonal(forward), jnp.tanh(z), rtol=1e-12)
    v = jnp.asarray(rng.normal(size=z.shape) + 1j * rng.normal(size=z.shape))
    _, along_v = jax.jvp(log_cosh, (z,), (v,))
    _, along_iv = jax.jvp(log_cosh, (z,), (1j * v,))
    np.testing.assert_allclose(along_iv, 1j * along_v, rtol=1e-12, atol=1e-15)
    # far from zero no overflow: log cosh z = ±z - log 2 up to e^{-2|Re z|}
    big = jnp.asarray([200 + 0.3j, -200 - 0.3j, 1e4 + 1j], jnp.complex64)
    np.testing.assert_allclose(log_cosh(big), jnp.asarray([200 + 0.3j, 200 + 0.3j, 1e4 + 1j]) - np.log(2), rtol=1e-6)


def test_log_psi_is_holomorphic_in_the_parameters(rbm):
    """Cauchy–Riemann for the whole model: the directional derivative along i·V is i times the one along V."""
    params = jax.tree.map(lambda p: jnp.asarray(p, jnp.complex128), rbm.params)
    x = jnp.asarray(configurations(), jnp.float64)
    rng = np.random.default_rng(1)
    direction = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape) + 1j * rng.normal(size=p.shape)), params)

    def log_psi(p):
        return ComplexRBM(param_dtype=jnp.complex128).apply({"params": p}, x)

    _, along_v = jax.jvp(log_psi, (params,), (direction,))
    _, along_iv = jax.jvp(log_psi, (params,), (jax.tree.map(lambda d: 1j * d, direction),))
    np.testing.assert_allclose(along_iv, 1j * along_v, rtol=1e-12, atol=1e-12)


def test_recorded_energy_is_reproduced_from_the_checkpoint(rbm):
    exact_energy, exact = exact_ground_state()
    assert exact_energy == pytest.approx(-(2 + np.sqrt(13)) / 2, abs=1e-12)  # the 6-site ring's known ground energy
    assert _recorded("exact ground energy") == pytest.approx(exact_energy, abs=1e-6)
    log_psi = rbm.capture(rbm.params, configurations())["output"]
    energy = float(variational_energy(jnp.asarray(log_psi, jnp.complex128), heisenberg_hamiltonian()))
    assert energy == pytest.approx(_recorded("variational energy"), abs=1e-4)
    assert exact_energy <= energy < exact_energy + 1e-2  # trained: close to the ground energy (variational bound)
    psi = np.exp(np.asarray(log_psi, np.complex128))
    overlap = abs(np.vdot(exact, psi)) / (np.linalg.norm(exact) * np.linalg.norm(psi))
    assert overlap == pytest.approx(_recorded("overlap"), abs=1e-4)
    assert overlap > 0.999
