"""The model every later stage sees: trainable parameters and constants as pure data, plus one pure function.

Whatever the framework, a :class:`Model` holds the trainable parameters as a nested dict of arrays, every other
variable (BatchNorm statistics, ...) as constants, and ``capture(params, x)``, a pure function returning every
addressable value of one forward pass by name: each submodule's call output (``conv1``, ``block2/conv``), each
value sown as an intermediate (``relu1``) and the model's own output (``output``). The rest of layersens never
sees Flax again. Adapters: :func:`layersens.from_linen`, :func:`layersens.from_nnx`.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from .._errors import InputShapeError, InputValueError, InputWarning
from .._repr import Summarized

OUTPUT = "output"


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class Model(Summarized):
    """A trained model as pure data plus a pure capture function.

    Build one with :func:`from_linen`, :func:`from_nnx` or :func:`layersens.load_model`.

    Attributes:
      name: a label for reports (the module class).
      framework: ``"linen"``, ``"nnx"`` or ``"function"``.
      params: nested dict of the trainable parameters.
      constants: nested dict of the other variables, held fixed (e.g. BatchNorm running averages).
      input_shape: shape of one input example, without the batch axis.
      input_dtype: dtype of the inputs.
      capture_fn: ``capture_fn(params, constants, x_batch) -> {layer name: value}``, pure and jit-compatible.
      example_inputs: inputs shipped with the model, used when the user gives none.
      eval_mode: a sentence saying how evaluation mode was selected, printed with every result.
    """

    name: str
    framework: str
    params: dict
    constants: dict
    input_shape: tuple[int, ...]
    input_dtype: str
    capture_fn: Callable[[dict, dict, Any], dict[str, jax.Array]]
    example_inputs: np.ndarray | None = None
    eval_mode: str = ""

    def _summary(self):
        leaves = flatten_params(self.params)
        size = sum(int(np.size(v)) for v in leaves.values())
        return [
            ("name", self.name),
            ("framework", self.framework),
            ("input_shape", self.input_shape),
            ("input_dtype", self.input_dtype),
            ("params", f"{size:,} in {len(leaves)} leaves"),
            ("example_inputs", None if self.example_inputs is None else self.example_inputs),
            ("eval_mode", self.eval_mode),
        ]

    def capture(self, params: dict, x, constants: dict | None = None) -> dict[str, jax.Array]:
        """Every addressable value of one forward pass over the batch ``x``."""
        return self.capture_fn(params, self.constants if constants is None else constants, x)

    def check_inputs(self, x, name: str = "inputs", dtype=None) -> np.ndarray:
        """``x`` as a batch of examples in ``dtype`` (default: the model's), checked: the shape, numbers that are
        real and finite, ids that are integers. Casting integers to a floating model, or float64 to a float32
        one, is done with an ``InputWarning`` that says so."""
        return check_examples(x, self.input_shape, np.dtype(dtype or self.input_dtype), name)


def _where(mask: np.ndarray) -> str:
    examples = np.flatnonzero(mask.reshape(len(mask), -1).any(axis=1))
    shown = ", ".join(str(int(e)) for e in examples[:5]) + (", ..." if len(examples) > 5 else "")
    return f"{int(mask.sum()):,} value(s) in example(s) {shown}"


def check_examples(x, input_shape, target: np.dtype, name: str = "inputs") -> np.ndarray:
    try:
        x = np.asarray(x)
    except Exception as e:  # ragged lists and other non-arrays
        raise InputShapeError(f"{name} are not an array ({e}).") from None
    if x.dtype.kind not in "biuf" and x.dtype.kind != "c":
        raise InputShapeError(f"{name} hold {x.dtype} values; give an array of numbers.")
    want = tuple(input_shape)
    if x.shape == want:
        x = x[None]
    if x.shape[1:] != want:
        raise InputShapeError(
            f"{name} have shape {x.shape}; the model expects (examples,) + {want}, "
            f"e.g. {(len(x) if x.ndim else 1,) + want}."
        )
    if len(x) == 0:
        raise InputShapeError(f"{name} hold no examples (shape {x.shape}).")
    if x.dtype.kind == "c":
        raise InputValueError(
            f"{name} are complex ({x.dtype}); the model takes real {target} inputs. Pass the "
            "real part, or real and imaginary parts as separate features."
        )
    if target.kind == "f":
        if x.dtype.kind in "biu":
            warnings.warn(
                f"{name} are {x.dtype} (values {x.min()}..{x.max()}) and were cast to {target} as they "
                "are, without scaling: scale them as the model's training data was.",
                InputWarning,
                stacklevel=4,
            )
        elif x.dtype.itemsize > target.itemsize:
            warnings.warn(
                f"{name} are {x.dtype}; the model computes in {target}, so they were cast (for {x.dtype} "
                "results: split(..., dtype='float64'), or --x64).",
                InputWarning,
                stacklevel=4,
            )
        if x.dtype.kind == "f":
            bad = ~np.isfinite(x)
            if bad.any():
                raise InputValueError(f"{name} hold NaN or Inf: {_where(bad)}; replace or drop those examples.")
    elif target.kind in "iub" and x.dtype.kind == "f":
        bad = ~np.isfinite(x) | (x != np.round(x))
        if bad.any():
            raise InputValueError(
                f"{name} hold values that are not whole numbers ({_where(bad)}); the model takes "
                f"{target} inputs (e.g. token ids)."
            )
    return x.astype(target, copy=False)


def flatten_captured(tree: dict, prefix: str = "") -> dict[str, Any]:
    """``{'conv1': {'__call__': (y,)}, 'relu1': (h,)}`` -> ``{'conv1': y, 'relu1': h}``."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if key == "__call__":
            path = prefix or OUTPUT
        else:
            path = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, dict):
            out.update(flatten_captured(value, path))
            continue
        values: Sequence[Any] = tuple(value) if isinstance(value, (tuple, list)) else (value,)
        values = [v for v in values if hasattr(v, "shape")]
        if all(v is values[0] for v in values[1:]):
            values = values[:1]  # one value recorded twice (a __call__ that calls super().__call__)
        if len(values) == 1:
            out[path] = values[0]
        else:  # a module called several times, or a name sown several times
            for i, v in enumerate(values):
                out[f"{path}#{i}"] = v
    return out


def flatten_params(tree: dict, prefix: str = "") -> dict[str, jax.Array]:
    """``{"conv1": {"kernel": k}}`` -> ``{"conv1/kernel": k}``."""
    flat: dict[str, jax.Array] = {}
    for key in tree:
        path = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(tree[key], dict):
            flat.update(flatten_params(tree[key], path))
        else:
            flat[path] = tree[key]
    return flat


def unflatten_params(flat: dict[str, jax.Array]) -> dict:
    """The inverse of :func:`flatten_params`."""
    tree: dict = {}
    for path, leaf in flat.items():
        node = tree
        *parents, last = path.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = leaf
    return tree


def ravel_leaves(params: dict, names):
    """Concatenates the named leaves of a flat parameter dict (in the given order) into one vector, and returns
    it with the inverse ``unravel(vector) -> {name: leaf}``. Traceable."""
    shapes = [np.shape(params[n]) for n in names]
    sizes = [int(np.prod(s, dtype=np.int64)) for s in shapes]
    flat = jnp.concatenate([jnp.ravel(params[n]) for n in names])
    bounds = np.cumsum([0] + sizes)

    def unravel(vector):
        return {n: vector[a:b].reshape(s) for n, a, b, s in zip(names, bounds[:-1], bounds[1:], shapes)}

    return flat, unravel
