"""Writing a model directory: the module recorded as the user built it, its arrays in an Orbax checkpoint with
their content hashes, atomically (``layersens._atomic.atomic_directory``). The layout is in ``_load``."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import jax
import numpy as np

from .._atomic import atomic_directory
from .._errors import CheckpointError, SpecError
from ._linen import unbox
from ._model import flatten_params, unflatten_params
from ._orbax import EXAMPLE_INPUTS, STATE_DIR, checkpointer, hashes, orbax_call
from ._rebuild import abstract_nnx, build, check_linen_state, user_resolver
from ._spec import SPEC_FILE, ModelSpec
from ._values import Unrecordable, changed_fields, encode, import_path


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
            recorded[name] = {
                "impl": str(jax.random.key_impl(leaf)),
                "shape": list(leaf.shape),
                "data": data.ravel().tolist(),
            }
        else:
            recorded[name] = {
                "dtype": np.dtype(leaf.dtype).name,
                "shape": list(np.shape(leaf)),
                "data": np.asarray(leaf).ravel().tolist(),
            }
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
        spec_probe = ModelSpec(
            framework="nnx", input_shape=tuple(input_shape), module=module_path, factory=factory_path, kwargs=recorded
        )
        fresh = abstract_nnx(spec_probe, user_resolver())
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
        recorded = _record(changed_fields(module) if kwargs is None and factory is None else dict(kwargs or {}), owner)
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
        leaf_hashes=hashes(state),
        rng_state=rng_state,
    )
    if framework == "linen":
        check_linen_state(build(spec, user_resolver()), spec, state, directory, when="saving")
    spec_json = json.dumps(spec.to_json(), indent=2)

    with atomic_directory(directory) as tmp:  # a killed save leaves a .partial sibling, removed by the next one
        with orbax_call(tmp / STATE_DIR) as state_dir, checkpointer() as ck:
            ck.save(state_dir, state, custom_metadata=spec.to_json())
        (tmp / SPEC_FILE).write_text(spec_json + "\n")
        if example_inputs is not None:
            np.save(tmp / EXAMPLE_INPUTS, np.asarray(example_inputs, dtype=spec.input_dtype))
    return directory


def _check_nnx_constructor(cls):
    params = inspect.signature(cls.__init__).parameters
    needed = [
        n
        for n, p in list(params.items())[1:]
        if p.default is inspect.Parameter.empty
        and n != "rngs"
        and p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    ]
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
    return unflatten_params({k: v for k, v in full.items() if k in keep})
