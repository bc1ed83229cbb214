"""Model directories: an Orbax checkpoint of the arrays plus the spec that rebuilds the function.

Layout of a model directory::

    DIR/layersens.json        the ModelSpec (also stored as the checkpoint's Orbax custom metadata)
    DIR/state/                Orbax StandardCheckpointer: {'params': ..., 'batch_stats': ...} (linen) or
                              the NNX state as a pure dict
    DIR/example_inputs.npy    optional inputs used when the user gives none

A directory that is itself an Orbax checkpoint is read too: with the spec in its custom metadata, or, for a plain
checkpoint, with the module named by the caller (``module=`` / ``--module``). Writing is atomic: everything goes to
a temporary sibling directory that is renamed into place at the end. Every array's content hash is recorded and
checked on loading, so a damaged checkpoint is an error naming the leaf, never a silently different model.
Nothing is ever unpickled.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from .._errors import CheckpointError, SpecError
from ._imports import Resolver, is_library
from ._linen import from_linen, unbox
from ._model import Model, flatten_params
from ._nnx import from_nnx
from ._spec import SPEC_FILE, ModelSpec, read_spec_file
from ._values import Unrecordable, changed_fields, decode, encode, import_path, is_flax_module_class

STATE_DIR = "state"
EXAMPLE_INPUTS = "example_inputs.npy"


@contextlib.contextmanager
def _quiet_orbax():
    """Orbax logs through absl (WARNING lines on stderr) what we report ourselves as one clean error."""
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def _checkpointer():
    import orbax.checkpoint as ocp

    return ocp.StandardCheckpointer()


def leaf_hash(leaf) -> str:
    array = np.ascontiguousarray(np.asarray(leaf))
    digest = hashlib.sha256(f"{array.dtype.str}{array.shape}".encode())
    digest.update(array.tobytes())
    return "sha256:" + digest.hexdigest()


def _hashes(state: dict) -> dict[str, str]:
    return {name: leaf_hash(leaf) for name, leaf in flatten_params(state).items()}


def _user_resolver(**kwargs) -> Resolver:
    return Resolver(allow_import=True, **kwargs)


def _record(kwargs: dict, owner: str) -> dict:
    try:
        return {k: encode(v, f"{owner}.{k}") for k, v in kwargs.items()}
    except Unrecordable as e:
        raise SpecError(
            f"cannot record how to rebuild {owner}: {e}. Pass factory='package.module:make_model' (a function "
            "returning the module) with kwargs of JSON values, classes, configs or functions, or keep the model in "
            "memory (layersens.from_linen / from_nnx)."
        ) from None


def _builder_path(module, factory) -> tuple[str | None, str | None]:
    if factory is not None:
        path = factory if isinstance(factory, str) else _record_path(factory, "the factory")
        return None, path
    return _record_path(type(module), f"module class {type(module).__name__}"), None


def _record_path(obj, what) -> str:
    try:
        return import_path(obj, what)
    except Unrecordable as e:
        raise SpecError(f"cannot record {what}: {e}.") from None


def _rng_state(module) -> dict:
    from flax import nnx

    recorded = {}
    for name, leaf in flatten_params(nnx.to_pure_dict(nnx.state(module, nnx.RngState))).items():
        if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            data = np.asarray(jax.random.key_data(leaf))
            recorded[name] = {"impl": str(jax.random.key_impl(leaf)), "shape": list(leaf.shape),
                              "data": data.ravel().tolist()}
        else:
            recorded[name] = {"dtype": np.dtype(leaf.dtype).name, "shape": list(np.shape(leaf)),
                              "data": np.asarray(leaf).ravel().tolist()}
    return recorded


def save_model(
    directory,
    module,
    variables: dict | None = None,
    *,
    input_shape,
    input_dtype: str = "float32",
    kwargs: dict | None = None,
    factory=None,
    call_kwargs: dict | None = None,
    example_inputs=None,
    description: str = "",
    overwrite: bool = False,
) -> Path:
    """Writes a model directory that ``load_model`` and ``layersens --model`` read.

    The module is recorded as the user built it: a linen module's constructor arguments are read from its
    dataclass fields (those that differ from their defaults), and may be JSON values, Flax module classes
    (``block_cls=ResNetBlock``), ``functools.partial`` of them, config dataclasses (``TransformerConfig``),
    functions (``act=nn.relu``) and dtypes. NNX modules are not dataclasses: pass ``kwargs`` for constructor
    arguments besides ``rngs``. Either may instead name a ``factory`` (a function, or ``"package.module:name"``)
    called with ``kwargs``. What cannot be recorded is an error naming the argument. Boxed (partitioned)
    parameters are unboxed; NNX intermediates (sown values, state a fresh model lacks) are dropped, and its
    random-number state is kept so that noise drawn in evaluation mode is reproduced after loading.
    ``call_kwargs`` select evaluation mode for linen (e.g. ``{"train": False}``).
    """
    from flax import nnx

    directory = Path(directory).absolute()
    if directory.exists() and not overwrite:
        raise CheckpointError(f"{directory} already exists; pass overwrite=True (--overwrite) to replace it.")
    module_path, factory_path = _builder_path(module, factory)
    owner = type(module).__name__
    rng_state = {}
    if isinstance(module, nnx.Module):
        framework = "nnx"
        if kwargs is None and factory is None:
            _check_nnx_constructor(type(module))
        recorded = _record(dict(kwargs or {}), owner)
        spec_probe = ModelSpec(framework="nnx", input_shape=tuple(input_shape), module=module_path,
                               factory=factory_path, kwargs=recorded)
        fresh = _abstract_nnx(spec_probe, _user_resolver())
        state = _nnx_state_like(module, fresh)
        rng_state = _rng_state(module)
        rebuilt = set(flatten_params(nnx.to_pure_dict(nnx.state(fresh, nnx.RngState))))
        lost = sorted(set(rng_state) - rebuilt)
        if lost:
            raise SpecError(
                f"the random-number state {lost} of {owner} is not rebuilt by {module_path or factory_path} with "
                f"rngs=nnx.Rngs(0) (the model was built with other nnx.Rngs streams). Pass factory= a function "
                "that builds the model with the same streams, e.g. nnx.Rngs(0, noise=1)."
            )
    else:
        framework = "linen"
        if variables is None:
            raise SpecError("a linen module is saved with its variables: save_model(dir, module, variables, ...).")
        state = {k: v for k, v in dict(unbox(variables)).items() if k != "intermediates"}
        recorded = _record(changed_fields(module) if kwargs is None and factory is None else dict(kwargs or {}),
                           owner)
    state = jax.tree.map(np.asarray, state)
    for name, leaf in flatten_params(state).items():
        if leaf.dtype.kind not in "biufc":
            raise SpecError(f"variable {name} has dtype {leaf.dtype}; a checkpoint holds numeric arrays only.")
    spec = ModelSpec(
        framework=framework,
        module=module_path,
        factory=factory_path,
        input_shape=tuple(input_shape),
        input_dtype=str(np.dtype(input_dtype)),
        kwargs=recorded,
        call_kwargs=dict(call_kwargs or {}),
        example_inputs=EXAMPLE_INPUTS if example_inputs is not None else None,
        description=description,
        leaf_hashes=_hashes(state),
        rng_state=rng_state,
    )
    if framework == "linen":
        _check_linen_state(_build(spec, _user_resolver()), spec, state, directory, when="saving")
    spec_json = json.dumps(spec.to_json(), indent=2)

    directory.parent.mkdir(parents=True, exist_ok=True)
    for stale in directory.parent.glob(f".{directory.name}.*.partial"):  # left by a killed earlier save
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", suffix=".partial", dir=directory.parent))
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700; the model directory follows the user's umask
        with _quiet_orbax(), _checkpointer() as ck:
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


def _check_nnx_constructor(cls):
    params = inspect.signature(cls.__init__).parameters
    needed = [n for n, p in list(params.items())[1:]
              if p.default is inspect.Parameter.empty and n != "rngs"
              and p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)]
    if needed:
        raise SpecError(
            f"NNX module {cls.__name__} needs constructor arguments {needed}; an NNX module does not record them. "
            "Pass kwargs={...} (JSON values, classes, configs, functions) or factory='package.module:make_model'."
        )


def _nnx_state_like(module, fresh) -> dict:
    """The module's state restricted to what a freshly built one has (dropping sown values such as a KL loss),
    without its random-number state (kept in the spec)."""
    from flax import nnx

    keep = set(flatten_params(nnx.to_pure_dict(nnx.state(fresh, nnx.Not(nnx.RngState)))))
    full = flatten_params(nnx.to_pure_dict(nnx.state(module, nnx.Not(nnx.RngState))))
    from ._model import unflatten_params

    return unflatten_params({k: v for k, v in full.items() if k in keep})


def _call_builder(spec: ModelSpec, resolver: Resolver):
    kwargs = decode(spec.kwargs, resolver, "kwargs")
    if spec.module is not None:
        cls = resolver.resolve(spec.module, "the model's module class")
        if not is_flax_module_class(cls):
            raise SpecError(f"spec field 'module' names {spec.module!r}, which is not a Flax module class.")
        return cls, kwargs
    fn = resolver.resolve(spec.factory, "the model's factory")
    if isinstance(fn, type) or not inspect.isfunction(fn) or is_library(fn.__module__):
        raise SpecError(f"spec field 'factory' names {spec.factory!r}, which is not a function of the model's own "
                        "code; a factory is a function returning the Flax module.")
    return fn, kwargs


def _build(spec: ModelSpec, resolver: Resolver):
    """The module the spec describes: its class called with the kwargs (NNX: and ``rngs``), or its factory."""
    from flax import nnx
    import flax.linen as nn

    builder, kwargs = _call_builder(spec, resolver)
    if spec.module is not None:
        _check_framework(spec, "nnx" if issubclass(builder, nnx.Module) else "linen")
    wants_rngs = spec.framework == "nnx" and "rngs" not in kwargs and (
        spec.module is not None or "rngs" in inspect.signature(builder).parameters)
    try:
        module = builder(**kwargs, **({"rngs": nnx.Rngs(0)} if wants_rngs else {}))
    except TypeError as e:
        raise SpecError(f"cannot build {spec.builder} with the arguments {sorted(map(repr, kwargs))}: "
                        f"{' '.join(str(e).split())}") from None
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
        raise SpecError(f"the spec says framework {spec.framework!r}, but {spec.builder} builds a {kind} module; "
                        f"set \"framework\": \"{kind}\".")


def _abstract_nnx(spec: ModelSpec, resolver: Resolver):
    from flax import nnx

    return nnx.eval_shape(lambda: _build(spec, resolver))


def _read_spec(directory: Path, state_dir: Path) -> ModelSpec | None:
    if (directory / SPEC_FILE).exists():
        return read_spec_file(directory / SPEC_FILE)
    if not any((state_dir / name).exists() for name in ("_METADATA", "_CHECKPOINT_METADATA", "manifest.ocdbt")):
        raise CheckpointError(f"{directory} holds neither a layersens model ({SPEC_FILE}) nor an Orbax checkpoint; "
                              "give the folder written by layersens.save_model or by Orbax.")
    for name in ("_CHECKPOINT_METADATA", "_METADATA"):
        if (state_dir / name).exists():
            try:
                json.loads((state_dir / name).read_text())
            except (ValueError, UnicodeDecodeError, RecursionError, OSError):
                raise CheckpointError(f"{state_dir / name} is damaged (not JSON): the checkpoint cannot be read. "
                                      "Restore it from a good copy, or save the model again.") from None
    try:
        with _quiet_orbax(), _checkpointer() as ck:
            custom = ck.metadata(state_dir).custom_metadata
    except Exception as e:
        raise CheckpointError(
            f"{directory} has no {SPEC_FILE} and is not a readable Orbax checkpoint ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''})."
        ) from None
    if not custom:
        return None
    return ModelSpec.from_json(dict(custom), source=f"custom metadata of {state_dir}")


def read_model_spec(directory) -> ModelSpec:
    directory = Path(directory).absolute()
    state_dir = directory / STATE_DIR if (directory / STATE_DIR).is_dir() else directory
    spec = _read_spec(directory, state_dir)
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
    state_dir = directory / STATE_DIR if (directory / STATE_DIR).is_dir() else directory
    options = dict(module=module, factory=factory, kwargs=kwargs, call_kwargs=call_kwargs, framework=framework,
                   input_shape=tuple(input_shape) if input_shape is not None else None, input_dtype=input_dtype)
    resolver = Resolver(allow_import, search=[directory, directory.parent, Path.cwd()], announce=announce)
    spec = _spec_with_options(_read_spec(directory, state_dir), directory, options, resolver)
    built = _build(spec, resolver) if spec.framework == "linen" else _abstract_nnx(spec, resolver)
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
        _check_linen_state(built, spec, state, state_dir)
        return from_linen(built, state, spec.input_shape, spec.input_dtype, spec.call_kwargs, example_inputs)
    return from_nnx(_fill_nnx(built, state, spec, state_dir), spec.input_shape, spec.input_dtype, example_inputs)


def _restore(state_dir: Path) -> dict:
    try:
        with _quiet_orbax(), _checkpointer() as ck:
            return ck.restore(state_dir)
    except Exception as e:
        raise CheckpointError(
            f"cannot restore the checkpoint in {state_dir} ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). "
            "Is it an Orbax StandardCheckpointer checkpoint, completely written?"
        ) from None


def _verify(spec: ModelSpec, state: dict, state_dir: Path):
    if not spec.leaf_hashes:
        return  # written before hashes were recorded, or a plain checkpoint
    found = _hashes(state)
    missing = sorted(set(spec.leaf_hashes) - set(found))
    extra = sorted(set(found) - set(spec.leaf_hashes))
    if missing or extra:
        raise CheckpointError(f"the checkpoint in {state_dir} does not hold the leaves its spec recorded (missing "
                              f"{missing}, unexpected {extra}): it was changed after saving. Save the model again.")
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

    from ._model import unflatten_params

    state = _unwrap_values(state)
    graphdef, target, rng = nnx.split(abstract, nnx.Not(nnx.RngState), nnx.RngState)
    _check_shapes(nnx.to_pure_dict(target), state, state_dir, spec)
    nnx.replace_by_pure_dict(target, state)
    rng_values = {}
    for name, leaf in flatten_params(nnx.to_pure_dict(rng)).items():
        recorded = spec.rng_state.get(name)
        if recorded is not None and "impl" in recorded:
            data = np.asarray(recorded["data"], np.uint32).reshape(tuple(recorded["shape"]) + (-1,))
            rng_values[name] = jax.random.wrap_key_data(data, impl=recorded["impl"])
        elif recorded is not None:
            rng_values[name] = jnp.asarray(np.asarray(recorded["data"], recorded["dtype"]).reshape(recorded["shape"]))
        elif jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):  # no recorded state: a fixed key
            rng_values[name] = jax.random.split(jax.random.key(0), leaf.shape) if leaf.shape else jax.random.key(0)
        else:
            rng_values[name] = jnp.zeros(leaf.shape, leaf.dtype)
    nnx.replace_by_pure_dict(rng, unflatten_params(rng_values))
    return nnx.merge(graphdef, target, rng)


def _check_linen_state(module, spec: ModelSpec, state: dict, where: Path, when: str = "loading"):
    x = jax.ShapeDtypeStruct((1,) + spec.input_shape, spec.input_dtype)
    try:
        expected = jax.eval_shape(lambda x: module.init(jax.random.key(0), x, **spec.call_kwargs), x)
    except Exception as e:
        raise SpecError(f"{spec.builder} with the recorded arguments cannot be initialized on inputs of shape "
                        f"{spec.input_shape} ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}).") from None
    expected = {k: v for k, v in dict(unbox(expected)).items() if k != "intermediates"}
    _check_shapes(expected, state, where, spec, when)


def _check_shapes(expected, restored, where: Path, spec: ModelSpec, when: str = "loading"):
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
        raise SpecError(f"the recorded arguments rebuild a {spec.builder} whose variables differ from the ones "
                        f"being saved ({detail}); pass kwargs= or factory= that rebuild this model.")
    raise CheckpointError(
        f"the checkpoint in {where} does not fit {spec.builder} with kwargs {spec.kwargs}: {detail}. Check the "
        "spec's kwargs against the ones used for training."
    )
