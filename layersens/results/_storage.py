"""Result files: one ``.npz`` per result, with its metadata as JSON inside, written through the one atomic writer.

Writing goes through :mod:`layersens._atomic` (a temporary beside the target, renamed into place; the permissions
the user's new files get; a symbolic link written through; stale temporaries of a killed run removed).
:func:`check_output` checks an output path before any computation; :func:`read_npz` reads a result back and says in
one line what a file that is no result is.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from .._atomic import (
    atomic_file,
    check_free_space,
    check_name,
    check_writable,
    resolve_target,
    sniff,
)
from .._errors import CheckpointError, OutputError
from .._progress import CountingFile


def npz_path(path) -> Path:
    path = Path(path)
    return path if path.suffix == ".npz" else path.with_name(path.name + ".npz")


def check_output(path, overwrite: bool = False, option: str = "--out", nbytes: int | None = None) -> Path:
    """The ``.npz`` path results will be written to, checked before any computation: refused if its name cannot be
    held or printed, if it exists (a symbolic link too, even a dangling one) unless ``overwrite``, is special or a
    directory, if its folder cannot be written, or (given the result's size ``nbytes``) if the disk lacks room.
    With ``overwrite``, a symbolic link is written through to its target."""
    given = Path(path)
    if not given.name or given.name in (".", ".."):
        raise OutputError(f"{option} {str(path)!r} is a directory; give a file name such as relu1.npz.")
    path = npz_path(given)
    check_name(path, option)
    try:
        target = _check_existing(given, path, overwrite, option)
        _check_folder(target.parent, given, option)
    except OSError as e:  # a path too long as a whole, a folder that cannot be searched, ...
        raise OutputError(f"{option} {given} cannot be written ({e.strerror or e}); choose another path.") from None
    if nbytes is not None:
        check_free_space(path, nbytes, option)
    return path


def is_store_path(path) -> bool:
    """Whether ``path`` names a zarr store (``.zarr``) rather than a ``.npz`` file."""
    return Path(path).suffix == ".zarr"


def check_store_output(path, overwrite: bool = False, option: str = "--out") -> Path:
    """The ``.zarr`` store a streamed Jacobian goes to, checked before any computation. An existing layersens
    store is resumed (if it holds the same computation, checked when it is opened) or, with ``overwrite``,
    replaced; anything else there is refused: a file, or a directory that is not a layersens store."""
    given = Path(path)
    check_name(given, option)
    target = resolve_target(given)
    if target.exists() or os.path.lexists(given):
        if not target.is_dir():
            raise OutputError(
                f"{option} {given} exists and is not a directory; a store is a directory: choose a new "
                "name ending in .zarr."
            )
        meta = target / "zarr.json"
        try:
            ours = meta.is_file() and "layersens-jacobian-store/" in meta.read_text(errors="replace")
        except OSError:
            ours = False
        if not ours:
            raise OutputError(
                f"{option} {given} is a directory that is not a layersens Jacobian store; nothing was written. "
                "Choose a new name ending in .zarr."
            )
    _check_folder(target.parent, given, option)
    return target


def _check_existing(given: Path, path: Path, overwrite: bool, option: str) -> Path:
    """The file that will be written (a link's target), after refusing what must not be replaced."""
    if given.is_dir():
        raise OutputError(f"{option} {str(given)!r} is a directory; give a file name such as relu1.npz.")
    target = resolve_target(path)  # a link that loops is refused here
    link = path.is_symlink()
    for candidate in [given, path] + ([target] if link else []):
        if candidate.exists() and not candidate.is_file():
            kind = "a directory" if candidate.is_dir() else "a special file"
            where = f" (the target of the symbolic link {path})" if candidate is target else ""
            raise OutputError(f"{option} {candidate}{where} is {kind}; give a file name such as relu1.npz.")
    if os.path.lexists(path) and not overwrite:
        what = f" (a symbolic link to {target})" if link else ""
        raise OutputError(
            f"{option} {path}{what} already exists; pass --overwrite (overwrite=True) to replace it, "
            "or choose another name."
        )
    return target


def _check_folder(folder: Path, given: Path, option: str) -> None:
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise OutputError(f"{option} {given}: {existing} is a file, not a folder; choose another path.")
    if existing != folder:  # created when the result is written, not before: nothing is made on an error
        if not os.access(existing, os.W_OK | os.X_OK):
            raise OutputError(
                f"{option} {given} cannot be written ({existing} is not writable); choose a writable folder."
            )
        return
    try:
        check_writable(folder)
    except OSError as e:
        raise OutputError(
            f"{option} {given} cannot be written ({e.strerror or e}); choose a writable folder."
        ) from None


def write_npz(path, arrays: dict, metadata: dict, wrote=None) -> Path:
    """Writes ``arrays`` and ``metadata`` to ``path`` (``.npz`` added if missing), atomically; ``wrote(nbytes)``
    is told of the bytes as they are written."""
    path = npz_path(path)
    with atomic_file(path) as f:
        target = f if wrote is None else CountingFile(f, wrote)
        np.savez(target, **arrays, metadata=np.frombuffer(json.dumps(metadata).encode(), dtype=np.uint8))
    return path


def read_npz(
    path,
    expected_format: str,
    names,
    what: str = "a layersens result",
    others: dict[str, tuple[str, str]] | None = None,
) -> tuple[dict, dict]:
    """The arrays ``names`` and the metadata of a file written by :func:`write_npz` in ``expected_format``.
    ``others`` maps the formats of other layersens files to (what they hold, the command that writes them), so
    that such a file is named for what it is."""
    path = Path(path)
    try:
        kind = sniff(path)
    except FileNotFoundError:
        raise CheckpointError(f"{path} does not exist.") from None
    except IsADirectoryError:
        raise CheckpointError(f"{path} is a directory, not a layersens result file.") from None
    except OSError as e:
        raise CheckpointError(f"{path} cannot be read ({e.strerror or e}).") from None
    if kind != "npz":
        words = "a single .npy array" if kind == "npy" else kind
        raise CheckpointError(
            f"{path} is not a readable layersens result file: it is {words}, not an .npz archive "
            "with layersens metadata. Results are written by `layersens extract --out FILE.npz` "
            "(LayerJacobian.save)."
        )
    try:
        with np.load(path, allow_pickle=False) as data:
            members = [m for m in data.files if m != "metadata"]
            if "metadata" not in data.files:
                raise CheckpointError(
                    f"{path} is an .npz archive of arrays {members} without layersens metadata, "
                    "not a layersens result file. Results are written by `layersens extract "
                    "--out FILE.npz` (LayerJacobian.save)."
                )
            meta = json.loads(bytes(data["metadata"]).decode())
            found = meta.get("format") if isinstance(meta, dict) else None
            if found == expected_format:
                arrays = {k: data[k] for k in names}
        if found == expected_format:
            bad = [k for k, v in arrays.items() if not isinstance(v, np.ndarray)]
            if bad:
                raise ValueError(f"members {bad} are not arrays")
    except CheckpointError:
        raise
    except Exception as e:  # noqa: BLE001 - truncated zips, CRC errors, bad JSON, missing members: all one message
        raise CheckpointError(f"{path} is not a readable layersens result file ({type(e).__name__}: {e}).") from None
    if found != expected_format:
        known = others or {}
        if isinstance(found, str) and found in known:
            holds, command = known[found]
            raise CheckpointError(
                f"{path} holds {holds} ({found}), written by `{command}`, not {what}; read its "
                f"arrays ({', '.join(members)}) with numpy.load({str(path)!r})."
            )
        label = f" (its format is {found!r})" if isinstance(found, str) else ""
        raise CheckpointError(f"{path} is not a {expected_format} file{label}.")
    meta.pop("format")
    return arrays, meta
