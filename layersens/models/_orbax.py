"""Calling Orbax, and the content hashes of a checkpoint's arrays.

Every Orbax call on a model directory goes through :func:`orbax_call`, which

* keeps Orbax's absl log lines off stderr (an error is reported once, by layersens, in one line);
* lets the asynchronous work of a failed call finish before its event loop closes. Orbax runs each call in a fresh
  event loop (``asyncio_utils.run_sync``) and gathers one task per array; when one fails (an array file cut short,
  a deleted ``manifest.ocdbt``) the loop was closed with the other tasks still running, and their TensorStore
  callbacks then printed ``RuntimeError: Event loop is closed`` tracebacks and ``Future exception was never
  retrieved`` records on stderr from background threads, after the error line (and as unraisable exceptions
  under pytest). The loops created during the call wait for their tasks and retrieve their exceptions instead;
* gives Orbax a path its storage layer can open. TensorStore's file driver reads ``\\`` as a path separator and
  cannot take a name that is not UTF-8, so such a directory is reached through a symbolic link with a plain name
  in a temporary folder.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import re
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ._model import flatten_params

STATE_DIR = "state"
EXAMPLE_INPUTS = "example_inputs.npy"
# How long a failed call's remaining tasks may take to finish (local reads take milliseconds) before they are
# cancelled.
_SETTLE_SECONDS = 60.0


def checkpointer():
    import orbax.checkpoint as ocp

    return ocp.StandardCheckpointer()


def leaf_hash(leaf) -> str:
    array = np.ascontiguousarray(np.asarray(leaf))
    digest = hashlib.sha256(f"{array.dtype.str}{array.shape}".encode())
    digest.update(array.tobytes())
    return "sha256:" + digest.hexdigest()


def hashes(state: dict) -> dict[str, str]:
    return {name: leaf_hash(leaf) for name, leaf in flatten_params(state).items()}


@contextlib.contextmanager
def orbax_call(path) -> Iterator[Path]:
    """``with orbax_call(path) as p: ck.restore(p)``: one Orbax call on ``path`` (see the module docstring); ``p``
    is the path to give Orbax. ``path`` may not exist yet (a checkpoint being saved) if its folder does."""
    with _quiet_logs(), _settling_event_loops(), _openable(Path(path)) as openable:
        yield openable


def shown(e: BaseException, path: Path, openable: Path) -> str:
    """An Orbax or TensorStore error in words, its first line only, naming ``path`` rather than its alias."""
    text = str(e).splitlines()[0] if str(e) else ""
    text = re.sub(r"\s*\[tensorstore_spec=.*\]$", "", text)  # the whole TensorStore spec, as JSON: noise
    if openable != path:
        text = text.replace(str(openable), str(path))
    return f"{type(e).__name__}: {text}"


@contextlib.contextmanager
def _quiet_logs():
    """Orbax logs through absl (WARNING and ERROR lines on stderr) what layersens reports itself as one error."""
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def _openable_name(path: Path) -> bool:
    text = str(path)
    if "\\" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # bytes that are not UTF-8, held as surrogates
        return False
    return True


@contextlib.contextmanager
def _openable(path: Path) -> Iterator[Path]:
    if _openable_name(path):
        yield path
        return
    # A checkpoint being saved does not exist yet: its folder is linked (its own name is layersens's, "state").
    target, rest = (path, None) if os.path.lexists(path) else (path.parent, path.name)
    with tempfile.TemporaryDirectory(prefix="layersens-") as folder:
        link = Path(folder) / "checkpoint"
        os.symlink(os.path.abspath(target), link, target_is_directory=True)
        yield link if rest is None else link / rest


class _SettlingLoop(asyncio.SelectorEventLoop):
    """An event loop whose ``run_until_complete`` returns, also on an error, only when every task started in it
    has finished (or, after ``_SETTLE_SECONDS``, been cancelled), with their exceptions retrieved."""

    def run_until_complete(self, future):
        try:
            return super().run_until_complete(future)
        finally:
            self._settle()

    def _settle(self):
        if self.is_closed() or self.is_running():
            return
        pending = [task for task in asyncio.all_tasks(self) if not task.done()]
        if not pending:
            return
        _, late = super().run_until_complete(asyncio.wait(pending, timeout=_SETTLE_SECONDS))
        for task in late:
            task.cancel()
        if late:
            super().run_until_complete(asyncio.wait(late))
        for task in pending:
            if task.done() and not task.cancelled():
                task.exception()  # retrieved: no "Task exception was never retrieved" when it is collected


class _SettlingPolicy(asyncio.DefaultEventLoopPolicy):
    def new_event_loop(self):
        return _SettlingLoop()


_policy_lock = threading.Lock()
_policy_users = 0
_policy_before = None


@contextlib.contextmanager
def _settling_event_loops():
    """Event loops created meanwhile (Orbax creates one per call, ``asyncio.new_event_loop``) settle their tasks.
    The policy is process-wide: it is installed by the first of concurrent callers and removed by the last."""
    global _policy_users, _policy_before
    with _policy_lock:
        if _policy_users == 0:
            _policy_before = asyncio.get_event_loop_policy()
            asyncio.set_event_loop_policy(_SettlingPolicy())
        _policy_users += 1
    try:
        yield
    finally:
        with _policy_lock:
            _policy_users -= 1
            if _policy_users == 0:
                asyncio.set_event_loop_policy(_policy_before)
                _policy_before = None
