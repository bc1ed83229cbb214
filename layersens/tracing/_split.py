"""Splitting a model at a named layer: the upstream parameters and a pure function of them.

``split(model, "relu1")`` reads the model's one trace (``_trace``), derives the layer's own per-example jaxpr
from it (nothing after the layer, nothing it does not need), finds the parameter leaves that can reach the layer
(the dependence analysis) and returns a :class:`LayerSplit`: those leaves by name, in the order the forward pass
first uses them, the jaxpr, and ``apply(upstream, x) -> activation`` for one example, with every other leaf and
variable a constant. Every analysis of the split (structure, cost, memory, autodiff limits) reads that jaxpr.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jcore
from jax.extend.core import primitives as P

from .._errors import InputShapeError, UnknownLayerError
from ..analysis import first_use, jaxpr_dependence, prune
from ..models import OUTPUT, Model
from ._trace import ModelTrace, trace_model


@dataclasses.dataclass(frozen=True)
class LayerInfo:
    """One addressable layer: its per-example output and the parameters upstream of it."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    upstream: tuple[str, ...]
    num_upstream_params: int

    @property
    def num_outputs(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def jacobian_bytes_per_example(self) -> int:
        return self.num_outputs * self.num_upstream_params * np.dtype(self.dtype).itemsize


@dataclasses.dataclass(frozen=True, eq=False)
class LayerSplit:
    """A model cut at one layer.

    Attributes:
      layer: the layer's name.
      model: the :class:`Model` it was cut from.
      params: the upstream parameter leaves, ``{"conv1/kernel": array, ...}``, in order of first use: the
        columns of the Jacobian.
      jaxpr: the layer for ONE example, ``(*leaves in leaf_names order, x) -> (activation,)``, traced once.
      leaf_names: every parameter leaf of the model, in the jaxpr's input order.
      constants: the leaves that are not differentiated, by name.
      activation_shape, activation_dtype: the layer's per-example output.
      excluded: parameter leaves that do not reach the layer, held constant.
      input_dtype: dtype the inputs are cast to.
      notes: what a user must know about this split's numbers (random draws, lower precision than asked).
    """

    layer: str
    model: Model
    params: dict[str, jax.Array]
    jaxpr: jcore.ClosedJaxpr
    leaf_names: tuple[str, ...]
    constants: dict[str, jax.Array]
    activation_shape: tuple[int, ...]
    activation_dtype: str
    excluded: tuple[str, ...]
    input_dtype: str
    notes: tuple[str, ...] = ()

    @property
    def param_names(self) -> tuple[str, ...]:
        return tuple(self.params)

    @property
    def param_shapes(self) -> tuple[tuple[int, ...], ...]:
        return tuple(tuple(np.shape(v)) for v in self.params.values())

    @property
    def num_params(self) -> int:
        return int(sum(np.prod(s, dtype=np.int64) for s in self.param_shapes))

    @property
    def num_outputs(self) -> int:
        return int(np.prod(self.activation_shape, dtype=np.int64))

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.model.input_shape

    @property
    def dtype(self) -> str:
        return self.activation_dtype

    @functools.cached_property
    def _function(self):
        return jcore.jaxpr_as_fun(self.jaxpr)

    def apply(self, params: dict, x) -> jax.Array:
        """The layer's activation for one example ``x``; ``params`` holds (at least) the upstream leaves."""
        args = [params[n] if n in params else self.constants[n] for n in self.leaf_names]
        return self._function(*args, jnp.asarray(x, self.input_dtype))[0]

    def __call__(self, params: dict, x) -> jax.Array:
        return self.apply(params, x)

    @functools.cached_property
    def analysis(self):
        """What the analyses know of this split (structure, cost, memory, autodiff limits); computed once."""
        from ..analysis import analyze

        return analyze(self)


def _batched(shape) -> bool:
    return bool(shape.shape) and shape.shape[0] == 1


def _layer_order(trace: ModelTrace) -> list[str]:
    """The captured values in the order the forward pass produces them (the model's output last on ties)."""
    _, made_at = first_use(trace.jaxpr)
    produced = dict(zip(trace.layer_names, made_at))
    return sorted(trace.layer_names, key=lambda n: (produced[n], n == OUTPUT))


def _leaf_order(trace: ModelTrace) -> list[str]:
    read_at, _ = first_use(trace.jaxpr)
    n = len(trace.leaf_names)
    return [trace.leaf_names[i] for i in sorted(range(n), key=lambda i: (read_at[i], i))]


def list_layers(model: Model, dtype=None) -> tuple[LayerInfo, ...]:
    """Every addressable layer with its per-example shape and upstream parameters, in forward order."""
    trace = trace_model(model, dtype)
    dependence = dict(zip(trace.layer_names, jaxpr_dependence(trace.jaxpr)))
    order = _leaf_order(trace)
    position = {name: i for i, name in enumerate(trace.leaf_names)}
    infos = []
    for name in _layer_order(trace):
        shape = trace.shapes[name]
        if not _batched(shape):
            continue  # not batched along the first axis: no per-example value to address
        up = tuple(n for n in order if position[n] in dependence[name])
        infos.append(LayerInfo(
            name=name,
            shape=tuple(shape.shape[1:]),
            dtype=str(shape.dtype),
            upstream=up,
            num_upstream_params=int(sum(np.size(trace.leaves[n]) for n in up)),
        ))
    return tuple(infos)


def _layer_jaxpr(trace: ModelTrace, layer: str) -> jcore.ClosedJaxpr:
    """The layer for one example, derived from the model's trace (the jaxpr is re-traced, not the model)."""
    index = trace.layer_names.index(layer)
    everything = jcore.jaxpr_as_fun(trace.jaxpr)

    def one_example(*args):
        *leaves, x = args
        return everything(*leaves, x[None])[index][0]

    x = jax.ShapeDtypeStruct(tuple(trace.model.input_shape), trace.input_dtype)
    return prune(jax.make_jaxpr(one_example)(*[trace.leaves[n] for n in trace.leaf_names], x))


def split(model: Model, layer: str, dtype=None) -> LayerSplit:
    """Cuts ``model`` at ``layer``; see :class:`LayerSplit`.

    ``dtype`` casts the floating parameters and inputs (e.g. ``float64`` for finite-difference checks).
    """
    trace = trace_model(model, dtype)
    if layer not in trace.shapes:
        raise UnknownLayerError(layer, [info.name for info in list_layers(model, dtype)])
    shape = trace.shapes[layer]
    if not _batched(shape):
        raise InputShapeError(
            f"layer {layer!r} has shape {shape.shape} for one example; its first axis is not the batch axis, so "
            "it has no per-example Jacobian. Capture a value that keeps the batch axis first."
        )
    jaxpr = _layer_jaxpr(trace, layer)
    notes = []
    if draws_random(jaxpr.jaxpr):
        notes.append(f"{model.name} draws random numbers on the way to {layer!r} in evaluation mode (noise, such as "
                     "a VAE's); every call draws the same numbers from the model's fixed random-number state, so "
                     "results are reproducible, and the Jacobian is that of this one draw.")
    if dtype is not None:
        notes += _precision_notes(trace, layer, np.dtype(dtype))
    (reached,) = jaxpr_dependence(jaxpr)
    upstream_names = {trace.leaf_names[i] for i in reached if i < len(trace.leaf_names)}
    order = _leaf_order(trace)
    upstream = {n: trace.leaves[n] for n in order if n in upstream_names}
    return LayerSplit(
        layer=layer,
        model=model,
        params=upstream,
        jaxpr=jaxpr,
        leaf_names=trace.leaf_names,
        constants={n: v for n, v in trace.leaves.items() if n not in upstream},
        activation_shape=tuple(shape.shape[1:]),
        activation_dtype=str(shape.dtype),
        excluded=tuple(n for n in order if n not in upstream),
        input_dtype=trace.input_dtype,
        notes=tuple(notes),
    )


RANDOM_PRIMITIVES = (P.random_bits_p, P.threefry2x32_p, P.rng_bit_generator_p, P.rng_uniform_p)


def draws_random(jaxpr) -> bool:
    """Whether ``jaxpr`` (or any jaxpr inside it) draws random numbers."""
    for eqn in jaxpr.eqns:
        if eqn.primitive in RANDOM_PRIMITIVES:
            return True
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                if isinstance(sub, jcore.ClosedJaxpr):
                    sub = sub.jaxpr
                if isinstance(sub, jcore.Jaxpr) and draws_random(sub):
                    return True
    return False


class PrecisionWarning(UserWarning):
    """A model computes in a lower precision than the dtype asked for."""


def _precision_notes(trace: ModelTrace, layer: str, dtype: np.dtype) -> list[str]:
    if not np.issubdtype(dtype, np.floating):
        return []
    order = _layer_order(trace)
    lower = [n for n in order[:order.index(layer) + 1]
             if jnp.issubdtype(trace.shapes[n].dtype, jnp.floating) and np.dtype(trace.shapes[n].dtype) < dtype]
    if np.dtype(trace.shapes[layer].dtype) >= dtype or not lower:
        return []
    first = lower[0]
    note = (f"{dtype.name} was asked for, but {first!r} computes in {np.dtype(trace.shapes[first].dtype).name} (a "
            f"module built with a lower dtype, e.g. dtype=jnp.float32): {layer!r} and its Jacobian have that "
            f"accuracy. Build the model with dtype=jnp.{dtype.name} for {dtype.name} results.")
    warnings.warn(note, PrecisionWarning, stacklevel=3)
    return [note]
