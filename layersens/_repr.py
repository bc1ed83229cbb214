"""Short reprs for the public objects: what an object is (layer, shapes, dtype, leaves, size), never its
arrays, in at most ``MAX_REPR`` characters; and an HTML table of the same for notebooks.

A class lists its summary as ``(label, value)`` pairs in ``_summary()``; :class:`Summarized` turns them into
``__repr__`` and ``_repr_html_``. Dataclasses using it are declared with ``repr=False`` (a generated repr would
print every array).
"""

from __future__ import annotations

import html

import numpy as np

MAX_REPR = 1000
_MAX_VALUE = 160
_MAX_ITEMS = 4


def short(value) -> str:
    """A value as a few characters: arrays by shape and dtype, long sequences by their first items and count."""
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        return f"{np.dtype(value.dtype).name}{list(np.shape(value))}"
    if isinstance(value, dict):
        value = tuple(value)
    if isinstance(value, (tuple, list)) and len(value) > _MAX_ITEMS:
        shown = ", ".join(short(v) for v in value[: _MAX_ITEMS - 1])
        return f"({shown}, … {len(value) - _MAX_ITEMS + 1} more)"
    if isinstance(value, (tuple, list)):
        return "(" + ", ".join(short(v) for v in value) + ("," if len(value) == 1 else "") + ")"
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= _MAX_VALUE else text[: _MAX_VALUE - 1] + "…"


class Summarized:
    """Mixin: ``__repr__`` and ``_repr_html_`` from ``_summary()``."""

    def _summary(self) -> list[tuple[str, object]]:
        raise NotImplementedError

    def __repr__(self) -> str:
        text = f"{type(self).__name__}(" + ", ".join(f"{k}={short(v)}" for k, v in self._summary()) + ")"
        return text if len(text) <= MAX_REPR else text[: MAX_REPR - 2] + "…)"

    def _repr_html_(self) -> str:
        rows = "".join(
            f"<tr><th style='text-align:left'>{html.escape(k)}</th>"
            f"<td style='text-align:left'>{html.escape(short(v))}</td></tr>"
            for k, v in self._summary()
        )
        return f"<table><caption style='text-align:left'><b>{type(self).__name__}</b></caption>{rows}</table>"
