"""Trains the shipped complex RBM on a 6-site Heisenberg ring and writes the example checkpoint.

    python -m layersens.examples.train_rbm [--steps 1000] [--seed 0]

The target is the ground state of the antiferromagnetic Heisenberg ring H = Σ_i S_i·S_{i+1} (spin 1/2, periodic),
found by dense exact diagonalization of its 64×64 matrix; its amplitudes change sign (Marshall's rule), so the RBM
needs the imaginary parts of its parameters. The RBM minimises the variational energy ⟨ψ|H|ψ⟩/⟨ψ|ψ⟩, computed
exactly over all 64 spin configurations (no sampling), with Adam. The final energy, the exact ground energy and
the overlap with the exact state are printed and recorded in the checkpoint's description (``rbm_spins``), whose
default inputs are the 16 most probable configurations of the exact ground state.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import optax

from layersens import save_model
from layersens.examples import RBM_SPINS
from layersens.examples.rbm import NUM_SPINS, ComplexRBM

NUM_EXAMPLE_INPUTS = 16
LEARNING_RATE = 0.01


def configurations(num_spins: int = NUM_SPINS) -> np.ndarray:
    """All 2**num_spins configurations as float32 ±1, shape (2**num_spins, num_spins). Row k holds σ_i = +1 where
    bit ``num_spins - 1 - i`` of k is 0 and -1 where it is 1 (row 0 is all +1)."""
    k = np.arange(2**num_spins)[:, None]
    bits = (k >> (num_spins - 1 - np.arange(num_spins))[None, :]) & 1
    return (1 - 2 * bits).astype(np.float32)


def heisenberg_hamiltonian(num_spins: int = NUM_SPINS) -> np.ndarray:
    """The dense matrix of H = Σ_i S_i·S_{i+1} (periodic), S = σ/2, in the basis of :func:`configurations`."""
    sigma = configurations(num_spins).astype(np.float64)
    dim = len(sigma)
    h = np.zeros((dim, dim))
    for i in range(num_spins):
        j = (i + 1) % num_spins
        h[np.arange(dim), np.arange(dim)] += sigma[:, i] * sigma[:, j] / 4  # S^z_i S^z_j
        flip = (1 << (num_spins - 1 - i)) | (1 << (num_spins - 1 - j))
        for k in np.flatnonzero(sigma[:, i] != sigma[:, j]):  # (S^+_i S^-_j + S^-_i S^+_j) / 2 flips the pair
            h[k ^ flip, k] += 0.5
    return h


def exact_ground_state(num_spins: int = NUM_SPINS) -> tuple[float, np.ndarray]:
    """The ground energy and a normalised real ground state of :func:`heisenberg_hamiltonian`."""
    energies, states = np.linalg.eigh(heisenberg_hamiltonian(num_spins))
    return float(energies[0]), states[:, 0]


def amplitudes(log_psi):
    """ψ = exp(log ψ), scaled so that its largest modulus is 1 (the energy and overlap ignore the scale)."""
    return jnp.exp(log_psi - jnp.max(jnp.real(log_psi)))


def variational_energy(log_psi, hamiltonian):
    """⟨ψ|H|ψ⟩/⟨ψ|ψ⟩ from log ψ over every configuration (real: H is Hermitian)."""
    psi = amplitudes(log_psi)
    return jnp.real(jnp.vdot(psi, hamiltonian @ psi)) / jnp.real(jnp.vdot(psi, psi))


def overlap(log_psi, exact) -> float:
    """|⟨ψ_exact|ψ⟩| / (‖ψ_exact‖ ‖ψ‖)."""
    psi = np.asarray(amplitudes(log_psi), np.complex128)
    return float(abs(np.vdot(exact, psi)) / (np.linalg.norm(exact) * np.linalg.norm(psi)))


def train(steps: int = 1000, seed: int = 0, learning_rate: float = LEARNING_RATE):
    model = ComplexRBM()
    sigma = jnp.asarray(configurations())
    hamiltonian = jnp.asarray(heisenberg_hamiltonian(), jnp.float32)
    variables = model.init(jax.random.key(seed), sigma)
    params = variables["params"]
    optimizer = optax.adam(learning_rate)
    opt_state = optimizer.init(params)

    def energy(p):
        return variational_energy(model.apply({"params": p}, sigma), hamiltonian)

    @jax.jit
    def step(params, opt_state):
        e, grads = jax.value_and_grad(energy)(params)
        # For a real loss of complex parameters jax.grad gives ∂E/∂Re - i ∂E/∂Im, the conjugate of the steepest
        # ascent direction in the complex plane: Adam descends along its conjugate.
        grads = jax.tree.map(jnp.conj, grads)
        changes, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, changes), opt_state, e

    first = float(energy(params))
    for i in range(steps):
        params, opt_state, e = step(params, opt_state)
        if i % 100 == 0:
            print(f"step {i:4d}  energy {float(e):.6f}")
    final = float(energy(params))
    print(f"initial energy {first:.6f}, final energy {final:.6f}")
    return model, {"params": params}, first, final


def example_inputs(exact: np.ndarray) -> np.ndarray:
    """The NUM_EXAMPLE_INPUTS most probable configurations of the exact state (ties in configuration order)."""
    order = np.argsort(-np.round(exact**2, 10), kind="stable")
    return configurations()[order[:NUM_EXAMPLE_INPUTS]]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    exact_energy, exact = exact_ground_state()
    model, variables, first, final = train(args.steps, args.seed)
    variables = jax.tree.map(np.asarray, variables)
    fidelity = overlap(model.apply(variables, configurations()), exact)
    print(f"variational energy {final:.6f}, exact ground energy {exact_energy:.6f}, overlap {fidelity:.6f}")
    description = (
        "Complex RBM (alpha 2, complex64) for the ground state of the 6-site antiferromagnetic Heisenberg ring "
        "H = sum_i S_i.S_(i+1) (periodic), trained with Adam on the exact energy over all 64 configurations "
        f"(seed {args.seed}, {args.steps} steps, learning rate {LEARNING_RATE}): variational energy {final:.6f}, "
        f"exact ground energy {exact_energy:.6f}, overlap {fidelity:.6f}. Output: log psi. Default inputs: the "
        f"{NUM_EXAMPLE_INPUTS} most probable spin configurations (+-1) of the exact ground state."
    )
    save_model(
        RBM_SPINS,
        model,
        variables,
        input_shape=(NUM_SPINS,),
        example_inputs=example_inputs(exact),
        description=description,
        overwrite=True,
    )
    print(f"wrote {RBM_SPINS}")


if __name__ == "__main__":
    main()
