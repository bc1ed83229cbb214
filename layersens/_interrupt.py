"""Ctrl-C that stops a run at any moment, even where a library swallows the ``KeyboardInterrupt``.

Python's own SIGINT handler raises ``KeyboardInterrupt`` in whatever Python code runs next. Three places make
that unreliable in a JAX program:

* code that runs inside a garbage-collection callback, a finalizer or a thread: Python prints "Exception ignored
  in ..." and carries on (JAX's ``_xla_gc_callback`` runs at every collection; Orbax restores in threads), so
  the run finishes and writes its result as if nothing had happened;
* Python code called from native code that cannot pass an exception on (jaxlib's MLIR start-up, run while JAX is
  first imported): the process aborts (SIGABRT) instead;
* long native calls (XLA compilation, a computation): no Python code runs until they return.

So the command line installs :func:`install` at start: each Ctrl-C is *recorded* and raised as
``KeyboardInterrupt`` (except inside :func:`deferred` sections, where it is only recorded and raised when the
section ends). :func:`raise_if_interrupted` raises if one was recorded: it is called where a run makes progress
(each chunk) and by the atomic writer right before a result is renamed into place, so a swallowed interrupt
still stops the run before anything is written. Without :func:`install` (the library used from Python) nothing
is ever recorded and these calls do nothing.
"""

from __future__ import annotations

import contextlib
import gc
import signal
import threading
from collections.abc import Iterator

_interrupted = False
_deferring = 0
_original = None  # the handler the first install replaced


_collecting = False  # a garbage collection (and its callbacks, JAX's among them) is running


def _gc_started(phase, info):
    global _collecting
    if phase == "start":
        _collecting = True


def _gc_stopped(phase, info):
    global _collecting
    if phase == "stop":
        _collecting = False


def _handler(signum, frame):
    global _interrupted
    _interrupted = True
    # Raised inside a gc callback (JAX's ``_xla_gc_callback``), the interrupt would be printed as "Exception
    # ignored in ..." and lost: it is only recorded then, and raised by the next ``raise_if_interrupted``.
    if not _deferring and not _collecting and not _in_gc_callback(frame):
        raise KeyboardInterrupt


def _in_gc_callback(frame) -> bool:
    """Whether ``frame`` runs inside one of the garbage collector's callbacks (registered after the flag's own)."""
    codes = {getattr(callback, "__code__", None) for callback in gc.callbacks}
    while frame is not None:
        if frame.f_code in codes:
            return True
        frame = frame.f_back
    return False


def install(deferring: bool = False, early=(), replaces=None):
    """Makes Ctrl-C recorded and raised (see the module docstring) and returns the handler it replaced (give it to
    :func:`uninstall`). With ``deferring``, interrupts are only recorded until it is installed again. Installed
    again (a command started by a program that installed it at start-up), it keeps what was recorded; otherwise
    nothing is recorded yet, unless ``early`` (what a provisional handler collected) is non-empty. ``replaces``
    names the handler to give back instead of the one replaced. Outside the main thread (where no signal handler
    can be set) it does nothing and returns ``None``."""
    global _interrupted, _deferring, _original
    if threading.current_thread() is not threading.main_thread():
        return None
    if _gc_started not in gc.callbacks:  # the flag is up before any other callback runs, down after all of them
        gc.callbacks.insert(0, _gc_started)
        gc.callbacks.append(_gc_stopped)
    previous = signal.signal(signal.SIGINT, _handler)
    if previous is _handler:
        previous = _original
    else:
        previous = replaces if replaces is not None else previous
        _original, _interrupted = previous, False
    if early:
        _interrupted = True
    _deferring = 1 if deferring else 0
    return previous


def uninstall(previous) -> None:
    """Puts back the handler :func:`install` replaced; what was recorded is forgotten."""
    global _interrupted, _deferring, _original
    if previous is None or threading.current_thread() is not threading.main_thread():
        return
    signal.signal(signal.SIGINT, previous)
    _interrupted, _deferring, _original = False, 0, None


def interrupted() -> bool:
    """Whether Ctrl-C was pressed since :func:`install`, raised or not."""
    return _interrupted


def raise_if_interrupted() -> None:
    """Raises ``KeyboardInterrupt`` if Ctrl-C was pressed since :func:`install`, even if the exception raised
    then was swallowed; does nothing otherwise (and always, without :func:`install`)."""
    if _interrupted:
        raise KeyboardInterrupt


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Within the block Ctrl-C is recorded, not raised; it is raised when the block ends. For code that must not
    be interrupted half-way: Python called from native code that aborts the process on an exception (JAX's
    first import), and the error path that reports an interrupt."""
    global _deferring
    _deferring += 1
    try:
        yield
    finally:
        _deferring -= 1
    if not _deferring:
        raise_if_interrupted()


def quiet() -> None:
    """From now on Ctrl-C is only recorded (until :func:`uninstall`): for the exit path after an interrupt."""
    global _deferring
    _deferring += 1
