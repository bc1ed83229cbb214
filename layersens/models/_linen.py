"""The linen adapter: a ``flax.linen`` module and its variables as a :class:`Model`."""

from __future__ import annotations

import numpy as np

from .._errors import InputShapeError, TrainModeError
from ._model import Model, flatten_captured


def unbox(variables):
    """Plain nested dicts of arrays: partitioning boxes (``nn.Partitioned``, ``nn.LogicallyPartitioned``, any
    ``nn.meta.AxisMetadata``) removed, ``FrozenDict`` thawed."""
    import flax.linen as nn
    from flax.core import unfreeze

    return unfreeze(nn.meta.unbox(variables))


def from_linen(
    module,
    variables: dict,
    input_shape,
    input_dtype: str = "float32",
    call_kwargs: dict | None = None,
    example_inputs=None,
) -> Model:
    """Wraps a linen module and its variables (``{'params': ..., 'batch_stats': ...}``; boxed parameters, as
    ``nn.with_logical_partitioning`` makes them, are unboxed).

    ``call_kwargs`` are passed to every call and should select evaluation mode (e.g. ``{'train': False}``).
    Only the ``params`` collection is differentiated; the other collections are constants.
    """
    variables = dict(unbox(variables))
    if "params" not in variables:
        raise InputShapeError(f"linen variables have collections {sorted(variables)}; expected a 'params' collection.")
    params = variables.pop("params")
    constants = {k: v for k, v in variables.items() if k != "intermediates"}
    call_kwargs = dict(call_kwargs or {})
    name = type(module).__name__

    def capture_fn(params, constants, x):
        try:
            _, state = module.apply(
                {"params": params, **constants},
                x,
                **call_kwargs,
                capture_intermediates=True,
                mutable=["intermediates"],
            )
        except Exception as e:  # flax's scope errors have no stable import path
            kind = type(e).__name__
            if "collection is immutable" in str(e) or "ModifyScopeVariable" in kind:
                raise TrainModeError(
                    f"{name} updates its variables during the call ({str(e).splitlines()[0]}). It is running in "
                    "training mode: pass call arguments that select evaluation mode, e.g. "
                    "call_kwargs={'train': False} (the spec's 'call_kwargs')."
                ) from None
            if "ScopeCollectionNotFound" in kind or "ScopeVariableNotFound" in kind:
                raise TrainModeError(
                    f"{name} reads a variable its variables lack ({str(e).splitlines()[0]}); collections given: "
                    f"{['params'] + sorted(constants)}. Pass every collection init returned (e.g. 'batch_stats'), "
                    "and call arguments that select evaluation mode, e.g. call_kwargs={'train': False}."
                ) from None
            raise
        return flatten_captured(dict(state["intermediates"]))

    note = (
        f"evaluation mode via call arguments {call_kwargs}"
        if call_kwargs
        else "no call arguments; BatchNorm/Dropout behave as the module's defaults"
    )
    return Model(
        name=name,
        framework="linen",
        params=params,
        constants=constants,
        input_shape=tuple(input_shape),
        input_dtype=str(np.dtype(input_dtype)),
        capture_fn=capture_fn,
        example_inputs=None if example_inputs is None else np.asarray(example_inputs),
        eval_mode=note,
    )
