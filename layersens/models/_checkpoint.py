"""Model directories: an Orbax checkpoint of the arrays plus the spec that rebuilds the function.

Layout of a model directory::

    DIR/layersens.json        the ModelSpec (also stored as the checkpoint's Orbax custom metadata)
    DIR/state/                Orbax StandardCheckpointer: {'params': ..., 'batch_stats': ...} (linen) or
                              the NNX state as a pure dict
    DIR/example_inputs.npy    optional inputs used when the user gives none

A directory that is itself an Orbax checkpoint with the spec in its custom metadata is read too. Writing is
atomic: everything goes to a temporary sibling directory that is renamed into place at the end.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from pathlib import Path

import jax
import numpy as np

from ._model import Model
from ._linen import from_linen
from ._nnx import from_nnx
from .._errors import CheckpointError, SpecError
from ._spec import SPEC_FILE, ModelSpec, read_spec_file

STATE_DIR = "state"
EXAMPLE_INPUTS = "example_inputs.npy"


def _checkpointer():
    import orbax.checkpoint as ocp

    return ocp.StandardCheckpointer()


def _module_path(module) -> str:
    cls = type(module)
    if cls.__module__ == "__main__" or "<locals>" in cls.__qualname__:
        raise SpecError(
            f"{cls.__qualname__} is defined in a script or a function, so it cannot be imported when the model is "
            "loaded again. Define it at the top level of an importable module."
        )
    return f"{cls.__module__}:{cls.__qualname__}"


def _linen_kwargs(module) -> dict:
    kwargs = {}
    for field in dataclasses.fields(module):
        if field.name in ("parent", "name") or not field.init:
            continue
        kwargs[field.name] = getattr(module, field.name)
    return kwargs


def save_model(
    directory,
    module,
    variables: dict | None = None,
    *,
    input_shape,
    input_dtype: str = "float32",
    kwargs: dict | None = None,
    call_kwargs: dict | None = None,
    example_inputs=None,
    description: str = "",
    overwrite: bool = False,
) -> Path:
    """Writes a model directory that ``load_model`` and ``layersens --model`` read.

    Linen: pass the module and its ``variables``; constructor arguments are read from the module's dataclass
    fields. NNX: pass the module alone, and ``kwargs`` if its constructor needs arguments besides ``rngs``.
    ``call_kwargs`` select evaluation mode for linen (e.g. ``{"train": False}``).
    """
    from flax import nnx

    directory = Path(directory).absolute()
    if directory.exists() and not overwrite:
        raise CheckpointError(f"{directory} already exists; pass overwrite=True (--overwrite) to replace it.")
    if isinstance(module, nnx.Module):
        framework = "nnx"
        state = nnx.to_pure_dict(nnx.state(module, nnx.Not(nnx.RngState)))
        kwargs = dict(kwargs or {})
    else:
        framework = "linen"
        if variables is None:
            raise SpecError("a linen module is saved with its variables: save_model(dir, module, variables, ...).")
        state = {k: v for k, v in dict(variables).items() if k != "intermediates"}
        kwargs = _linen_kwargs(module) if kwargs is None else dict(kwargs)
    spec = ModelSpec(
        framework=framework,
        module=_module_path(module),
        input_shape=tuple(input_shape),
        input_dtype=str(np.dtype(input_dtype)),
        kwargs=kwargs,
        call_kwargs=dict(call_kwargs or {}),
        example_inputs=EXAMPLE_INPUTS if example_inputs is not None else None,
        description=description,
    )
    try:
        spec_json = json.dumps(spec.to_json(), indent=2)
    except TypeError as e:
        raise SpecError(f"the model's constructor arguments {kwargs} are not JSON values ({e}); pass kwargs=.") from None

    from ._model import flatten_params

    state = jax.tree.map(np.asarray, state)
    for name, leaf in flatten_params(state).items():
        if leaf.dtype.kind not in "biufc":
            raise SpecError(f"variable {name} has dtype {leaf.dtype}; a checkpoint holds numeric arrays only.")

    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        with _checkpointer() as ck:
            ck.save(tmp / STATE_DIR, state, custom_metadata=spec.to_json())
        (tmp / SPEC_FILE).write_text(spec_json + "\n")
        if example_inputs is not None:
            np.save(tmp / EXAMPLE_INPUTS, np.asarray(example_inputs, dtype=spec.input_dtype))
        if directory.exists():
            old = directory.with_name(f".{directory.name}.old-{os.getpid()}")
            directory.rename(old)
            tmp.rename(directory)
            shutil.rmtree(old)
        else:
            tmp.rename(directory)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return directory


def _read_spec(directory: Path, state_dir: Path) -> ModelSpec:
    if (directory / SPEC_FILE).exists():
        return read_spec_file(directory / SPEC_FILE)
    try:
        with _checkpointer() as ck:
            custom = ck.metadata(state_dir).custom_metadata
    except Exception as e:
        raise CheckpointError(
            f"{directory} has no {SPEC_FILE} and its checkpoint metadata cannot be read ({type(e).__name__}: {e})."
        ) from None
    if not custom:
        raise SpecError(
            f"{directory} has no {SPEC_FILE} and its checkpoint carries no model spec in its custom metadata; "
            "write one with layersens.save_model or add the JSON file."
        )
    return ModelSpec.from_json(dict(custom), source=f"custom metadata of {state_dir}")


def read_model_spec(directory) -> ModelSpec:
    directory = Path(directory).absolute()
    state_dir = directory / STATE_DIR if (directory / STATE_DIR).is_dir() else directory
    return _read_spec(directory, state_dir)


def load_model(directory, allow_import: bool = False) -> Model:
    """Reads a model directory (see the module docstring) and returns a :class:`Model` in evaluation mode.

    Modules outside the ``layersens`` package are imported only with ``allow_import=True``: importing runs code.
    """
    directory = Path(directory).absolute()
    if not directory.is_dir():
        raise CheckpointError(f"model directory {directory} does not exist (or is not a directory).")
    state_dir = directory / STATE_DIR if (directory / STATE_DIR).is_dir() else directory
    spec = _read_spec(directory, state_dir)
    cls = spec.resolve_class(allow_import=allow_import)
    try:
        with _checkpointer() as ck:
            state = ck.restore(state_dir)
    except Exception as e:
        raise CheckpointError(
            f"cannot restore the checkpoint in {state_dir} ({type(e).__name__}: {str(e).splitlines()[0]}). "
            "Is it an Orbax StandardCheckpointer checkpoint, completely written?"
        ) from None

    example_inputs = None
    if spec.example_inputs:
        path = directory / spec.example_inputs
        try:
            example_inputs = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise CheckpointError(f"cannot read the example inputs {path}: {e}.") from None

    if spec.framework == "linen":
        module = cls(**spec.kwargs)
        _check_linen_state(module, spec, state, state_dir)
        return from_linen(module, state, spec.input_shape, spec.input_dtype, spec.call_kwargs, example_inputs)

    from flax import nnx

    module = cls(**spec.kwargs, rngs=nnx.Rngs(0))
    target = nnx.state(module, nnx.Not(nnx.RngState))
    try:
        nnx.replace_by_pure_dict(target, state)
    except Exception as e:
        raise CheckpointError(
            f"the checkpoint in {state_dir} does not match {spec.module}({spec.kwargs}): {e}"
        ) from None
    _check_shapes(nnx.to_pure_dict(target), state, state_dir, spec)
    nnx.update(module, target)
    return from_nnx(module, spec.input_shape, spec.input_dtype, example_inputs)


def _check_linen_state(module, spec: ModelSpec, state: dict, state_dir: Path):
    x = jax.ShapeDtypeStruct((1,) + spec.input_shape, spec.input_dtype)
    expected = jax.eval_shape(lambda x: module.init(jax.random.key(0), x, **spec.call_kwargs), x)
    expected = {k: v for k, v in dict(expected).items() if k != "intermediates"}
    _check_shapes(expected, state, state_dir, spec)


def _check_shapes(expected, restored, state_dir: Path, spec: ModelSpec):
    from ._model import flatten_params

    want = {k: tuple(np.shape(v)) for k, v in flatten_params(dict(expected)).items()}
    got = {k: tuple(np.shape(v)) for k, v in flatten_params(dict(restored)).items()}
    if want == got:
        return
    missing = sorted(set(want) - set(got))
    extra = sorted(set(got) - set(want))
    wrong = [f"{k}: checkpoint {got[k]}, module {want[k]}" for k in sorted(set(want) & set(got)) if want[k] != got[k]]
    parts = [f"missing {missing}" if missing else "", f"unexpected {extra}" if extra else "", "; ".join(wrong)]
    raise CheckpointError(
        f"the checkpoint in {state_dir} does not fit {spec.module} with kwargs {spec.kwargs}: "
        + "; ".join(p for p in parts if p)
        + ". Check the spec's kwargs against the ones used for training."
    )
