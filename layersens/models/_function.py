"""Any function as a model: ``from_function(apply_fn, params, input_shape)``.

``apply_fn(params, x)`` takes the parameters (any pytree of arrays) and a batch ``x`` (examples first) and returns
the output (an array, or a pytree of arrays: each leaf is then a layer named by its path). Values inside it are
marked for capture with :func:`capture`::

    def apply_fn(params, x):
        h = layersens.capture("hidden", jnp.tanh(x @ params["w1"] + params["b1"]))
        return h @ params["w2"]

    model = layersens.from_function(apply_fn, params, input_shape=(3,))
    layersens.list_layers(model)    # hidden, output

``capture(name, value)`` returns ``value`` unchanged and costs nothing outside layersens; a name used twice gets
``#0``, ``#1``. Parameter leaves are named by their pytree paths (``w1``, ``layers/0/kernel``).
"""

from __future__ import annotations

import threading

import jax
import numpy as np

from .._errors import SpecError
from ._model import OUTPUT, Model, flatten_captured, flatten_params, unflatten_params

_RECORDING = threading.local()


def capture(name: str, value):
    """Marks ``value`` as the layer ``name`` when a :func:`from_function` model runs; returns ``value``."""
    stack = getattr(_RECORDING, "stack", None)
    if stack:
        stack[-1].setdefault(str(name), []).append(value)
    return value


def _path_name(path) -> str:
    parts = []
    for key in path:
        for attribute in ("key", "idx", "name"):
            if hasattr(key, attribute):
                parts.append(str(getattr(key, attribute)))
                break
        else:
            parts.append(str(key))
    return "/".join(parts)


def from_function(
    apply_fn, params, input_shape, input_dtype: str = "float32", *, name: str | None = None, example_inputs=None
) -> Model:
    """Wraps ``apply_fn(params, x)`` (see the module docstring); every leaf of ``params`` is differentiated."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
    names = [_path_name(path) for path, _ in leaves]
    if len(set(names)) != len(names) or any(not n for n in names):
        raise SpecError("from_function: parameter leaves need distinct, non-empty pytree paths (use a dict).")
    flat = {n: leaf for n, (_, leaf) in zip(names, leaves)}

    def capture_fn(params, constants, x):
        by_name = flatten_params(params)
        values = treedef.unflatten([by_name[n] for n in names])
        stack = getattr(_RECORDING, "stack", None)
        if stack is None:
            stack = _RECORDING.stack = []
        stack.append({})
        try:
            out = apply_fn(values, x)
        finally:
            recorded = stack.pop()
        captured = {k: tuple(v) for k, v in recorded.items()}
        outputs = jax.tree_util.tree_flatten_with_path(out)[0]
        if len(outputs) == 1 and not outputs[0][0]:
            captured[OUTPUT] = (outputs[0][1],)
        else:
            for path, leaf in outputs:
                captured[f"{OUTPUT}/{_path_name(path)}"] = (leaf,)
        return flatten_captured(captured)

    return Model(
        name=name if name else getattr(apply_fn, "__name__", "function"),
        framework="function",
        params=unflatten_params(flat),
        constants={},
        input_shape=tuple(input_shape),
        input_dtype=str(np.dtype(input_dtype)),
        capture_fn=capture_fn,
        example_inputs=None if example_inputs is None else np.asarray(example_inputs),
        eval_mode="a plain function: no evaluation mode to select",
    )
