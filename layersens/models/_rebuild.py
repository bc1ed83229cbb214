"""Rebuilding the Flax module a spec describes, and checking a checkpoint's variables against it (used when saving,
to prove the spec rebuilds the model, and when loading)."""

from __future__ import annotations

import inspect
from pathlib import Path

import jax
import numpy as np

from .._errors import CheckpointError, SpecError
from ._imports import Resolver, is_library
from ._linen import unbox
from ._model import flatten_params
from ._spec import ModelSpec
from ._values import decode, is_flax_module_class


def user_resolver(**kwargs) -> Resolver:
    return Resolver(allow_import=True, **kwargs)


def _call_builder(spec: ModelSpec, resolver: Resolver):
    kwargs = decode(spec.kwargs, resolver, "kwargs")
    if spec.module is not None:
        cls = resolver.resolve(spec.module, "the model's module class")
        if not is_flax_module_class(cls):
            raise SpecError(f"spec field 'module' names {spec.module!r}, which is not a Flax module class.")
        return cls, kwargs
    assert spec.factory is not None, "a spec names exactly one of module and factory (checked on creation)"
    fn = resolver.resolve(spec.factory, "the model's factory")
    if isinstance(fn, type) or not inspect.isfunction(fn) or is_library(fn.__module__):
        raise SpecError(
            f"spec field 'factory' names {spec.factory!r}, which is not a function of the model's own "
            "code; a factory is a function returning the Flax module."
        )
    return fn, kwargs


def build(spec: ModelSpec, resolver: Resolver):
    """The module the spec describes: its class called with the kwargs (NNX: and ``rngs``), or its factory."""
    import flax.linen as nn
    from flax import nnx

    builder, kwargs = _call_builder(spec, resolver)
    if spec.module is not None:
        _check_framework(spec, "nnx" if issubclass(builder, nnx.Module) else "linen")
    wants_rngs = (
        spec.framework == "nnx"
        and "rngs" not in kwargs
        and (spec.module is not None or "rngs" in inspect.signature(builder).parameters)
    )
    try:
        module = builder(**kwargs, **({"rngs": nnx.Rngs(0)} if wants_rngs else {}))
    except TypeError as e:
        raise SpecError(
            f"cannot build {spec.builder} with the arguments {sorted(map(repr, kwargs))}: {' '.join(str(e).split())}"
        ) from None
    if isinstance(module, nnx.Module):
        kind = "nnx"
    elif isinstance(module, nn.Module):
        kind = "linen"
    else:
        raise SpecError(f"{spec.builder} returned a {type(module).__name__}, not a Flax module.")
    _check_framework(spec, kind)
    return module


def _check_framework(spec: ModelSpec, kind: str):
    if kind != spec.framework:
        raise SpecError(
            f"the spec says framework {spec.framework!r}, but {spec.builder} builds a {kind} module; "
            f'set "framework": "{kind}".'
        )


def abstract_nnx(spec: ModelSpec, resolver: Resolver):
    from flax import nnx

    return nnx.eval_shape(lambda: build(spec, resolver))


def check_linen_state(module, spec: ModelSpec, state: dict, where: Path, when: str = "loading"):
    x = jax.ShapeDtypeStruct((1,) + spec.input_shape, spec.input_dtype)
    try:
        expected = jax.eval_shape(lambda x: module.init(jax.random.key(0), x, **spec.call_kwargs), x)
    except Exception as e:  # noqa: BLE001 - whatever the user's module raises when it is initialized
        raise SpecError(
            f"{spec.builder} with the recorded arguments cannot be initialized on inputs of shape "
            f"{spec.input_shape} ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})."
        ) from None
    expected = {k: v for k, v in dict(unbox(expected)).items() if k != "intermediates"}
    check_shapes(expected, state, where, spec, when)


def check_shapes(expected, restored, where: Path, spec: ModelSpec, when: str = "loading"):
    want = {k: tuple(np.shape(v)) for k, v in flatten_params(dict(expected)).items()}
    got = {k: tuple(np.shape(v)) for k, v in flatten_params(dict(restored)).items()}
    if want == got:
        return
    missing = sorted(set(want) - set(got))
    extra = sorted(set(got) - set(want))
    wrong = [f"{k}: checkpoint {got[k]}, module {want[k]}" for k in sorted(set(want) & set(got)) if want[k] != got[k]]
    parts = [f"missing {missing}" if missing else "", f"unexpected {extra}" if extra else "", "; ".join(wrong)]
    detail = "; ".join(p for p in parts if p)
    if when == "saving":
        raise SpecError(
            f"the recorded arguments rebuild a {spec.builder} whose variables differ from the ones "
            f"being saved ({detail}); pass kwargs= or factory= that rebuild this model."
        )
    raise CheckpointError(
        f"the checkpoint in {where} does not fit {spec.builder} with kwargs {spec.kwargs}: {detail}. Check the "
        "spec's kwargs against the ones used for training."
    )
