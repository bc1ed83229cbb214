"""One call from a model (or its directory) and a layer name to the Jacobian: what the CLI and notebooks use."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .models import Model
from .models import load_model
from ._errors import CheckpointError, InputShapeError
from .compute import jacobian
from .derivatives import ReadoutDerivative, readout_gradient
from .derivatives import hessian as hessian_of
from .results import LayerJacobian
from .tracing import split
from .planning import Auto

DEFAULT_NUM_EXAMPLES = 4


def read_inputs(path) -> np.ndarray:
    """Loads a ``.npy`` file of inputs, naming the file if it cannot."""
    path = Path(path)
    try:
        return np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise CheckpointError(f"inputs file {path} does not exist.") from None
    except (OSError, ValueError) as e:
        raise CheckpointError(f"inputs file {path} is not a readable .npy array ({e}).") from None


def select_inputs(model: Model, inputs=None, num_examples: int | None = None) -> np.ndarray:
    """The user's inputs, or the first ``num_examples`` of the model's own example inputs."""
    if inputs is not None:
        is_path = isinstance(inputs, (str, Path))
        x = read_inputs(inputs) if is_path else np.asarray(inputs)
        name = f"inputs {inputs}" if is_path else "inputs"
        x = model.check_inputs(x, name, dtype=x.dtype if np.issubdtype(x.dtype, np.floating) else None)
        return x if num_examples is None else x[:num_examples]
    if model.example_inputs is None:
        raise InputShapeError(
            f"model {model.name} ships no example inputs; pass inputs (--inputs FILE.npy) of shape "
            f"(examples,) + {tuple(model.input_shape)}."
        )
    n = DEFAULT_NUM_EXAMPLES if num_examples is None else num_examples
    available = len(model.example_inputs)
    if not 1 <= n <= available:
        raise InputShapeError(
            f"num_examples is {n}; the model ships {available} example inputs, so choose 1 to {available}, "
            "or pass your own inputs (--inputs FILE.npy)."
        )
    return model.check_inputs(model.example_inputs[:n], "example inputs", dtype=model.example_inputs.dtype)


def extract(
    model,
    layer: str,
    inputs=None,
    *,
    num_examples: int | None = None,
    mode=Auto(),
    max_memory=None,
    device=None,
    allow_import: bool = False,
    progress=None,
    dtype=None,
    wrt=None,
    wrt_layer: str | None = None,
) -> LayerJacobian:
    """Loads (if given a directory), splits at ``layer`` and computes the per-example Jacobian.

    ``inputs`` is an array, a ``.npy`` path, or ``None`` for the model's own example inputs (the first
    ``num_examples``, default 4). ``dtype`` (e.g. ``"float64"``), ``wrt`` and ``wrt_layer`` are
    :func:`layersens.split`'s. See :func:`layersens.jacobian` for the other arguments.
    """
    if not isinstance(model, Model):
        model = load_model(model, allow_import=allow_import)
    x = select_inputs(model, inputs, num_examples)
    return jacobian(split(model, layer, dtype=dtype, wrt=wrt, wrt_layer=wrt_layer), x, mode=mode,
                    max_memory=max_memory, device=device, progress=progress)


def extract_readout(
    model,
    layer: str,
    inputs=None,
    *,
    readout="sum",
    hessian: bool = False,
    num_examples: int | None = None,
    dtype=None,
    wrt=None,
    wrt_layer: str | None = None,
    allow_import: bool = False,
) -> ReadoutDerivative:
    """Like :func:`extract`, for a scalar readout of the layer: its gradient per example, and with
    ``hessian=True`` its Hessian (see :func:`layersens.hessian`)."""
    if not isinstance(model, Model):
        model = load_model(model, allow_import=allow_import)
    x = select_inputs(model, inputs, num_examples)
    cut = split(model, layer, dtype=dtype, wrt=wrt, wrt_layer=wrt_layer)
    return (hessian_of if hessian else readout_gradient)(cut, x, readout)
