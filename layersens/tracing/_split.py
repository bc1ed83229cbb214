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

from .._errors import InputShapeError, SelectionError, UnknownLayerError
from .._repr import Summarized
from ..analysis import first_use, jaxpr_dependence, prune
from ..models import OUTPUT, Model
from ._complex import (
    IMAG_PART,
    REAL_PART,
    ComplexMode,
    ComplexParts,
    as_complex_mode,
    check_holomorphic,
    is_complex,
    real_layer,
)
from ._select import INPUT, Differentiated, Wrt, WrtKind, as_wrt, select
from ._trace import ModelTrace, trace_model


@dataclasses.dataclass(frozen=True, repr=False)
class LayerInfo(Summarized):
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

    def _summary(self):
        return [
            ("name", self.name),
            ("shape", self.shape),
            ("dtype", self.dtype),
            ("upstream", self.upstream),
            ("num_upstream_params", self.num_upstream_params),
        ]


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class LayerSplit(Summarized):
    """A model cut at one layer, and what is differentiated.

    Attributes:
      layer: the layer's name.
      model: the :class:`Model` it was cut from.
      params: the differentiated leaves, in order of first use: the columns of the Jacobian. For
        ``wrt="input"`` one leaf ``"input"``, for ``wrt_layer=A`` one leaf ``A``; their values here are the shapes
        only (the point of each example is computed from it: :meth:`point`).
      jaxpr: the layer for ONE example, ``(*inputs) -> (activation,)``, derived from the model's one trace.
      inputs: the names of the jaxpr's inputs: every parameter leaf, then ``"input"`` (the example), then the
        cut layer for ``wrt_layer``.
      constants: the values of the inputs that are not differentiated, by name.
      activation_shape, activation_dtype: the layer's per-example output.
      excluded: parameter leaves that do not reach the layer (held constant).
      frozen: parameter leaves that reach the layer but are held constant (not selected by ``wrt``, or every
        parameter for input and layer-to-layer Jacobians).
      wrt: the selector that chose the columns (:class:`Wrt`; ``str(wrt)`` is ``"parameters"``, ``"input"`` or
        ``"layer:<name>"``); :attr:`differentiated` describes what it chose.
      input_dtype: dtype the inputs are cast to.
      notes: what a user must know about this split's numbers (random draws, lower precision than asked).
      complex: for a layer or leaves with complex values, how they were made real (``params``, ``jaxpr`` and the
        activation are then the real problem's) and how its Jacobian becomes the stated one; ``None`` otherwise.
    """

    layer: str
    model: Model
    params: dict[str, jax.Array]
    jaxpr: jcore.ClosedJaxpr
    inputs: tuple[str, ...]
    constants: dict[str, jax.Array]
    activation_shape: tuple[int, ...]
    activation_dtype: str
    excluded: tuple[str, ...]
    input_dtype: str
    frozen: tuple[str, ...] = ()
    wrt: Wrt = Wrt.parameters()
    notes: tuple[str, ...] = ()
    point_jaxpr: jcore.ClosedJaxpr | None = dataclasses.field(default=None, repr=False)
    complex: ComplexParts | None = None

    def _summary(self):
        return [
            ("layer", self.layer),
            ("model", self.model.name),
            ("activation", f"{self.activation_dtype}{list(self.activation_shape)}"),
            ("wrt", str(self.wrt)),
            ("complex", "" if self.complex is None else self.complex.mode.value),
            ("params", self.param_names),
            ("num_params", f"{self.num_params:,}"),
            ("frozen", len(self.frozen)),
            ("excluded", len(self.excluded)),
            ("notes", len(self.notes)),
        ]

    @property
    def differentiated(self) -> Differentiated:
        """What this split differentiates (the Jacobian's columns), what it holds constant, and what is not
        upstream."""
        return Differentiated(self.wrt.kind, self.param_names, self.param_shapes, self.frozen, self.excluded)

    @property
    def param_names(self) -> tuple[str, ...]:
        return tuple(self.params)

    @functools.cached_property  # read on every call: a small layer's whole Jacobian takes tens of microseconds
    def param_shapes(self) -> tuple[tuple[int, ...], ...]:
        return tuple(tuple(np.shape(v)) for v in self.params.values())

    @functools.cached_property
    def num_params(self) -> int:
        return int(sum(np.prod(s, dtype=np.int64) for s in self.param_shapes))

    @functools.cached_property
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

    @functools.cached_property
    def _point_function(self):
        return jcore.jaxpr_as_fun(self.point_jaxpr)

    def point(self, params: dict, x) -> dict:
        """The differentiated values at example ``x``: the parameters themselves, the example (``wrt="input"``)
        or the earlier layer's activation for ``x`` (``wrt_layer``)."""
        if self.wrt.kind is WrtKind.PARAMETERS:
            return params
        x = jnp.asarray(x, self.input_dtype)
        if self.wrt.kind is WrtKind.INPUT:
            return {INPUT: x}
        (name,) = self.params
        leaves = [self.constants[n] for n in self.inputs[:-2]]
        return {name: self._point_function(*leaves, x)[0]}

    def apply(self, params: dict, x) -> jax.Array:
        """The layer's activation for one example ``x``, with the differentiated values taken from ``params``
        (for parameters: at least the upstream leaves; otherwise the values at the point, see :meth:`point`)."""
        values = {**self.constants, INPUT: jnp.asarray(x, self.input_dtype), **params}
        return self._function(*[values[n] for n in self.inputs])[0]

    def evaluate(self, params: dict, x) -> jax.Array:
        """The layer's activation for example ``x`` at its own point: ``apply(point(params, x), x)``."""
        return self.apply(self.point(params, x), x)

    def __call__(self, params: dict, x) -> jax.Array:
        return self.apply(params, x)


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
        infos.append(
            LayerInfo(
                name=name,
                shape=tuple(shape.shape[1:]),
                dtype=str(shape.dtype),
                upstream=up,
                num_upstream_params=int(sum(np.size(trace.leaves[n]) for n in up)),
            )
        )
    return tuple(infos)


def _layer_jaxpr(trace: ModelTrace, layer: str, cut: str | None = None) -> jcore.ClosedJaxpr:
    """The layer for one example, derived from the model's trace (the jaxpr is re-traced, not the model):
    ``(*leaves, x) -> activation``, or with ``cut``, ``(*leaves, x, a) -> activation`` where ``a`` replaces that
    earlier layer's value everywhere it is used."""
    closed = trace.jaxpr
    index = trace.layer_names.index(layer)
    extra = []
    if cut is not None:
        old = closed.jaxpr.outvars[trace.layer_names.index(cut)]
        new = jcore.gensym()(old.aval)
        swap = lambda v: new if v is old else v  # noqa: E731
        jaxpr = closed.jaxpr.replace(
            invars=list(closed.jaxpr.invars) + [new],
            eqns=[e.replace(invars=[swap(v) for v in e.invars]) for e in closed.jaxpr.eqns],
            outvars=[swap(v) for v in closed.jaxpr.outvars],
        )
        closed = jcore.ClosedJaxpr(jaxpr, closed.consts)
        shape = trace.shapes[cut]
        extra = [jax.ShapeDtypeStruct(tuple(shape.shape[1:]), shape.dtype)]
    everything = jcore.jaxpr_as_fun(closed)

    def one_example(*args):
        return everything(*[a[None] if i >= len(trace.leaf_names) else a for i, a in enumerate(args)])[index][0]

    x = jax.ShapeDtypeStruct(tuple(trace.input_shape), trace.input_dtype)
    return prune(jax.make_jaxpr(one_example)(*[trace.leaves[n] for n in trace.leaf_names], x, *extra))


def _checked_layer(trace: ModelTrace, model: Model, layer: str, dtype, what: str = "layer"):
    if layer not in trace.shapes:
        raise UnknownLayerError(layer, [info.name for info in list_layers(model, dtype)], what=what)
    shape = trace.shapes[layer]
    if not _batched(shape):
        raise InputShapeError(
            f"{what} {layer!r} has shape {shape.shape} for one example; its first axis is not the batch axis, so "
            "it has no per-example Jacobian. Capture a value that keeps the batch axis first."
        )
    return shape


def split(
    model: Model, layer: str, dtype=None, *, wrt=None, wrt_layer: str | None = None, complex_mode=None
) -> LayerSplit:
    """Cuts ``model`` at ``layer``; see :class:`LayerSplit`.

    Args:
      model: from :func:`layersens.load_model`, :func:`from_linen`, :func:`from_nnx` or :func:`from_function`.
      layer: a name listed by :func:`list_layers`.
      dtype: casts the floating parameters and inputs (e.g. ``float64`` for finite-difference checks).
      wrt: which upstream parameters to differentiate: glob patterns over leaf paths (``"generator/*"``, a list,
        ``"!"`` to exclude), a predicate ``(path_tuple, value) -> bool`` or an NNX path filter; the others are
        held constant (``frozen``). ``"input"``: the Jacobian with respect to the example's own input (saliency).
        Default: every upstream leaf.
      wrt_layer: an earlier layer: the Jacobian of ``layer`` with respect to that layer's activation, the model
        cut at both points (everything else held fixed: the partial derivative through that activation).
      complex_mode: for a complex layer or complex parameters, the convention of their Jacobian: ``"real"``,
        ``"complex"`` or ``"holomorphic"`` (see :mod:`layersens.tracing._complex` and the README's "Complex-valued
        models"); without it complex values are refused. Real models ignore it.
    """
    selector = as_wrt(wrt, wrt_layer)
    complex_mode = as_complex_mode(complex_mode)
    trace = trace_model(model, dtype)
    shape = _checked_layer(trace, model, layer, dtype)
    notes = []
    if selector.kind is WrtKind.LAYER:
        wrt_layer = selector.layer
        assert wrt_layer is not None, "a layer selector names its layer (Wrt.at_layer)"
        cut_shape = _checked_layer(trace, model, wrt_layer, dtype, what="wrt_layer")
        jaxpr = _layer_jaxpr(trace, layer, cut=wrt_layer)
        reached = jaxpr_dependence(jaxpr)[0]
        if len(jaxpr.jaxpr.invars) - 1 not in reached:
            order = _layer_order(trace)
            earlier = [n for n in order[: order.index(layer)] if n != wrt_layer]
            raise SelectionError(
                f"{layer!r} does not depend on {wrt_layer!r}; choose a layer computed before it on its path, e.g. "
                f"{', '.join(earlier[-5:]) or 'none'}."
            )
        inputs = tuple(trace.leaf_names) + (INPUT, wrt_layer)
        differentiated = {wrt_layer: jnp.zeros(cut_shape.shape[1:], cut_shape.dtype)}
        point_jaxpr = _layer_jaxpr(trace, wrt_layer)
    else:
        jaxpr = _layer_jaxpr(trace, layer)
        inputs = tuple(trace.leaf_names) + (INPUT,)
        point_jaxpr = None
    if draws_random(jaxpr.jaxpr):
        notes.append(
            f"{model.name} draws random numbers on the way to {layer!r} in evaluation mode (noise, such as "
            "a VAE's); every call draws the same numbers from the model's fixed random-number state, so "
            "results are reproducible, and the Jacobian is that of this one draw."
        )
    if dtype is not None:
        notes += _precision_notes(trace, layer, np.dtype(dtype))
    (reached,) = jaxpr_dependence(jaxpr)
    order = _leaf_order(trace)
    upstream = [n for n in order if trace.leaf_names.index(n) in reached]
    if selector.kind is WrtKind.PARAMETERS:
        if not upstream:
            raise SelectionError(
                f"no parameter reaches {layer!r}: it is computed from the input alone, so its Jacobian with respect "
                f"to parameters is empty. Choose a later layer, or differentiate with respect to the input "
                f"(wrt='input', --wrt input)."
            )
        chosen = upstream if selector.select is None else select(upstream, trace.leaves, selector.select, upstream)
        differentiated = {n: trace.leaves[n] for n in chosen}
    elif selector.kind is WrtKind.INPUT:
        if trace.input_dtype and not jnp.issubdtype(np.dtype(trace.input_dtype), jnp.floating):
            raise SelectionError(
                f"the model's inputs are {trace.input_dtype} (e.g. token ids): there is no Jacobian with respect to "
                "them. Differentiate with respect to an embedding instead (wrt_layer='embed', --wrt-layer embed)."
            )
        differentiated = {INPUT: jnp.zeros(tuple(model.input_shape), trace.input_dtype)}
    complex_leaves = tuple(n for n, v in differentiated.items() if is_complex(v.dtype))
    if complex_leaves or is_complex(shape.dtype):
        _check_complex_mode(complex_mode, complex_leaves, shape, layer, selector)
    values = {**trace.leaves}
    constants = {n: v for n, v in values.items() if n not in differentiated}
    cut = LayerSplit(
        layer=layer,
        model=model,
        params=differentiated,
        jaxpr=jaxpr,
        inputs=inputs,
        constants=constants,
        activation_shape=tuple(shape.shape[1:]),
        activation_dtype=str(shape.dtype),
        excluded=tuple(n for n in order if n not in upstream),
        input_dtype=trace.input_dtype,
        frozen=tuple(n for n in upstream if n not in differentiated),
        wrt=selector,
        notes=tuple(notes),
        point_jaxpr=point_jaxpr,
    )
    if not complex_leaves and not is_complex(shape.dtype):
        return cut
    assert complex_mode is not None, "checked by _check_complex_mode"
    return _real_problem(cut, complex_mode, complex_leaves)


_CONVENTIONS = (
    "choose how its Jacobian is stated: complex_mode='real' (the real part's, complex leaves as real and "
    "imaginary columns), 'complex' (the complex Jacobian; Wirtinger parts for complex leaves) or 'holomorphic' "
    "(one complex Jacobian of a holomorphic layer); on the command line --complex real|complex|holomorphic."
)


def _check_complex_mode(mode: ComplexMode | None, complex_leaves, shape, layer: str, selector: Wrt):
    if mode is None:
        what = (
            f"leaf {complex_leaves[0]!r} is complex"
            if complex_leaves
            else f"layer {layer!r} is complex ({shape.dtype})"
        )
        raise SelectionError(f"{what}; {_CONVENTIONS}")
    if selector.kind is WrtKind.LAYER and complex_leaves:
        raise SelectionError(
            f"wrt_layer {complex_leaves[0]!r} is complex: a Jacobian with respect to a complex layer's values is "
            "not supported; differentiate with respect to the parameters (complex_mode applies to them)."
        )


def _real_problem(cut: LayerSplit, mode: ComplexMode, complex_leaves: tuple[str, ...]) -> LayerSplit:
    """``cut`` (complex leaves or layer) as a real problem: see :mod:`._complex`."""
    layer_dtype = np.dtype(cut.activation_dtype)
    complex_dtype = layer_dtype if is_complex(layer_dtype) else np.dtype(cut.params[complex_leaves[0]].dtype)
    stacked = is_complex(layer_dtype) and mode is not ComplexMode.REAL
    parts = ComplexParts(
        mode=mode,
        leaves=cut.param_names,
        shapes=cut.param_shapes,
        complex_leaves=complex_leaves,
        stacked=stacked,
        dtype=str(np.finfo(complex_dtype).dtype if mode is ComplexMode.REAL else complex_dtype),
    )
    notes = [parts.convention()]
    if mode is ComplexMode.HOLOMORPHIC and complex_leaves:
        examples = cut.model.example_inputs
        xs = (
            np.asarray(examples[:2], cut.input_dtype)
            if examples is not None
            else np.random.default_rng(0).standard_normal((1,) + tuple(cut.input_shape)).astype(cut.input_dtype)
        )
        notes.append(check_holomorphic(cut.apply, cut.params, complex_leaves, xs, cut.layer))
    jaxpr, inputs = real_layer(cut.jaxpr, cut.inputs, parts)
    params, constants = {}, dict(cut.constants)
    for name, value in cut.params.items():
        if name not in complex_leaves:
            params[name] = value
            continue
        params[name + REAL_PART] = jnp.real(value)
        (constants if mode is ComplexMode.HOLOMORPHIC else params)[name + IMAG_PART] = jnp.imag(value)
    return dataclasses.replace(
        cut,
        params=params,
        jaxpr=jaxpr,
        inputs=inputs,
        constants=constants,
        activation_shape=((2,) if stacked else ()) + cut.activation_shape,
        activation_dtype=str(np.finfo(layer_dtype).dtype) if is_complex(layer_dtype) else cut.activation_dtype,
        notes=cut.notes + tuple(notes),
        complex=parts,
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
    lower = [
        n
        for n in order[: order.index(layer) + 1]
        if jnp.issubdtype(trace.shapes[n].dtype, jnp.floating) and np.dtype(trace.shapes[n].dtype) < dtype
    ]
    if np.dtype(trace.shapes[layer].dtype) >= dtype or not lower:
        return []
    first = lower[0]
    note = (
        f"{dtype.name} was asked for, but {first!r} computes in {np.dtype(trace.shapes[first].dtype).name} (a "
        f"module built with a lower dtype, e.g. dtype=jnp.float32): {layer!r} and its Jacobian have that "
        f"accuracy. Build the model with dtype=jnp.{dtype.name} for {dtype.name} results."
    )
    warnings.warn(note, PrecisionWarning, stacklevel=3)
    return [note]
