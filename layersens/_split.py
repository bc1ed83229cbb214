"""Splitting a model at a named layer: the upstream parameters and a pure function of them.

``split(model, "relu1")`` traces the model once, finds the parameter leaves that can reach ``relu1`` (see
``_dependence``) and returns a :class:`LayerSplit`: those leaves by name, in the order the forward pass first uses
them, and ``apply(upstream, x) -> activation`` for one example, with every other parameter and variable closed
over as a constant. Under ``jax.jit`` nothing after the split point is computed: the captured value is the only
output, so XLA drops the layers after it.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from ._adapters import OUTPUT, Model
from ._dependence import first_use, jaxpr_dependence
from ._errors import InputShapeError, SpecError, UnknownLayerError


def flatten_params(tree: dict, prefix: str = "") -> dict[str, jax.Array]:
    flat: dict[str, jax.Array] = {}
    for key in tree:
        path = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(tree[key], dict):
            flat.update(flatten_params(tree[key], path))
        else:
            flat[path] = tree[key]
    return flat


def unflatten_params(flat: dict[str, jax.Array]) -> dict:
    tree: dict = {}
    for path, leaf in flat.items():
        node = tree
        *parents, last = path.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = leaf
    return tree


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
      params: the upstream parameter leaves, ``{"conv1/kernel": array, ...}``, in order of first use.
      apply: ``apply(params, x) -> activation`` for ONE example ``x`` of shape ``input_shape``; pure.
      activation_shape, activation_dtype: the layer's per-example output.
      excluded: parameter leaves that do not reach the layer, held constant.
    """

    layer: str
    model: Model
    params: dict[str, jax.Array]
    apply: Callable[[dict, jax.Array], jax.Array]
    activation_shape: tuple[int, ...]
    activation_dtype: str
    excluded: tuple[str, ...]
    input_dtype: str
    cache: dict = dataclasses.field(default_factory=dict, repr=False, compare=False)

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

    def __call__(self, params: dict, x) -> jax.Array:
        return self.apply(params, x)


def _trace_all(model: Model, dtype):
    """One trace of the whole model: every layer's shape, its upstream leaves, and forward order."""
    flat = flatten_params(model.params)
    constants = model.constants
    if dtype is not None:
        flat = {k: _cast(v, dtype) for k, v in flat.items()}
        constants = jax.tree.map(lambda v: _cast(v, dtype), constants)
    x1 = jax.ShapeDtypeStruct((1,) + tuple(model.input_shape), dtype or model.input_dtype)
    names = list(flat)

    def capture_leaves(leaves, x):
        return model.capture(unflatten_params(dict(zip(names, leaves))), x, constants)

    leaves = [flat[n] for n in names]
    closed, shapes = jax.make_jaxpr(capture_leaves, return_shape=True)(leaves, x1)
    dependence = jaxpr_dependence(closed)
    read_at, made_at = first_use(closed)
    # Output leaves come back in jax.tree order of the captured dict, i.e. sorted by name.
    layer_names = sorted(shapes)
    deps = {name: {names[i] for i in dependence[k] if i < len(names)} for k, name in enumerate(layer_names)}
    produced = {name: made_at[k] for k, name in enumerate(layer_names)}
    param_order = [names[i] for i in sorted(range(len(names)), key=lambda i: (read_at[i], i))]
    layer_order = sorted(layer_names, key=lambda n: (produced[n], n == OUTPUT))
    return flat, constants, shapes, deps, param_order, layer_order


def _cast(leaf, dtype):
    if hasattr(leaf, "dtype") and jnp.issubdtype(leaf.dtype, jnp.floating):
        return jnp.asarray(leaf).astype(dtype)
    return leaf


def _check_dtype(dtype):
    if dtype is None:
        return None
    dtype = np.dtype(dtype)
    if dtype == np.float64 and not jax.config.read("jax_enable_x64"):
        raise SpecError(
            "dtype float64 was asked for but JAX runs in 32-bit mode; enable it first with "
            "jax.config.update('jax_enable_x64', True) (or JAX_ENABLE_X64=1)."
        )
    return dtype


def list_layers(model: Model, dtype=None) -> tuple[LayerInfo, ...]:
    """Every addressable layer with its per-example shape and upstream parameters, in forward order."""
    dtype = _check_dtype(dtype)
    flat, _, shapes, deps, order, layer_order = _trace_all(model, dtype)
    infos = []
    for name in layer_order:
        sds = shapes[name]
        if not sds.shape or sds.shape[0] != 1:
            continue  # not batched along the first axis: no per-example value to address
        up = tuple(n for n in order if n in deps[name])
        infos.append(
            LayerInfo(
                name=name,
                shape=tuple(sds.shape[1:]),
                dtype=str(sds.dtype),
                upstream=up,
                num_upstream_params=int(sum(np.size(flat[n]) for n in up)),
            )
        )
    return tuple(infos)


def split(model: Model, layer: str, dtype=None) -> LayerSplit:
    """Cuts ``model`` at ``layer``; see :class:`LayerSplit`.

    ``dtype`` casts the floating parameters and inputs (e.g. ``float64`` for finite-difference checks).
    """
    dtype = _check_dtype(dtype)
    flat, constants, shapes, deps, order, _ = _trace_all(model, dtype)
    if layer not in shapes:
        raise UnknownLayerError(layer, [info.name for info in list_layers(model)])
    sds = shapes[layer]
    if not sds.shape or sds.shape[0] != 1:
        raise InputShapeError(
            f"layer {layer!r} has shape {sds.shape} for one example; its first axis is not the batch axis, so "
            "it has no per-example Jacobian. Capture a value that keeps the batch axis first."
        )
    upstream = {n: flat[n] for n in order if n in deps[layer]}
    frozen = {n: v for n, v in flat.items() if n not in upstream}
    x_dtype = dtype or model.input_dtype

    def apply(params: dict, x):
        merged = unflatten_params({**frozen, **params})
        return model.capture(merged, jnp.asarray(x, x_dtype)[None], constants)[layer][0]

    return LayerSplit(
        layer=layer,
        model=model,
        params=upstream,
        apply=apply,
        activation_shape=tuple(sds.shape[1:]),
        activation_dtype=str(sds.dtype),
        excluded=tuple(n for n in order if n not in upstream),
        input_dtype=str(np.dtype(x_dtype)),
    )
