"""The one trace of a model: every addressable value of one forward pass as a function of the parameter leaves.

``trace_model`` traces ``model.capture`` once (shapes only) into a ``ClosedJaxpr`` whose inputs are the
parameter leaves, in ``leaf_names`` order, then a batch of one example, and whose outputs are the captured
values, in ``layer_names`` order. Everything downstream (which leaves reach a layer, the layer's own function,
channel structure, cost, memory) is read from this trace or from jaxprs derived from it, never from another
trace of the model. Traces are kept per model and dtype while the model is alive.
"""

from __future__ import annotations

import dataclasses
import weakref

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jcore

from .._errors import InputValueError, SelectionError
from ..models import Model, flatten_params, unflatten_params
from ._names import derived_values


@dataclasses.dataclass(frozen=True, eq=False)
class ModelTrace:
    """One trace of ``model.capture``.

    Attributes:
      jaxpr: ``(*leaves, x) -> captured values``; ``x`` is a batch of one example.
      leaf_names: every parameter leaf, ``"module/param"``, in the jaxpr's input order.
      leaves: their values (cast to ``dtype`` where floating).
      constants: the model's other variables, held fixed (cast likewise).
      layer_names: the captured values, then the values named between modules (``_names``), in the jaxpr's
        output order.
      shapes: ``layer name -> ShapeDtypeStruct`` of the captured value (with the batch axis of one).
      input_shape: the shape of one example.
      input_dtype: dtype the inputs are cast to.

    It holds no reference to the model, so that a model nobody holds is freed with its traces.
    """

    jaxpr: jcore.ClosedJaxpr
    leaf_names: tuple[str, ...]
    leaves: dict
    constants: dict
    layer_names: tuple[str, ...]
    shapes: dict
    input_shape: tuple[int, ...]
    input_dtype: str


def cast_floating(leaf, dtype):
    """``leaf`` cast to ``dtype`` if it is floating; a complex leaf to the complex type of that precision."""
    if dtype is None or not hasattr(leaf, "dtype"):
        return leaf
    if jnp.issubdtype(leaf.dtype, jnp.floating):
        return jnp.asarray(leaf).astype(dtype)
    if jnp.issubdtype(leaf.dtype, jnp.complexfloating) and jnp.issubdtype(dtype, jnp.floating):
        return jnp.asarray(leaf).astype(jnp.result_type(dtype, jnp.complex64))
    return leaf


def check_dtype(dtype):
    if dtype is None:
        return None
    dtype = np.dtype(dtype)
    if dtype == np.float64 and not jax.config.read("jax_enable_x64"):
        raise SelectionError(
            "dtype float64 was asked for but JAX runs in 32-bit mode; enable it first with "
            "jax.config.update('jax_enable_x64', True) (or JAX_ENABLE_X64=1; the CLI's --x64)."
        )
    return dtype


_TRACES: "weakref.WeakKeyDictionary[Model, dict]" = weakref.WeakKeyDictionary()


def trace_model(model: Model, dtype=None) -> ModelTrace:
    """The trace of ``model`` at ``dtype`` (``None``: as stored); see :class:`ModelTrace`."""
    dtype = check_dtype(dtype)
    per_model = _TRACES.setdefault(model, {})
    key = None if dtype is None else str(dtype)
    if key not in per_model:
        per_model[key] = _trace(model, dtype)
    return per_model[key]


def check_finite(model: Model) -> None:
    """NaN or Inf in a parameter or constant is an error naming the leaf: no Jacobian of it means anything."""
    for kind, tree in (("parameter", model.params), ("constant", model.constants)):
        for name, leaf in flatten_params(tree).items():
            if hasattr(leaf, "dtype") and jnp.issubdtype(leaf.dtype, jnp.inexact):
                bad = int(np.size(leaf) - np.count_nonzero(np.isfinite(np.asarray(leaf))))
                if bad:
                    raise InputValueError(
                        f"{kind} leaf {name} of {model.name} holds {bad:,} NaN or Inf value(s) of {np.size(leaf):,}: "
                        "the checkpoint is damaged or training diverged. Load a good checkpoint."
                    )


def _trace(model: Model, dtype) -> ModelTrace:
    check_finite(model)
    flat = {k: cast_floating(v, dtype) for k, v in flatten_params(model.params).items()}
    constants = jax.tree.map(lambda v: cast_floating(v, dtype), model.constants)
    names = tuple(flat)
    floating_inputs = np.issubdtype(np.dtype(model.input_dtype), np.floating)
    input_dtype = str(np.dtype(dtype if dtype is not None and floating_inputs else model.input_dtype))  # ids stay ints
    x1 = jax.ShapeDtypeStruct((1,) + tuple(model.input_shape), input_dtype)

    def captured(*args):
        *leaves, x = args
        values = model.capture(unflatten_params(dict(zip(names, leaves))), x, constants)
        layer_names = tuple(values)
        return [values[k] for k in layer_names], layer_names

    holder = {}

    def outputs(*args):
        values, holder["names"] = captured(*args)
        return values

    closed, shapes = jax.make_jaxpr(outputs, return_shape=True)(*[flat[n] for n in names], x1)
    layer_names = list(holder["names"])
    shapes = list(shapes)
    jaxpr = closed.jaxpr
    derived = [
        (n, v) for n, v in derived_values(jaxpr, set(jaxpr.outvars), model.framework == "linen") if n not in layer_names
    ]
    if derived:
        closed = jcore.ClosedJaxpr(jaxpr.replace(outvars=list(jaxpr.outvars) + [v for _, v in derived]), closed.consts)
        layer_names += [n for n, _ in derived]
        # jax types Var.aval as AbstractValue; a traced value's is a ShapedArray, with shape and dtype
        shapes += [jax.ShapeDtypeStruct(v.aval.shape, v.aval.dtype) for _, v in derived]  # type: ignore[attr-defined]
    return ModelTrace(
        jaxpr=closed,
        leaf_names=names,
        leaves=flat,
        constants=constants,
        layer_names=tuple(layer_names),
        shapes=dict(zip(layer_names, shapes)),
        input_shape=tuple(model.input_shape),
        input_dtype=input_dtype,
    )
