"""The linen adapter: a ``flax.linen`` module and its variables as a :class:`Model`."""

from __future__ import annotations

import numpy as np

from .._errors import InputShapeError, TrainModeError
from ._model import Model, flatten_captured


def from_linen(
    module,
    variables: dict,
    input_shape,
    input_dtype: str = "float32",
    call_kwargs: dict | None = None,
    example_inputs=None,
) -> Model:
    """Wraps a linen module and its variables (``{'params': ..., 'batch_stats': ...}``).

    ``call_kwargs`` are passed to every call and should select evaluation mode (e.g. ``{'train': False}``).
    Only the ``params`` collection is differentiated; the other collections are constants.
    """
    import flax.linen as nn  # noqa: F401  (keeps flax an adapter-only import)

    variables = dict(variables)
    if "params" not in variables:
        raise InputShapeError(
            f"linen variables have collections {sorted(variables)}; expected a 'params' collection."
        )
    params = variables.pop("params")
    constants = {k: v for k, v in variables.items() if k != "intermediates"}
    call_kwargs = dict(call_kwargs or {})

    def capture_fn(params, constants, x):
        try:
            _, state = module.apply(
                {"params": params, **constants},
                x,
                **call_kwargs,
                capture_intermediates=True,
                mutable=["intermediates"],
            )
        except Exception as e:  # flax's ModifyScopeVariableError has no stable import path
            if "collection is immutable" in str(e) or "ModifyScopeVariable" in type(e).__name__:
                raise TrainModeError(
                    f"{type(module).__name__} updates its variables during the call ({e}). It is running in "
                    "training mode: pass call arguments that select evaluation mode, e.g. "
                    "call_kwargs={'train': False} (the spec's 'call_kwargs')."
                ) from None
            raise
        return flatten_captured(dict(state["intermediates"]))

    note = (
        f"evaluation mode via call arguments {call_kwargs}" if call_kwargs
        else "no call arguments; BatchNorm/Dropout behave as the module's defaults"
    )
    return Model(
        name=type(module).__name__,
        framework="linen",
        params=params,
        constants=constants,
        input_shape=tuple(input_shape),
        input_dtype=str(np.dtype(input_dtype)),
        capture_fn=capture_fn,
        example_inputs=None if example_inputs is None else np.asarray(example_inputs),
        eval_mode=note,
    )


