"""The NNX adapter: an ``nnx.Module`` as a :class:`Model`."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ._model import Model, flatten_captured


def from_nnx(module, input_shape, input_dtype: str = "float32", example_inputs=None) -> Model:
    """Wraps an ``nnx.Module``. It is switched to evaluation mode (``module.eval()``) on a copy, and values sown
    by earlier calls (``nnx.Intermediate``) are dropped from the copy.

    Only ``nnx.Param`` variables are differentiated; all other state (BatchNorm statistics, custom variables,
    ``nnx.Rngs`` keys and counters, typed PRNG keys) is constant. A model that still draws random numbers in
    evaluation mode (a VAE's noise) draws the same numbers on every call, from this fixed state: results are
    reproducible, and the split says so (``LayerSplit.notes``).
    """
    from flax import nnx

    module = nnx.clone(module)
    module.eval()
    nnx.pop(module, nnx.Intermediate)
    # flax types nnx.split's result as a variadic tuple; with two filters it is exactly three items
    graphdef, param_state, rest_state = nnx.split(module, nnx.Param, ...)  # type: ignore[misc]
    params = nnx.to_pure_dict(param_state)

    def capture_fn(params, constants, x):
        state = jax.tree.map(lambda v: v, param_state)  # fresh containers per trace
        rest = jax.tree.map(lambda v: v, rest_state)
        nnx.replace_by_pure_dict(state, params)
        nnx.replace_by_pure_dict(rest, constants)
        model = nnx.merge(graphdef, state, rest, copy=True)
        _, captured = nnx.capture(model, nnx.Intermediate, method_outputs=nnx.Intermediate)(x)
        return flatten_captured(nnx.to_pure_dict(captured))

    return Model(
        name=type(module).__name__,
        framework="nnx",
        params=params,
        # immutable: an nnx.Rngs counter held as a NumPy array would be advanced in place by every eager call
        constants=jax.tree.map(jnp.asarray, nnx.to_pure_dict(rest_state)),
        input_shape=tuple(input_shape),
        input_dtype=str(np.dtype(input_dtype)),
        capture_fn=capture_fn,
        example_inputs=None if example_inputs is None else np.asarray(example_inputs),
        eval_mode="evaluation mode via module.eval() (BatchNorm uses running averages, Dropout off)",
    )
