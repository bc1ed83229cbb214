"""The model spec: what a checkpoint of arrays cannot say by itself.

An Orbax checkpoint holds arrays only. To rebuild the function that produced them we also need the framework,
the module class (``package.module:ClassName``), its constructor arguments, the call arguments that select
evaluation mode, and the shape of one input example. The spec is stored as ``layersens.json`` beside the arrays
and, redundantly, as the checkpoint's Orbax custom metadata.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
from pathlib import Path
from typing import Any

from .._errors import SpecError, UntrustedModuleError

SPEC_FILE = "layersens.json"
SPEC_FORMAT = "layersens-model/1"
FRAMEWORKS = ("linen", "nnx")
# Modules shipped inside this package are our own code; anything else is the user's and importing it runs it.
TRUSTED_PREFIX = "layersens."


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """How to rebuild a model whose arrays sit in a checkpoint.

    Attributes:
      framework: ``"linen"`` or ``"nnx"``.
      module: import path of the module class, ``"package.module:ClassName"``.
      kwargs: constructor arguments (JSON values). NNX modules also receive ``rngs``.
      input_shape: shape of one input example, without the batch axis.
      input_dtype: dtype of the inputs.
      call_kwargs: keyword arguments of the call that select evaluation mode, e.g. ``{"train": false}``.
      example_inputs: optional ``.npy`` file in the model directory with inputs to use by default.
      description: free text shown by ``layersens layers``.
    """

    framework: str
    module: str
    input_shape: tuple[int, ...]
    input_dtype: str = "float32"
    kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    call_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    example_inputs: str | None = None
    description: str = ""

    def __post_init__(self):
        if self.framework not in FRAMEWORKS:
            raise SpecError(f"spec field 'framework' is {self.framework!r}; it must be one of {FRAMEWORKS}.")
        if ":" not in self.module:
            raise SpecError(
                f"spec field 'module' is {self.module!r}; write it as 'package.module:ClassName'."
            )
        object.__setattr__(self, "input_shape", tuple(int(d) for d in self.input_shape))

    def to_json(self) -> dict[str, Any]:
        return {"format": SPEC_FORMAT, **dataclasses.asdict(self), "input_shape": list(self.input_shape)}

    @classmethod
    def from_json(cls, data: dict[str, Any], source: str = "spec") -> "ModelSpec":
        if not isinstance(data, dict):
            raise SpecError(f"{source}: expected a JSON object, got {type(data).__name__}.")
        data = dict(data)
        fmt = data.pop("format", SPEC_FORMAT)
        if fmt != SPEC_FORMAT:
            raise SpecError(f"{source}: format {fmt!r} is not supported; this version reads {SPEC_FORMAT!r}.")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise SpecError(f"{source}: unknown field(s) {unknown}; known fields are {sorted(names)}.")
        missing = [n for n in ("framework", "module", "input_shape") if n not in data]
        if missing:
            raise SpecError(f"{source}: missing required field(s) {missing}.")
        try:
            return cls(**data)
        except (TypeError, ValueError) as e:
            if isinstance(e, SpecError):
                raise SpecError(f"{source}: {e}") from None
            raise SpecError(f"{source}: {e}") from None

    def resolve_class(self, allow_import: bool = False) -> type:
        module_name, _, attr = self.module.partition(":")
        if not (module_name + ".").startswith(TRUSTED_PREFIX) and not allow_import:
            raise UntrustedModuleError(
                f"the model spec names module {module_name!r}; importing it runs its code. Pass "
                "--allow-import on the command line (allow_import=True in the API) if you trust it."
            )
        try:
            mod = importlib.import_module(module_name)
        except ImportError as e:
            raise SpecError(
                f"cannot import {module_name!r} named by the model spec ({e}); make it importable "
                "(install it or add its folder to PYTHONPATH)."
            ) from None
        try:
            return getattr(mod, attr)
        except AttributeError:
            raise SpecError(f"module {module_name!r} has no attribute {attr!r} (named by the model spec).") from None


def read_spec_file(path: Path) -> ModelSpec:
    try:
        text = path.read_text()
    except OSError as e:
        raise SpecError(f"cannot read the model spec {path}: {e.strerror}.") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise SpecError(f"the model spec {path} is not valid JSON ({e}).") from None
    return ModelSpec.from_json(data, source=str(path))
