"""The model spec: what a checkpoint of arrays cannot say by itself.

An Orbax checkpoint holds arrays only. To rebuild the function that produced them we also need the framework,
how to build the module (its class and constructor arguments, or a factory and its arguments), the call
arguments that select evaluation mode, the shape of one input example, and, to know the arrays are the ones that
were saved, a content hash per leaf. The spec is ``layersens.json`` beside the arrays and, redundantly, the
checkpoint's Orbax custom metadata. It is parsed strictly: unknown fields, wrong types and anything but JSON are
refused with the field's name.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from .._errors import SpecError
from .._repr import Summarized
from ._imports import parse_path

SPEC_FILE = "layersens.json"
SPEC_FORMAT = "layersens-model/2"
READABLE_FORMATS = ("layersens-model/1", SPEC_FORMAT)
FRAMEWORKS = ("linen", "nnx")


@dataclasses.dataclass(frozen=True, repr=False)
class ModelSpec(Summarized):
    """How to rebuild a model whose arrays sit in a checkpoint.

    Attributes:
      framework: ``"linen"`` or ``"nnx"``.
      module: import path of the Flax module class, ``"package.module:ClassName"`` (or ``None`` with a factory).
      factory: import path of a function returning the module, called with ``kwargs`` (NNX factories also get
        ``rngs`` if they take it).
      kwargs: constructor (or factory) arguments, JSON with tagged classes, configs, partials, functions and
        dtypes (see ``_values``). NNX module classes also receive ``rngs``.
      input_shape: shape of one input example, without the batch axis.
      input_dtype: dtype of the inputs.
      call_kwargs: keyword arguments of the call that select evaluation mode, e.g. ``{"train": false}``.
      example_inputs: optional ``.npy`` file in the model directory with inputs to use by default.
      description: free text shown by ``layersens layers``.
      leaf_hashes: ``"collection/…/leaf" -> "sha256:…"`` of every saved array, checked on loading.
      rng_state: NNX random-number state (keys and counters), so that a model drawing noise in evaluation mode
        draws the same noise after loading: ``path -> {"impl", "shape", "data"}`` (keys) or ``{"dtype", "shape",
        "data"}`` (counters).
    """

    framework: str
    input_shape: tuple[int, ...]
    module: str | None = None
    factory: str | None = None
    input_dtype: str = "float32"
    kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    call_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    example_inputs: str | None = None
    description: str = ""
    leaf_hashes: dict[str, str] = dataclasses.field(default_factory=dict)
    rng_state: dict[str, dict] = dataclasses.field(default_factory=dict)

    def _summary(self):
        return [
            ("framework", self.framework),
            ("module", self.module or self.factory),
            ("kwargs", tuple(self.kwargs)),
            ("input_shape", self.input_shape),
            ("input_dtype", self.input_dtype),
            ("call_kwargs", self.call_kwargs),
            ("leaves", len(self.leaf_hashes)),
        ]

    def __post_init__(self):
        if self.framework not in FRAMEWORKS:
            raise SpecError(f"spec field 'framework' is {self.framework!r}; it must be one of {FRAMEWORKS}.")
        if (self.module is None) == (self.factory is None):
            raise SpecError(
                "a spec names exactly one of 'module' (a Flax module class) and 'factory' (a function "
                "returning the module)."
            )
        for name in ("module", "factory"):
            if getattr(self, name) is not None:
                parse_path(getattr(self, name), f"spec field {name!r}")
        shape = self.input_shape
        if not isinstance(shape, (list, tuple)) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape
        ):
            raise SpecError(f"spec field 'input_shape' is {shape!r}; it must be a list of positive integers.")
        object.__setattr__(self, "input_shape", tuple(shape))
        try:
            dtype = np.dtype(self.input_dtype)
        except Exception:  # numpy raises TypeError, ValueError or even SyntaxError for some strings
            dtype = None
        if dtype is None or dtype.kind not in "biuf" or not isinstance(self.input_dtype, str):
            raise SpecError(
                f"spec field 'input_dtype' is {self.input_dtype!r}; give a numeric dtype such as 'float32' or 'int32'."
            )
        object.__setattr__(self, "input_dtype", dtype.name)
        for name in ("kwargs", "call_kwargs", "leaf_hashes", "rng_state"):
            if not isinstance(getattr(self, name), dict):
                raise SpecError(f"spec field {name!r} must be a JSON object.")
        _check_json(self.call_kwargs, "call_kwargs")
        from ._values import TAGS

        for name in ("kwargs", "call_kwargs"):
            if any(k in TAGS for k in getattr(self, name)):
                raise SpecError(f"spec field {name!r} must map argument names to values, not be a tagged value.")
        if not all(isinstance(v, str) and v.startswith("sha256:") for v in self.leaf_hashes.values()):
            raise SpecError("spec field 'leaf_hashes' must map leaf paths to 'sha256:…' strings.")
        for name in ("example_inputs",):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or "/" in value or value.startswith(".")):
                raise SpecError(f"spec field {name!r} is {value!r}; it must name a file in the model directory.")
        if not isinstance(self.description, str):
            raise SpecError("spec field 'description' must be a string.")

    @property
    def builder(self) -> str:
        builder = self.module or self.factory
        assert builder is not None, "a spec names exactly one of module and factory (checked on creation)"
        return builder

    def to_json(self) -> dict[str, Any]:
        data = {"format": SPEC_FORMAT, **dataclasses.asdict(self), "input_shape": list(self.input_shape)}
        return {k: v for k, v in data.items() if v is not None}

    @classmethod
    def from_json(cls, data: dict[str, Any], source: str = "spec") -> "ModelSpec":
        if not isinstance(data, dict):
            raise SpecError(f"{source}: expected a JSON object, got {type(data).__name__}.")
        data = dict(data)
        fmt = data.pop("format", "layersens-model/1")
        if fmt not in READABLE_FORMATS:
            raise SpecError(f"{source}: format {fmt!r} is not supported; this version reads {READABLE_FORMATS}.")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise SpecError(f"{source}: unknown field(s) {unknown}; known fields are {sorted(names)}.")
        missing = [n for n in ("framework", "input_shape") if n not in data]
        if missing:
            raise SpecError(f"{source}: missing required field(s) {missing}.")
        try:
            return cls(**data)
        except SpecError as e:
            raise SpecError(f"{source}: {e}") from None
        except (TypeError, ValueError) as e:
            raise SpecError(f"{source}: {e}") from None


def _check_json(value, where: str):
    if value is None or isinstance(value, (bool, int, str)):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise SpecError(f"spec field {where!r} holds {value}, which is not JSON.")
        return
    if isinstance(value, list):
        for i, v in enumerate(value):
            _check_json(v, f"{where}[{i}]")
        return
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        for k, v in value.items():
            _check_json(v, f"{where}.{k}")
        return
    raise SpecError(f"spec field {where!r} holds a {type(value).__name__}, which is not JSON.")


def _reject_constant(token):
    raise ValueError(f"{token} is not JSON")


def read_spec_file(path: Path) -> ModelSpec:
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise SpecError(f"cannot read the model spec {path}: {getattr(e, 'strerror', None) or e}.") from None
    try:
        data = json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as e:
        raise SpecError(f"the model spec {path} is not valid JSON ({e}).") from None
    return ModelSpec.from_json(data, source=str(path))
