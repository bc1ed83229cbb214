"""The one writer of every file and directory layersens produces: atomically, with the user's umask.

A result is written under a hidden temporary name beside its target (``.<name>.<random>.partial``), flushed to
disk (``fsync``) and renamed into place, so a reader sees the old file or the whole new one, never half of one.
A run killed mid-write leaves at most that temporary, which the next write to the same target removes. New files
and directories get the permissions the user's umask gives (``mkstemp``/``mkdtemp`` alone would make them
private). A target that is a symbolic link is written through: the file it points to is replaced, the link stays.

Paths are checked before any work (:func:`check_name`, :func:`check_free_space`): a name the file system cannot
hold, or one with control characters, and a disk without room for a result of known size, are errors then, not
after the computation. :func:`sniff` tells, from a file's first bytes, what a file to be read is, so that a
reader can say what a wrong file is instead of passing it to ``numpy.load``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from ._errors import OutputError, format_bytes
from ._interrupt import raise_if_interrupted

PARTIAL = ".partial"
# The temporary's name keeps at most this many characters of the target's, so that a target name at the file
# system's limit still has a temporary name within it.
_PREFIX_CHARS = 64
# Room kept free beyond a result's own size when checking a disk: the metadata, the zip directory, file system
# overhead.
_SPACE_MARGIN = 1 << 20


def _prefix(target: Path) -> str:
    return f".{target.name[:_PREFIX_CHARS]}."


def resolve_target(target) -> Path:
    """The path actually written for ``target``: the file a symbolic link points to (resolved, even if it does not
    exist yet), else ``target`` itself, absolute. A link that leads back to itself is an error."""
    target = Path(target)
    if target.is_symlink():
        try:
            return Path(os.path.realpath(target, strict=True))
        except FileNotFoundError:  # a dangling link: its target is created
            resolved = Path(os.path.realpath(target))
        except OSError:  # ELOOP
            resolved = None
        if resolved is None or resolved.is_symlink():  # the non-strict walk stops at a loop
            raise OutputError(
                f"{target} is a symbolic link that leads back to itself (a loop); remove it or give another name."
            )
        return resolved
    return target.absolute()


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def remove_stale_partials(target: Path) -> None:
    """Removes temporaries a killed earlier write to ``target`` left behind."""
    for stale in target.parent.glob(_prefix(target).replace("[", "[[]") + "*" + PARTIAL):
        try:
            shutil.rmtree(stale) if stale.is_dir() and not stale.is_symlink() else stale.unlink()
        except OSError:
            pass


def _fsync_directory(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # not every file system syncs directories
        pass
    finally:
        os.close(fd)


def _cannot(target: Path, e: OSError) -> OutputError:
    reason = e.strerror or str(e)
    return OutputError(f"cannot write {target} ({reason}); nothing was written. Free space or choose another folder.")


@contextlib.contextmanager
def atomic_file(target, mode: str = "wb") -> Iterator[IO]:
    """``with atomic_file(path) as f: f.write(...)``: ``path`` appears whole when the block ends, or not at all
    (an error or an interrupt inside the block removes the temporary and leaves an existing file as it was)."""
    target = resolve_target(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_partials(target)
        fd, tmp = tempfile.mkstemp(prefix=_prefix(target), suffix=PARTIAL, dir=target.parent)
    except OSError as e:
        raise _cannot(target, e) from None
    try:
        os.fchmod(fd, 0o666 & ~umask())
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        raise_if_interrupted()  # a Ctrl-C a library swallowed still stops the write
        os.replace(tmp, target)
        _fsync_directory(target.parent)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise _cannot(target, e) from None
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_bytes(target, data: bytes) -> Path:
    """Writes ``data`` to ``target`` atomically; returns the path written."""
    with atomic_file(target) as f:
        f.write(data)
    return resolve_target(target)


def _fsync_tree(root: Path) -> None:
    for folder, _, files in os.walk(root):
        for name in files:
            with contextlib.suppress(OSError):
                fd = os.open(os.path.join(folder, name), os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        _fsync_directory(Path(folder))


@contextlib.contextmanager
def atomic_directory(target) -> Iterator[Path]:
    """``with atomic_directory(path) as tmp: ...write into tmp...``: the directory appears at ``path`` whole when
    the block ends (replacing an existing one), or not at all."""
    target = resolve_target(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_partials(target)
        tmp = Path(tempfile.mkdtemp(prefix=_prefix(target), suffix=PARTIAL, dir=target.parent))
        os.chmod(tmp, 0o777 & ~umask())  # mkdtemp makes 0700
    except OSError as e:
        raise _cannot(target, e) from None
    try:
        yield tmp
        _fsync_tree(tmp)
        raise_if_interrupted()  # a Ctrl-C a library swallowed still stops the write
        if target.exists():
            # Two renames: the old directory moves aside (still a .partial name, removed below or by the next
            # write), the new one into place.
            old = Path(tempfile.mkdtemp(prefix=_prefix(target), suffix=PARTIAL, dir=target.parent))
            os.rmdir(old)
            target.rename(old)
            tmp.rename(target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(target)
        _fsync_directory(target.parent)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise _cannot(target, e) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def check_name(path, option: str = "--out") -> None:
    """Refuses a file name the file system cannot hold, or one with control characters or bytes that are not UTF-8
    (a name that cannot be printed cannot be given back to the user to read)."""
    path = Path(path)
    bad = sorted({repr(c) for c in str(path) if ord(c) < 32 or ord(c) == 127})
    if bad:
        raise OutputError(
            f"{option} {str(path)!r} contains control characters ({', '.join(bad)}); choose a "
            "printable file name such as relu1.npz."
        )
    try:  # bytes that are not UTF-8 arrive as lone surrogates: such a name could be written, never printed
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        raise OutputError(
            f"{option} {str(path)!r} holds bytes that are not UTF-8 and cannot be printed; choose a printable file "
            "name such as relu1.npz."
        ) from None
    try:
        parts = [os.fsencode(part) for part in path.parts]
    except UnicodeError:
        raise OutputError(f"{option} {str(path)!r} cannot be encoded as a file name; choose another name.") from None
    limit = _name_max(path)
    for i, (part, encoded) in enumerate(zip(path.parts, parts)):
        if len(encoded) > limit:
            what = "file name" if i == len(parts) - 1 else "folder name"
            raise OutputError(
                f"{option}: the {what} is {len(encoded)} bytes long and this file system allows at "
                f"most {limit}; choose a shorter name (it starts {part[:24]!r})."
            )


def _name_max(path: Path) -> int:
    """The longest file name the file system holding ``path`` (or its nearest existing folder) allows, in bytes."""
    folder = path.parent
    try:
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        return 255


def check_writable(folder) -> None:
    """Creates and removes a temporary file in ``folder``; the ``OSError`` that says why it cannot be written, if
    it cannot (``os.access`` misses read-only mounts and ignores ACLs)."""
    fd, probe = tempfile.mkstemp(prefix=".layersens-probe.", suffix=PARTIAL, dir=folder)
    os.close(fd)
    os.unlink(probe)


def check_free_space(path, nbytes: int, option: str = "--out") -> None:
    """Refuses, before anything is computed, to write ``nbytes`` where the disk holds less."""
    folder = resolve_target(path).parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return  # the file system does not say; the write itself reports a full disk
    if nbytes + _SPACE_MARGIN > free:
        raise OutputError(
            f"{option} {path} needs about {format_bytes(nbytes)} and only {format_bytes(free)} is free "
            f"on {folder}; free space, choose another disk, or use fewer examples (--num-examples)."
        )


def check_report_dir(out_dir, files, overwrite: bool = False, option: str = "--out", what: str = "a report") -> Path:
    """Checks, before any work, that a report of ``files`` can be written into the directory ``out_dir``: not a
    file (nor inside one), writable, and holding none of ``files`` (an earlier report, described as ``what``)
    unless ``overwrite``. Returns the directory. Shared by every report layersens writes (benchmarks,
    summaries)."""
    out_dir = Path(out_dir)
    check_name(out_dir, option)
    try:
        if out_dir.exists() and not out_dir.is_dir():
            raise OutputError(
                f"{option} {out_dir} is a file, not a directory; give a directory for {', '.join(files)}."
            )
        existing = out_dir
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if not existing.is_dir():
            raise OutputError(f"{option} {out_dir}: {existing} is a file, not a directory; choose another path.")
        if not os.access(existing, os.W_OK | os.X_OK):
            raise OutputError(
                f"{option} {out_dir} cannot be written ({existing} is not writable); choose a writable directory."
            )
        found = [name for name in files if os.path.lexists(out_dir / name)]
    except OSError as e:  # a path too long as a whole, a folder that cannot be searched, ...
        raise OutputError(f"{option} {out_dir} cannot be written ({e.strerror or e}); choose another path.") from None
    if found and not overwrite:
        raise OutputError(
            f"{option} {out_dir} already holds {what} ({', '.join(found)}); pass "
            "--overwrite (overwrite=True) to replace it, or choose another directory."
        )
    return out_dir


# -------------------------------------------------------------------------------------------- reading: what a file is

NPY_MAGIC = b"\x93NUMPY"
ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")  # an archive with members, an empty archive
_SPECIAL = (
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISFIFO, "a named pipe"),
    (stat.S_ISSOCK, "a socket"),
)


def sniff(path) -> str:
    """What ``path`` holds, from its first bytes: ``"npy"``, ``"npz"`` (a zip archive), or words for anything else
    (``"a text file"``, ``"an empty file"``, ``"a character device"``, ...). Reads at most 512 bytes and never
    opens a device or a pipe; ``OSError`` (``FileNotFoundError``, ``IsADirectoryError``, ...) if it cannot look."""
    mode = os.stat(path).st_mode
    if stat.S_ISDIR(mode):
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
    for test, words in _SPECIAL:
        if test(mode):
            return words
    with open(path, "rb") as f:
        head = f.read(512)
    if head.startswith(NPY_MAGIC):
        return "npy"
    if head[:4] in ZIP_MAGICS:
        return "npz"
    if not head:
        return "an empty file"
    return "a text file" if _is_text(head) else "binary data in no NumPy format"


def _is_text(head: bytes) -> bool:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as e:
        if e.start < len(head) - 3:  # not only a character cut at the end of the sample
            return False
        text = head[: e.start].decode("utf-8")
    return all(c.isprintable() or c in "\t\n\r\f\v" for c in text)
