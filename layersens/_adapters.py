"""Model adapters: a Flax linen or NNX model reduced to pure data and one pure function.

Whatever the framework, a :class:`Model` holds the trainable parameters as a nested dict of arrays, every other
variable (BatchNorm statistics, ...) as constants, and ``capture(params, x)``, a pure function returning every
addressable value of one forward pass by name: each submodule's call output (``conv1``, ``block2/conv``), each
value sown as an intermediate (``relu1``) and the model's own output (``output``). The rest of layersens never
sees Flax again.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import numpy as np

from ._errors import InputShapeError, TrainModeError

OUTPUT = "output"
_CALL = "__call__"


@dataclasses.dataclass(frozen=True, eq=False)
class Model:
    """A trained model as pure data plus a pure capture function.

    Build one with :func:`from_linen`, :func:`from_nnx` or :func:`layersens.load_model`.

    Attributes:
      name: a label for reports (the module class).
      framework: ``"linen"`` or ``"nnx"``.
      params: nested dict of the trainable parameters.
      constants: nested dict of the other variables, held fixed (e.g. BatchNorm running averages).
      input_shape: shape of one input example, without the batch axis.
      input_dtype: dtype of the inputs.
      capture_fn: ``capture_fn(params, constants, x_batch) -> {layer name: value}``, pure and jit-compatible.
      example_inputs: inputs shipped with the model, used when the user gives none.
      eval_mode: a sentence saying how evaluation mode was selected, printed with every result.
    """

    name: str
    framework: str
    params: dict
    constants: dict
    input_shape: tuple[int, ...]
    input_dtype: str
    capture_fn: Callable[[dict, dict, Any], dict[str, jax.Array]]
    example_inputs: np.ndarray | None = None
    eval_mode: str = ""

    def capture(self, params: dict, x, constants: dict | None = None) -> dict[str, jax.Array]:
        """Every addressable value of one forward pass over the batch ``x``."""
        return self.capture_fn(params, self.constants if constants is None else constants, x)

    def check_inputs(self, x, name: str = "inputs", dtype=None) -> np.ndarray:
        """Returns ``x`` as a batch of examples in ``dtype`` (default: the model's), or says which shape was
        expected."""
        x = np.asarray(x)
        want = tuple(self.input_shape)
        if x.shape == want:
            x = x[None]
        if x.shape[1:] != want:
            raise InputShapeError(
                f"{name} have shape {x.shape}; the model expects (examples,) + {want}, "
                f"e.g. {(len(x) if x.ndim else 1,) + want}."
            )
        return x.astype(dtype or self.input_dtype, copy=False)


def _flatten_captured(tree: dict, prefix: str = "") -> dict[str, Any]:
    """``{'conv1': {'__call__': (y,)}, 'relu1': (h,)}`` -> ``{'conv1': y, 'relu1': h}``."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if key == _CALL:
            path = prefix or OUTPUT
        else:
            path = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, dict):
            out.update(_flatten_captured(value, path))
            continue
        values = tuple(value) if isinstance(value, (tuple, list)) else (value,)
        values = [v for v in values if hasattr(v, "shape")]
        if len(values) == 1:
            out[path] = values[0]
        else:  # a module called several times, or a name sown several times
            for i, v in enumerate(values):
                out[f"{path}#{i}"] = v
    return out


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
        return _flatten_captured(dict(state["intermediates"]))

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


def from_nnx(module, input_shape, input_dtype: str = "float32", example_inputs=None) -> Model:
    """Wraps an ``nnx.Module``. It is switched to evaluation mode (``module.eval()``) on a copy.

    Only ``nnx.Param`` variables are differentiated; all other state (BatchNorm statistics, RNG counters) is
    constant.
    """
    from flax import nnx

    module = nnx.clone(module)
    module.eval()
    graphdef, param_state, rest_state = nnx.split(module, nnx.Param, ...)
    params = nnx.to_pure_dict(param_state)

    def capture_fn(params, constants, x):
        state = jax.tree.map(lambda v: v, param_state)  # fresh containers per trace
        rest = jax.tree.map(lambda v: v, rest_state)
        nnx.replace_by_pure_dict(state, params)
        nnx.replace_by_pure_dict(rest, constants)
        model = nnx.merge(graphdef, state, rest, copy=True)
        _, captured = nnx.capture(model, nnx.Intermediate, method_outputs=nnx.Intermediate)(x)
        return _flatten_captured(nnx.to_pure_dict(captured))

    return Model(
        name=type(module).__name__,
        framework="nnx",
        params=params,
        constants=nnx.to_pure_dict(rest_state),
        input_shape=tuple(input_shape),
        input_dtype=str(np.dtype(input_dtype)),
        capture_fn=capture_fn,
        example_inputs=None if example_inputs is None else np.asarray(example_inputs),
        eval_mode="evaluation mode via module.eval() (BatchNorm uses running averages, Dropout off)",
    )
