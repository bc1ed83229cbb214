"""What to differentiate with respect to: the :class:`Wrt` selector going in, the :class:`Differentiated`
value coming out of a split.

``wrt=`` selects upstream parameter leaves as glob patterns, a predicate, or an NNX filter, or names the input
(``"input"``); ``wrt_layer=`` an earlier layer. :func:`as_wrt` reads either form once, at the edge.

Patterns match leaf paths (``generator/Dense_0/kernel``) with shell globs, ``*`` matching across ``/``; a
pattern starting with ``!`` excludes. With only exclusions, everything else is kept. A callable is called as
``predicate(path_tuple, value)``; NNX path filters (``nnx.PathContains('generator')``) are turned into one.
"""

from __future__ import annotations

import dataclasses
import enum
import fnmatch
from typing import Any

from .._errors import SelectionError

INPUT = "input"


class WrtKind(enum.Enum):
    """What the Jacobian's columns are."""

    PARAMETERS = "parameters"  # upstream parameter leaves
    INPUT = "input"  # each example's own input
    LAYER = "layer"  # an earlier layer's activation


@dataclasses.dataclass(frozen=True)
class Wrt:
    """A selector of what to differentiate: ``Wrt.parameters(select)``, ``Wrt.input()`` or ``Wrt.layer(name)``.

    ``select`` (parameters only) is ``None`` for every upstream leaf, a tuple of glob patterns, a predicate
    ``(path_tuple, value) -> bool`` or an NNX filter. ``str(wrt)`` is the record kept with results:
    ``"parameters"``, ``"input"`` or ``"layer:<name>"``.
    """

    kind: WrtKind
    select: Any = None
    layer: str | None = None

    @classmethod
    def parameters(cls, select=None) -> Wrt:
        if isinstance(select, list):
            select = tuple(select)
        return cls(WrtKind.PARAMETERS, select)

    @classmethod
    def input(cls) -> Wrt:
        return cls(WrtKind.INPUT)

    @classmethod
    def at_layer(cls, name: str) -> Wrt:
        return cls(WrtKind.LAYER, layer=name)

    def __str__(self) -> str:
        return f"layer:{self.layer}" if self.kind is WrtKind.LAYER else self.kind.value


def as_wrt(wrt=None, wrt_layer: str | None = None) -> Wrt:
    """The selector for ``split(..., wrt=, wrt_layer=)``: a :class:`Wrt` as given, ``"input"``, ``wrt_layer``, or
    parameter leaves selected by ``wrt`` (``None``: every upstream leaf)."""
    if wrt_layer is not None and wrt is not None:
        raise SelectionError("give either wrt (parameters or 'input') or wrt_layer, not both.")
    if wrt_layer is not None:
        return Wrt.at_layer(wrt_layer)
    if isinstance(wrt, Wrt):
        return wrt
    if isinstance(wrt, str) and wrt == INPUT:
        return Wrt.input()
    return Wrt.parameters(wrt)


@dataclasses.dataclass(frozen=True)
class Differentiated:
    """What a split differentiates: the columns of its Jacobian.

    Attributes:
      kind: parameters, the input, or an earlier layer.
      names, shapes: the differentiated leaves (one ``"input"`` or layer leaf for those kinds), in column order.
      frozen: upstream parameter leaves held constant (not selected, or every one for input and layer kinds).
      excluded: parameter leaves that do not reach the layer.
    """

    kind: WrtKind
    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    frozen: tuple[str, ...]
    excluded: tuple[str, ...]

    @property
    def size(self) -> int:
        total = 0
        for shape in self.shapes:
            count = 1
            for d in shape:
                count *= d
            total += count
        return total


def _predicate(wrt):
    if callable(wrt):
        return wrt
    try:  # an NNX filter that is not a plain callable (a string is a glob here, never an NNX filter)
        from flax import nnx

        return nnx.filterlib.to_predicate(wrt)
    except Exception:
        raise SelectionError(
            f"wrt is {wrt!r}; give glob patterns (e.g. 'generator/*'), a predicate "
            "(path, value) -> bool, or an NNX filter."
        ) from None


def select(names, values: dict, wrt, upstream_list) -> tuple[str, ...]:
    """The names among ``names`` (upstream leaves, in order) that ``wrt`` selects; a clear error if none."""
    if isinstance(wrt, str) or (isinstance(wrt, (list, tuple)) and all(isinstance(p, str) for p in wrt)):
        patterns = [wrt] if isinstance(wrt, str) else list(wrt)
        if not patterns:
            raise SelectionError("wrt is empty; give at least one pattern, e.g. 'generator/*'.")
        include = [p for p in patterns if not p.startswith("!")]
        exclude = [p[1:] for p in patterns if p.startswith("!")]
        chosen = tuple(
            n
            for n in names
            if (not include or any(fnmatch.fnmatchcase(n, p) for p in include))
            and not any(fnmatch.fnmatchcase(n, p) for p in exclude)
        )
        described = " ".join(patterns)
    else:
        predicate = _predicate(wrt)
        chosen = tuple(n for n in names if predicate(tuple(n.split("/")), values[n]))
        described = repr(wrt)
    if not chosen:
        raise SelectionError(
            f"wrt {described} selects none of the leaves upstream of the layer; they are: {', '.join(upstream_list)}."
            " Patterns are shell globs over these paths ('*' matches across '/'; '!' excludes)."
        )
    return chosen
