"""One example's layer as a function of one flat vector of the differentiated values: what the operator and
the second-order functions differentiate."""

from __future__ import annotations

from typing import TYPE_CHECKING

import jax.numpy as jnp
import numpy as np

from ..models import ravel_leaves

if TYPE_CHECKING:
    from ..tracing import LayerSplit


def flat_function(split: LayerSplit, params, x):
    """``(theta, f)``: the differentiated values at example ``x`` as one vector, and ``f(theta) -> activation``
    (raveled), everything else held at its value."""
    point = split.point(params, x)
    names = split.param_names
    theta, unravel = ravel_leaves(point, names)

    def f(t):
        return jnp.ravel(split.apply({**point, **unravel(t)}, x))

    return theta, f


def as_examples(split: LayerSplit, inputs) -> np.ndarray:
    """The checked examples for a matrix-free computation (products, spectra, NTK, estimates, readouts), which
    takes real Jacobians only."""
    from ..tracing import require_real

    require_real(split, "this matrix-free computation (products, spectrum, NTK, estimates, readouts)")
    return split.model.check_inputs(inputs, dtype=split.input_dtype)
