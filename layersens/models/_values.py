"""Constructor arguments as JSON: what a module was built with, recorded so that it can be rebuilt.

Plain JSON values stay as they are. Everything else is tagged, by import path, never pickled:

==========================  ===============================================================================
value                       recorded as
==========================  ===============================================================================
tuple                       ``{"__tuple__": [...]}``
dtype (``jnp.float32``)     ``{"__dtype__": "float32"}``
Flax module class           ``{"__class__": "pkg.mod:ResNetBlock"}``
config dataclass instance   ``{"__dataclass__": "pkg.mod:TransformerConfig", "fields": {...}}`` (non-default
                            fields only)
``functools.partial``       ``{"__partial__": "flax.linen:Conv", "args": [...], "kwargs": {...}}``
function (``nn.relu``)      ``{"__function__": "flax.linen:relu"}`` (referenced, never called by layersens)
==========================  ===============================================================================

Reading calls nothing but a config dataclass's constructor; only Flax module classes (and declared factories,
``_rebuild``) are ever called to build a model.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
from typing import Any

import numpy as np

from .._errors import SpecError

TAGS = ("__tuple__", "__dtype__", "__class__", "__dataclass__", "__partial__", "__function__")
_PUBLIC = ("flax.linen", "flax.nnx", "jax.nn", "jax.numpy", "jax.lax", "jax", "numpy")


class Unrecordable(SpecError):
    """A constructor argument that cannot be written as JSON or an import path."""


def is_flax_module_class(obj) -> bool:
    if not isinstance(obj, type):
        return False
    import flax.linen as nn
    from flax import nnx

    return issubclass(obj, (nn.Module, nnx.Module))


def import_path(obj, what: str) -> str:
    """``package.module:Name`` of a class or function, preferring Flax/JAX's public aliases."""
    name = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None)
    module = getattr(obj, "__module__", None)
    if not name or not module:
        raise Unrecordable(f"{what} ({obj!r}) has no import path")
    short = getattr(obj, "__name__", "")
    for public in _PUBLIC:
        mod = sys.modules.get(public)
        if mod is not None and getattr(mod, short, None) is obj:
            return f"{public}:{short}"
    if module == "__main__" or "<locals>" in name:
        raise Unrecordable(
            f"{what} ({name}) is defined in a script, notebook or function, so it cannot be imported when the "
            "model is loaded again: move it to a module file (see the README, 'Your own model')"
        )
    if getattr(sys.modules.get(module), name.split(".")[0], None) is None:
        raise Unrecordable(f"{what} ({module}.{name}) cannot be found again by its import path")
    return f"{module}:{name}"


def _same(a, b) -> bool:
    if a is b:
        return True
    try:
        return bool(a == b)
    except Exception:  # arrays and other values without a truth value: not equal for our purpose
        return False


def _is_dtype(value) -> bool:
    if isinstance(value, np.dtype):
        return True
    if isinstance(value, type) and issubclass(value, np.generic):
        return True
    return type(value).__name__ == "_ScalarMeta"  # jnp.float32 and friends


def changed_fields(instance) -> dict[str, Any]:
    """The init fields of a dataclass instance that differ from their defaults (Flax's parent/name excluded)."""
    out = {}
    for field in dataclasses.fields(instance):
        if not field.init or field.name in ("parent", "name"):
            continue
        value = getattr(instance, field.name)
        if field.default is not dataclasses.MISSING and _same(value, field.default):
            continue
        if field.default_factory is not dataclasses.MISSING:
            try:
                if _same(value, field.default_factory()):
                    continue
            except Exception:
                pass
        out[field.name] = value
    return out


def encode(value, where: str):
    """``value`` as JSON (see the module docstring); raises :class:`Unrecordable` naming ``where``."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, np.generic) and not _is_dtype(value):
        return value.item()
    if isinstance(value, list):
        return [encode(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, tuple) and not hasattr(value, "_fields"):
        return {"__tuple__": [encode(v, f"{where}[{i}]") for i, v in enumerate(value)]}
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise Unrecordable(f"{where} is a dict with keys that are not strings")
        if any(k in TAGS for k in value):
            raise Unrecordable(f"{where} is a dict with a key reserved by the spec format ({TAGS})")
        return {k: encode(v, f"{where}.{k}") for k, v in value.items()}
    if _is_dtype(value):
        return {"__dtype__": np.dtype(value).name}
    if is_flax_module_class(value):
        return {"__class__": import_path(value, where)}
    if isinstance(value, functools.partial):
        return {
            "__partial__": import_path(value.func, where),
            "args": [encode(v, f"{where}.args[{i}]") for i, v in enumerate(value.args)],
            "kwargs": {k: encode(v, f"{where}.{k}") for k, v in value.keywords.items()},
        }
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        if is_flax_module_class(type(value)):
            raise Unrecordable(
                f"{where} is a module instance ({type(value).__name__}); pass its class or a factory instead"
            )
        return {
            "__dataclass__": import_path(type(value), where),
            "fields": {k: encode(v, f"{where}.{k}") for k, v in changed_fields(value).items()},
        }
    if callable(value) and not isinstance(value, type):
        return {"__function__": import_path(value, where)}
    raise Unrecordable(f"{where} is a {type(value).__name__}, which has no JSON form or import path")


def decode(data, resolver, where: str):
    """The inverse of :func:`encode`, resolving import paths with ``resolver`` (``_imports.Resolver``)."""
    if isinstance(data, list):
        return [decode(v, resolver, f"{where}[{i}]") for i, v in enumerate(data)]
    if not isinstance(data, dict):
        return data
    tags = [k for k in data if k in TAGS]
    if not tags:
        return {k: decode(v, resolver, f"{where}.{k}") for k, v in data.items()}
    tag = tags[0]
    allowed = {"__partial__": {"__partial__", "args", "kwargs"}, "__dataclass__": {"__dataclass__", "fields"}}
    extra = set(data) - allowed.get(tag, {tag})
    if len(tags) > 1 or extra:
        raise SpecError(f"{where}: a {tag} entry has unexpected keys {sorted(extra or tags)}")
    value = data[tag]
    if tag == "__tuple__":
        if not isinstance(value, list):
            raise SpecError(f"{where}: __tuple__ must hold a list")
        return tuple(decode(v, resolver, f"{where}[{i}]") for i, v in enumerate(value))
    if tag == "__dtype__":
        try:
            import jax.numpy as jnp

            return jnp.dtype(value)
        except TypeError:
            raise SpecError(f"{where}: {value!r} is not a dtype") from None
    if tag == "__class__":
        cls = resolver.resolve(value, f"{where} (class)")
        if not is_flax_module_class(cls):
            raise SpecError(f"{where}: {value!r} is not a Flax module class")
        return cls
    if tag == "__function__":
        fn = resolver.resolve(value, f"{where} (function)")
        if isinstance(fn, type) or not callable(fn):
            raise SpecError(f"{where}: {value!r} is not a function")
        return fn
    if tag == "__partial__":
        target = resolver.resolve(value, f"{where} (partial)")
        if not (is_flax_module_class(target) or (callable(target) and not isinstance(target, type))):
            raise SpecError(f"{where}: {value!r} is neither a Flax module class nor a function")
        args = data.get("args", [])
        kwargs = data.get("kwargs", {})
        if not isinstance(args, list) or not isinstance(kwargs, dict):
            raise SpecError(f"{where}: a partial's args must be a list and its kwargs an object")
        return functools.partial(
            target, *decode(args, resolver, f"{where}.args"), **decode(kwargs, resolver, f"{where}.kwargs")
        )
    cls = resolver.resolve(value, f"{where} (config)")  # __dataclass__
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)) or is_flax_module_class(cls):
        raise SpecError(f"{where}: {value!r} is not a config dataclass")
    fields = data.get("fields", {})
    if not isinstance(fields, dict):
        raise SpecError(f"{where}: a config's fields must be an object")
    try:
        return cls(**decode(fields, resolver, f"{where}.fields"))
    except TypeError as e:
        raise SpecError(f"{where}: cannot build {value} from its recorded fields ({e})") from None
