"""Reading a model directory: an Orbax checkpoint of the arrays plus the spec that rebuilds the function.

Layout of a model directory::

    DIR/layersens.json        the ModelSpec (also stored as the checkpoint's Orbax custom metadata)
    DIR/state/                Orbax StandardCheckpointer: {'params': ..., 'batch_stats': ...} (linen) or
                              the NNX state as a pure dict
    DIR/example_inputs.npy    optional inputs used when the user gives none

A directory that is itself an Orbax checkpoint is read too: with the spec in its custom metadata, or, for a plain
checkpoint, with the module named by the caller (``module=`` / ``--module``). Every array's content hash is
recorded when saving (``_save``) and checked here, so a damaged checkpoint is an error naming the leaf, never a
silently different model. Nothing is ever unpickled.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from .._errors import CheckpointError, SpecError
from .._interrupt import raise_if_interrupted
from ._imports import Resolver
from ._linen import from_linen
from ._model import Model, flatten_params, unflatten_params
from ._nnx import from_nnx
from ._orbax import STATE_DIR, checkpointer, hashes, orbax_call, shown
from ._rebuild import abstract_nnx, build, check_linen_state, check_shapes
from ._spec import SPEC_FILE, ModelSpec, read_spec_file


def _read_spec(directory: Path, state_dir: Path) -> ModelSpec | None:
    if (directory / SPEC_FILE).exists():
        return read_spec_file(directory / SPEC_FILE)
    if not any((state_dir / name).exists() for name in ("_METADATA", "_CHECKPOINT_METADATA", "manifest.ocdbt")):
        raise CheckpointError(
            f"{directory} holds neither a layersens model ({SPEC_FILE}) nor an Orbax checkpoint; "
            "give the folder written by layersens.save_model or by Orbax."
        )
    for name in ("_CHECKPOINT_METADATA", "_METADATA"):
        if (state_dir / name).exists():
            try:
                json.loads((state_dir / name).read_text())
            except (ValueError, UnicodeDecodeError, RecursionError, OSError):
                raise CheckpointError(
                    f"{state_dir / name} is damaged (not JSON): the checkpoint cannot be read. "
                    "Restore it from a good copy, or save the model again."
                ) from None
    openable = state_dir
    try:
        with orbax_call(state_dir) as openable, checkpointer() as ck:
            custom = ck.metadata(openable).custom_metadata
    except Exception as e:  # noqa: BLE001 - Orbax and TensorStore raise many types; all mean "unreadable"
        raise_if_interrupted()  # a Ctrl-C that Orbax's threads or an extension's import turned into another error
        raise CheckpointError(
            f"{directory} has no {SPEC_FILE} and is not a readable Orbax checkpoint ({shown(e, state_dir, openable)})."
        ) from None
    if not custom:
        return None
    return ModelSpec.from_json(dict(custom), source=f"custom metadata of {state_dir}")


def _state_dir(directory: Path) -> Path:
    return directory / STATE_DIR if (directory / STATE_DIR).is_dir() else directory


def read_model_spec(directory) -> ModelSpec:
    directory = Path(directory).absolute()
    spec = _read_spec(directory, _state_dir(directory))
    if spec is None:
        raise SpecError(f"{directory} holds a plain Orbax checkpoint with no model spec.")
    return spec


def _spec_with_options(spec: ModelSpec | None, directory: Path, options: dict, resolver: Resolver) -> ModelSpec:
    """The directory's spec, or one built from the caller's options for a plain checkpoint; options override."""
    given = {k: v for k, v in options.items() if v is not None}
    if spec is None and "framework" not in given and "module" in given:
        from flax import nnx

        cls = resolver.resolve(given["module"], "the model's module class (--module)")
        given["framework"] = "nnx" if isinstance(cls, type) and issubclass(cls, nnx.Module) else "linen"
    if spec is None:
        if "module" not in given and "factory" not in given:
            raise SpecError(
                f"{directory} holds a plain Orbax checkpoint with no layersens spec; name the module that rebuilds "
                "it: --module package.module:Class (or --factory package.module:make_model) with --input-shape, "
                "and --allow-import."
            )
        if "input_shape" not in given:
            raise SpecError(f"{directory} has no layersens spec; give the shape of one input (--input-shape 28,28,1).")
        return ModelSpec(framework=given.pop("framework", "linen"), **given)
    data = {k: v for k, v in spec.__dict__.items()}
    if "module" in given or "factory" in given:
        data["module"], data["factory"] = given.pop("module", None), given.pop("factory", None)
        data["leaf_hashes"] = spec.leaf_hashes
    data.update(given)
    return ModelSpec(**data)


def load_model(
    directory,
    allow_import: bool = False,
    *,
    module: str | None = None,
    factory: str | None = None,
    kwargs: dict | None = None,
    call_kwargs: dict | None = None,
    input_shape=None,
    input_dtype: str | None = None,
    framework: str | None = None,
    announce=None,
) -> Model:
    """Reads a model directory (see the module docstring) and returns a :class:`Model` in evaluation mode.

    Modules outside Flax, JAX, NumPy and layersens's own examples are imported only with ``allow_import=True``:
    importing runs code. ``announce`` is called with a sentence for each such import. For a plain Orbax
    checkpoint (no layersens spec), ``module`` (or ``factory``), ``input_shape`` and the others say how to
    rebuild it; given with a spec, they override its fields.
    """
    directory = Path(directory).absolute()
    if not directory.is_dir():
        raise CheckpointError(f"model directory {directory} does not exist (or is not a directory).")
    state_dir = _state_dir(directory)
    options = {
        "module": module,
        "factory": factory,
        "kwargs": kwargs,
        "call_kwargs": call_kwargs,
        "framework": framework,
        "input_dtype": input_dtype,
        "input_shape": tuple(input_shape) if input_shape is not None else None,
    }
    resolver = Resolver(allow_import, search=[directory, directory.parent, Path.cwd()], announce=announce)
    spec = _spec_with_options(_read_spec(directory, state_dir), directory, options, resolver)
    built = build(spec, resolver) if spec.framework == "linen" else abstract_nnx(spec, resolver)
    state = _restore(state_dir)
    _verify(spec, state, state_dir)

    example_inputs = None
    if spec.example_inputs:
        path = directory / spec.example_inputs
        try:
            example_inputs = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise CheckpointError(f"cannot read the example inputs {path}: {e}.") from None

    if spec.framework == "linen":
        state = _as_linen_variables(state)
        check_linen_state(built, spec, state, state_dir)
        return from_linen(built, state, spec.input_shape, spec.input_dtype, spec.call_kwargs, example_inputs)
    return from_nnx(_fill_nnx(built, state, spec, state_dir), spec.input_shape, spec.input_dtype, example_inputs)


def _restore(state_dir: Path) -> dict:
    openable = state_dir
    try:
        with orbax_call(state_dir) as openable, checkpointer() as ck:
            return ck.restore(openable)
    except Exception as e:  # noqa: BLE001 - Orbax and TensorStore raise many types; all mean "unreadable"
        raise_if_interrupted()  # a Ctrl-C that Orbax's threads or an extension's import turned into another error
        raise CheckpointError(
            f"cannot restore the checkpoint in {state_dir} ({shown(e, state_dir, openable)}). Is it an Orbax "
            "StandardCheckpointer checkpoint, completely written?"
        ) from None


def _verify(spec: ModelSpec, state: dict, state_dir: Path):
    if not spec.leaf_hashes:
        return  # written before hashes were recorded, or a plain checkpoint
    found = hashes(state)
    missing = sorted(set(spec.leaf_hashes) - set(found))
    extra = sorted(set(found) - set(spec.leaf_hashes))
    if missing or extra:
        raise CheckpointError(
            f"the checkpoint in {state_dir} does not hold the leaves its spec recorded (missing "
            f"{missing}, unexpected {extra}): it was changed after saving. Save the model again."
        )
    for name, digest in spec.leaf_hashes.items():
        if found[name] != digest:
            raise CheckpointError(
                f"leaf {name} in {state_dir} does not match the hash recorded when it was saved: the checkpoint is "
                "damaged or was changed. Restore it from a good copy, or save the model again."
            )


def _as_linen_variables(state: dict) -> dict:
    state = dict(state)
    return state if "params" in state else {"params": state}


def _unwrap_values(tree):
    """A raw NNX state restores as ``{'kernel': {'value': array}}``; this is ``{'kernel': array}``."""
    if isinstance(tree, dict):
        if set(tree) == {"value"} and not isinstance(tree["value"], dict):
            return tree["value"]
        return {k: _unwrap_values(v) for k, v in tree.items()}
    return tree


def _fill_nnx(abstract, state: dict, spec: ModelSpec, state_dir: Path):
    """The abstract NNX module with the checkpoint's arrays and the recorded random-number state."""
    from flax import nnx

    state = _unwrap_values(state)
    # flax types nnx.split's result as a variadic tuple; with two filters it is exactly three items
    graphdef, target, rng = nnx.split(abstract, nnx.Not(nnx.RngState), nnx.RngState)  # type: ignore[misc]
    check_shapes(nnx.to_pure_dict(target), state, state_dir, spec)
    nnx.replace_by_pure_dict(target, state)
    rng_values = {}
    for name, leaf in flatten_params(nnx.to_pure_dict(rng)).items():
        recorded = spec.rng_state.get(name)
        if recorded is not None and "impl" in recorded:
            data = np.asarray(recorded["data"], np.uint32).reshape(tuple(recorded["shape"]) + (-1,))
            # jax annotates key_bits_array as Array, though any uint32 array-like (numpy's too) is accepted
            rng_values[name] = jax.random.wrap_key_data(data, impl=recorded["impl"])  # type: ignore[arg-type]
        elif recorded is not None:
            rng_values[name] = jnp.asarray(np.asarray(recorded["data"], recorded["dtype"]).reshape(recorded["shape"]))
        elif jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):  # no recorded state: a fixed key
            rng_values[name] = jax.random.split(jax.random.key(0), leaf.shape) if leaf.shape else jax.random.key(0)
        else:
            rng_values[name] = jnp.zeros(leaf.shape, leaf.dtype)
    nnx.replace_by_pure_dict(rng, unflatten_params(rng_values))
    return nnx.merge(graphdef, target, rng)
