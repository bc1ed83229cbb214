"""One call from a model (or its directory) and a layer name to the Jacobian: what the CLI and notebooks use."""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import jax
import numpy as np

from ._atomic import check_free_space
from ._errors import InputShapeError, InputWarning, OutputError
from ._progress import announce, written
from .compute import check_size, jacobian, resolve_devices, stream_jacobian
from .derivatives import JacobianProducts, ReadoutDerivative, hvp, products, readout_function, readout_gradient
from .derivatives import hessian as hessian_of
from .derivatives import verify as verify_jacobian
from .models import Model, load_model
from .planning import Auto, as_strategy, parse_bytes
from .results import LayerJacobian, StoredJacobian, check_output, check_store_output, is_store_path
from .tracing import split

DEFAULT_NUM_EXAMPLES = 4


def read_inputs(path) -> np.ndarray:
    """Loads a ``.npy`` file of inputs, naming the file and what is wrong if it cannot (never unpickles)."""
    from ._atomic import sniff

    path = Path(path)
    how = "write the inputs with np.save('inputs.npy', x), x of shape (examples,) + the model's input shape."
    try:
        kind = sniff(path)  # numpy itself would advise unpickling anything that is not .npy/.npz
        data = np.load(path, allow_pickle=False) if kind in ("npy", "npz") else None
    except FileNotFoundError:
        raise InputShapeError(f"inputs file {path} does not exist.") from None
    except IsADirectoryError:
        raise InputShapeError(f"inputs file {path} is a directory; give a .npy file (np.save).") from None
    except (OSError, ValueError, EOFError) as e:
        if "allow_pickle" in str(e):  # an array of Python objects
            raise InputShapeError(
                f"inputs file {path} holds Python objects (dtype object), not numbers; {how}"
            ) from None
        raise InputShapeError(
            f"inputs file {path} is not a readable .npy array ({e}); write it with np.save(path, x)."
        ) from None
    if data is None:
        raise InputShapeError(f"inputs file {path} is {kind}, not a .npy array file; {how}")
    if isinstance(data, np.lib.npyio.NpzFile):
        names = list(data.files)
        data.close()
        raise InputShapeError(
            f"inputs file {path} is an .npz archive (arrays {names}); give one .npy array: "
            f"np.save('inputs.npy', np.load('{path.name}')['{names[0] if names else 'x'}'])."
        )
    return data


def _count(num_examples, available: int, source: str) -> int:
    if num_examples is None:
        return available
    if (
        isinstance(num_examples, bool)
        or not isinstance(num_examples, (int, np.integer))
        or not (1 <= num_examples <= available)
    ):
        raise InputShapeError(
            f"--num-examples is {num_examples!r}; {source} hold {available} example(s), so choose 1 to {available}."
        )
    return int(num_examples)


def _check_range(model: Model, x: np.ndarray, name: str):
    """Warns when inputs lie far outside the range of the model's own example inputs (e.g. 0..255 pixels
    against 0..1)."""
    own = model.example_inputs
    if own is None or not np.issubdtype(np.asarray(own).dtype, np.floating) or not np.issubdtype(x.dtype, np.floating):
        return
    lo, hi = float(np.min(own)), float(np.max(own))
    span = max(hi - lo, 1e-12)
    if float(np.min(x)) < lo - 2 * span or float(np.max(x)) > hi + 2 * span:
        warnings.warn(
            f"{name} range over {float(np.min(x)):.4g}..{float(np.max(x)):.4g}, far outside the model's own "
            f"example inputs ({lo:.4g}..{hi:.4g}): scale them as its training data was.",
            InputWarning,
            stacklevel=3,
        )


def select_inputs(model: Model, inputs=None, num_examples: int | None = None, dtype=None) -> np.ndarray:
    """The user's inputs (an array or a ``.npy`` path), or the first ``num_examples`` (default 4) of the model's
    own example inputs, checked (see ``Model.check_inputs``)."""
    target = dtype if dtype is not None and np.issubdtype(np.dtype(model.input_dtype), np.floating) else None
    if inputs is not None:
        is_path = isinstance(inputs, (str, Path))
        x = read_inputs(inputs) if is_path else inputs
        name = f"inputs {inputs}" if is_path else "inputs"
        x = model.check_inputs(x, name, dtype=target)
        x = x[: _count(num_examples, len(x), name)]
        _check_range(model, x, name)
        return x
    if model.example_inputs is None:
        raise InputShapeError(
            f"model {model.name} ships no example inputs; pass inputs (--inputs FILE.npy) of shape "
            f"(examples,) + {tuple(model.input_shape)}."
        )
    available = len(model.example_inputs)
    n = _count(
        min(DEFAULT_NUM_EXAMPLES, available) if num_examples is None else num_examples,
        available,
        "the model's own example inputs (pass --inputs FILE.npy for others)",
    )
    return model.check_inputs(model.example_inputs[:n], "example inputs", dtype=target)


def _cut(model, layer, inputs, num_examples, dtype, wrt, wrt_layer, allow_import, progress=None, complex_mode=None):
    """The split and the checked inputs every one-call path starts from (the model loaded if given a path)."""
    if not isinstance(model, Model):
        announce(progress, f"loading {model}")
        model = load_model(model, allow_import=allow_import)
    x = select_inputs(model, inputs, num_examples, dtype)
    announce(progress, f"tracing {model.name} to {layer}")
    return split(model, layer, dtype=dtype, wrt=wrt, wrt_layer=wrt_layer, complex_mode=complex_mode), x


def extract(
    model,
    layer: str,
    inputs=None,
    *,
    num_examples: int | None = None,
    mode=Auto(),
    max_memory=None,
    device=None,
    devices: int | None = None,
    allow_import: bool = False,
    progress=None,
    dtype=None,
    wrt=None,
    wrt_layer: str | None = None,
    complex_mode=None,
    out=None,
    overwrite: bool = False,
    verify: bool = False,
    compressed: bool = False,
) -> LayerJacobian | StoredJacobian:
    """Loads (if given a directory), splits at ``layer`` and computes the per-example Jacobian.

    ``inputs`` is an array, a ``.npy`` path, or ``None`` for the model's own example inputs (the first
    ``num_examples``, default 4). ``dtype`` (e.g. ``"float64"``), ``wrt``, ``wrt_layer`` and ``complex_mode``
    are :func:`layersens.split`'s. With ``out``, the result is also saved there (the path is checked before
    anything is computed; an existing file is replaced only with ``overwrite``): a ``.npz`` file holds a
    :class:`LayerJacobian` computed in memory; a ``.zarr`` store is written chunk by chunk within ``max_memory``
    whatever the Jacobian's size (:func:`layersens.stream_jacobian`; ``compressed`` keeps channel diagonals as
    such; an unfinished store of the same computation is resumed) and returned as a lazy
    :class:`~layersens.StoredJacobian`. ``verify`` spot-checks the result (:func:`layersens.verify`). See
    :func:`layersens.jacobian` for the other arguments, and ``layersens._progress`` for what ``progress`` hears.
    """
    # Every argument is read once, here, before anything is loaded or computed.
    store = out is not None and is_store_path(out)
    if compressed and not store:
        raise OutputError(
            "the compressed form is written to a store: give --out NAME.zarr with --format compressed "
            "(or use layersens.compressed_jacobian in Python)."
        )
    if out is not None:
        out = check_store_output(out, overwrite) if store else check_output(out, overwrite)
    if jax.process_count() > 1 and not store:
        raise OutputError(
            f"this is process {jax.process_index()} of {jax.process_count()}: a run over several processes writes "
            "its shares into one store; give --out NAME.zarr (out='NAME.zarr')."
        )
    mode = as_strategy(mode)
    max_memory = None if max_memory is None else parse_bytes(max_memory)
    chosen = resolve_devices(device, devices)
    device, devices = chosen[0], len(chosen)
    cut, x = _cut(model, layer, inputs, num_examples, dtype, wrt, wrt_layer, allow_import, progress, complex_mode)
    result: LayerJacobian | StoredJacobian
    if store:
        result = stream_jacobian(
            cut,
            x,
            out,
            compressed=compressed,
            overwrite=overwrite,
            mode=mode,
            max_memory=max_memory,
            device=device,
            devices=devices,
            progress=progress,
            written=written(progress),
        )
    else:
        nbytes = check_size(cut, len(x))
        if out is not None:
            check_free_space(out, nbytes)
        result = jacobian(cut, x, mode=mode, max_memory=max_memory, device=device, devices=devices, progress=progress)
    if verify:
        announce(progress, "verifying")
        result = dataclasses.replace(result, verification=verify_jacobian(result, cut))
    if out is not None and not store:
        assert isinstance(result, LayerJacobian)
        announce(progress, f"writing {out}")
        result.save(out, wrote=written(progress))
    return result


def _array(value) -> np.ndarray:
    """An array given as itself or as a ``.npy`` path (read with the same checks as ``--inputs``)."""
    return read_inputs(value) if isinstance(value, (str, Path)) else np.asarray(value)


def extract_readout(
    model,
    layer: str,
    inputs=None,
    *,
    readout="sum",
    hessian: bool = False,
    vectors=None,
    num_examples: int | None = None,
    dtype=None,
    wrt=None,
    wrt_layer: str | None = None,
    complex_mode=None,
    allow_import: bool = False,
    out=None,
    overwrite: bool = False,
) -> ReadoutDerivative:
    """Like :func:`extract`, for a scalar readout of the layer: its gradient per example, and with
    ``hessian=True`` its Hessian (see :func:`layersens.hessian`), or with ``vectors`` (an array or ``.npy``,
    ``(P,)`` or ``(examples, P)``) Hessian-vector products instead (:func:`layersens.hvp`)."""
    out = None if out is None else check_output(out, overwrite)
    cut, x = _cut(model, layer, inputs, num_examples, dtype, wrt, wrt_layer, allow_import, complex_mode=complex_mode)
    readout_function(readout, cut.activation_shape)  # checked before anything is computed
    if vectors is not None:
        v = _array(vectors)
        result = dataclasses.replace(readout_gradient(cut, x, readout), hessian_vectors=hvp(cut, x, v, readout))
    else:
        result = (hessian_of if hessian else readout_gradient)(cut, x, readout)
    if out is not None:
        result.save(out)
    return result


def extract_products(
    model,
    layer: str,
    inputs=None,
    *,
    tangents=None,
    cotangents=None,
    num_examples: int | None = None,
    dtype=None,
    wrt=None,
    wrt_layer: str | None = None,
    complex_mode=None,
    allow_import: bool = False,
    out=None,
    overwrite: bool = False,
) -> JacobianProducts:
    """Like :func:`extract`, for products with the Jacobian of each example (:func:`layersens.products`):
    ``tangents`` (an array or ``.npy``: ``(P,)``, ``(P, k)`` or ``(examples, P, k)``) give J V, ``cotangents``
    (``(examples, M)`` or ``(examples, M, k)``) give Jᵀ U; saved (with the leaf names) to ``out``."""
    if tangents is None and cotangents is None:
        raise InputShapeError("give tangents (--tangents V.npy) or cotangents (--cotangents U.npy), or both.")
    out = None if out is None else check_output(out, overwrite)
    cut, x = _cut(model, layer, inputs, num_examples, dtype, wrt, wrt_layer, allow_import, complex_mode=complex_mode)
    result = products(
        cut, x, None if tangents is None else _array(tangents), None if cotangents is None else _array(cotangents)
    )
    if out is not None:
        result.save(out)
    return result
