"""Writing results: one ``.npz`` per result, atomically, with its metadata as JSON inside.

The file is written to a hidden temporary beside the target and renamed into place, so a reader sees the old file
or the whole new one, never half of one. The temporary's name starts with ``.<target>.`` and ends with
``.partial``: a run killed mid-write leaves at most that file, which the next write to the same target removes.
Files get the permissions the user's umask gives new files (``mkstemp`` alone would make them 0600).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np

from .._errors import CheckpointError, OutputError

PARTIAL = ".partial"


def npz_path(path) -> Path:
    path = Path(path)
    return path if path.suffix == ".npz" else path.with_name(path.name + ".npz")


def check_output(path, overwrite: bool = False, option: str = "--out") -> Path:
    """The ``.npz`` path results will be written to, checked before any computation: refused if it exists
    (unless ``overwrite``), is special or a directory, or its folder cannot be written."""
    given = Path(path)
    if given.is_dir() or not given.name or given.name in (".", ".."):
        raise OutputError(f"{option} {str(path)!r} is a directory; give a file name such as relu1.npz.")
    path = npz_path(given)
    for candidate in {given, path}:
        if candidate.exists() and not candidate.is_file():
            kind = "a directory" if candidate.is_dir() else "a special file"
            raise OutputError(f"{option} {given} is {kind}; give a file name such as relu1.npz.")
    if path.exists() and not overwrite:
        raise OutputError(f"{option} {path} already exists; pass --overwrite (overwrite=True) to replace it, or "
                          "choose another name.")
    folder = path.parent
    existing = folder
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise OutputError(f"{option} {given}: {existing} is a file, not a folder; choose another path.")
    if existing != folder:  # created when the result is written, not before: nothing is made on an error
        if not os.access(existing, os.W_OK | os.X_OK):
            raise OutputError(f"{option} {given} cannot be written ({existing} is not writable); choose a writable "
                              "folder.")
        return path
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=PARTIAL, dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise OutputError(f"{option} {given} cannot be written ({e.strerror or e}); choose a writable folder.") from None
    return path


def remove_stale_partials(path: Path) -> None:
    """Removes temporaries a killed earlier write to ``path`` left behind."""
    for stale in path.parent.glob(f".{path.name}.*{PARTIAL}"):
        try:
            stale.unlink()
        except OSError:
            pass


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_npz(path, arrays: dict, metadata: dict) -> Path:
    """Writes ``arrays`` and ``metadata`` to ``path`` (``.npz`` added if missing), atomically."""
    path = npz_path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_partials(path)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=PARTIAL, dir=path.parent)
    except OSError as e:
        raise OutputError(f"cannot write {path} ({e.strerror or e}); choose a writable folder.") from None
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays, metadata=np.frombuffer(json.dumps(metadata).encode(), dtype=np.uint8))
        os.replace(tmp, path)
    except OSError as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise OutputError(f"cannot write {path} ({e.strerror or e}); nothing was written. Free space or choose "
                          "another folder.") from None
    except BaseException:  # an interrupt: the partial file goes, the old file (if any) stays
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def read_npz(path, expected_format: str, names) -> tuple[dict, dict]:
    """The arrays ``names`` and the metadata of a file written by :func:`write_npz` in ``expected_format``."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(bytes(data["metadata"]).decode())
            arrays = {k: data[k] for k in names}
        bad = [k for k, v in arrays.items() if not isinstance(v, np.ndarray)]
        if bad:
            raise ValueError(f"members {bad} are not arrays")
    except FileNotFoundError:
        raise CheckpointError(f"{path} does not exist.") from None
    except IsADirectoryError:
        raise CheckpointError(f"{path} is a directory, not a layersens result file.") from None
    except Exception as e:  # truncated zips, CRC errors, bad JSON, missing members: all one message
        raise CheckpointError(f"{path} is not a readable layersens result file ({type(e).__name__}: {e}).") from None
    if not isinstance(meta, dict) or meta.pop("format", None) != expected_format:
        raise CheckpointError(f"{path} is not a {expected_format} file.")
    return arrays, meta
