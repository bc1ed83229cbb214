"""Spot checks of a computed Jacobian against two independent computations.

``verify(jac, split)`` samples rows and compares each with the gradient of that one activation element (a scalar
``jax.grad``, what the scalar-gradient loop computes), and samples entries and compares each with a central finite
difference of the layer (no automatic differentiation at all). Errors are reported relative to the largest entry
of the Jacobian. Finite differences carry their own error, about ε^(2/3) of the values in the computation's dtype
(≈ 1e-5 in float32, 1e-11 in float64): read their figure against that.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from ._flat import flat_function

# One-sided differences disagreeing by more than this fraction of max|J| mark a kink.
KINK = 0.01


@dataclasses.dataclass(frozen=True)
class Verification:
    """Largest errors of sampled rows (against scalar gradients) and entries (against central differences),
    relative to ``scale`` = max |J|."""

    rows: int
    row_error: float
    entries: int
    difference_error: float
    step: float
    scale: float
    kinks: int = 0

    def describe(self) -> str:
        skipped = f", {self.kinks} value(s) at a kink skipped" if self.kinks else ""
        return (
            f"{self.rows} rows against scalar gradients: largest error {self.row_error:.2g} of max|J| "
            f"({self.scale:.3g}); {self.entries} columns against central differences (relative step "
            f"{self.step:.1g}{skipped}): largest error {self.difference_error:.2g}"
        )


@dataclasses.dataclass(frozen=True)
class _RealProblem:
    """A complex Jacobian taken back to the real problem it was stated from (``split.complex``)."""

    matrix: np.ndarray
    inputs: np.ndarray


def verify(jac, split, rows: int = 8, entries: int = 8, seed: int = 0) -> Verification:
    """Spot-checks ``jac`` (computed for ``split``); see the module docstring. Cost: one compiled scalar
    gradient and one compiled forward pass, run ``rows`` and ``2 × entries`` times.

    A complex Jacobian (``complex_mode`` ``complex`` or ``holomorphic``) is checked as the real problem it was
    stated from: the real and imaginary parts of each row and column, against the real layer's scalar gradients
    and differences (:meth:`ComplexParts.separate`; a store holds the real problem itself, read lazily)."""
    parts = getattr(split, "complex", None)
    if parts is not None and parts.combines:
        real_problem = getattr(jac, "real_problem", None)  # a store: the arrays on disk, never read whole
        if real_problem is not None:
            jac = real_problem()
        else:
            jac = _RealProblem(parts.separate(np.asarray(jac.matrix)), jac.inputs)
    rng = np.random.default_rng(seed)
    n_ex, m, p = jac.matrix.shape
    max_abs = getattr(jac, "max_abs", None)  # a stored Jacobian streams it instead of reading it whole
    scale = (float(max_abs()) if max_abs is not None else float(np.max(np.abs(jac.matrix)))) or 1.0
    dtype = jac.matrix.dtype
    params = split.params

    @jax.jit
    def row(params, x, i):
        theta, f = flat_function(split, params, x)
        return jax.grad(lambda t: f(t)[i])(theta)

    @jax.jit
    def value(params, x, delta):
        theta, f = flat_function(split, params, x)
        return f(theta + delta)

    @jax.jit
    def point(params, x):
        return flat_function(split, params, x)[0]

    row_error = 0.0
    for _ in range(rows):
        n, i = int(rng.integers(n_ex)), int(rng.integers(m))
        got = np.asarray(row(params, jac.inputs[n], np.int32(i)))
        row_error = max(row_error, float(np.max(np.abs(got - jac.matrix[n, i]))) / scale)
    step = float(np.finfo(dtype).eps ** (1 / 3))
    difference_error, kinks = 0.0, 0
    for _ in range(entries):
        n, j = int(rng.integers(n_ex)), int(rng.integers(p))
        theta = np.asarray(point(params, jac.inputs[n]))
        h = step * max(1.0, abs(float(theta[j])))
        delta = np.zeros(p, dtype)
        delta[j] = h
        centre = np.asarray(value(params, jac.inputs[n], jnp.zeros(p, dtype)), np.float64)
        up = np.asarray(value(params, jac.inputs[n], jnp.asarray(delta)), np.float64)
        down = np.asarray(value(params, jac.inputs[n], jnp.asarray(-delta)), np.float64)
        # Where the one-sided differences disagree, the step crosses a kink (a ReLU switching): no derivative to
        # compare there.
        smooth = np.abs((up - centre) - (centre - down)) / h <= KINK * scale
        kinks += int(np.count_nonzero(~smooth))
        column = (up - down) / (2 * h)
        if smooth.any():
            error = np.abs(column - jac.matrix[n, :, j])[smooth]
            difference_error = max(difference_error, float(np.max(error)) / scale)
    return Verification(
        rows=rows,
        row_error=row_error,
        entries=entries,
        difference_error=difference_error,
        step=step,
        scale=scale,
        kinks=kinks,
    )
