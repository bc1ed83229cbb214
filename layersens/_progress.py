"""How long work reports itself. A ``progress`` argument is a callable ``progress(done, total)``, called as chunks of
a computation complete (on the host, not when dispatched); it may also have

- ``stage(text, examples=None)``: a step begins (loading, tracing, compiling, computing ``examples`` examples,
  writing), so that a display can show what runs while nothing is counted;
- ``wrote(nbytes)``: ``nbytes`` more bytes of a result have been written.

Plain functions get the counts only; the command line's displays implement all three.
"""

from __future__ import annotations

from typing import IO, Any

from ._interrupt import raise_if_interrupted


def announce(progress, text: str, examples: int | None = None) -> None:
    """Tells ``progress`` (if it listens) that the step ``text`` begins."""
    raise_if_interrupted()
    stage = getattr(progress, "stage", None)
    if stage is not None:
        stage(text, examples)


def written(progress):
    """A ``written(nbytes)`` callback for ``progress`` (``None`` if it does not count bytes)."""
    return getattr(progress, "wrote", None)


class CountingFile:
    """A file object that tells ``wrote(nbytes)`` of each write (what ``np.savez`` writes through)."""

    def __init__(self, f: IO[bytes], wrote):
        self._f = f
        self._wrote = wrote

    def write(self, data) -> int:
        n = self._f.write(data)
        self._wrote(len(memoryview(data).cast("B")) if n is None else n)
        return n if n is not None else 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)
