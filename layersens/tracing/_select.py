"""Which upstream leaves to differentiate: ``wrt=`` as glob patterns, a predicate, or an NNX filter.

Patterns match leaf paths (``generator/Dense_0/kernel``) with shell globs, ``*`` matching across ``/``; a
pattern starting with ``!`` excludes. With only exclusions, everything else is kept. A callable is called as
``predicate(path_tuple, value)``; NNX path filters (``nnx.PathContains('generator')``) are turned into one.
"""

from __future__ import annotations

import fnmatch

from .._errors import SelectionError


def _predicate(wrt):
    if callable(wrt):
        return wrt
    try:  # an NNX filter that is not a plain callable (a string is a glob here, never an NNX filter)
        from flax import nnx

        return nnx.filterlib.to_predicate(wrt)
    except Exception:
        raise SelectionError(f"wrt is {wrt!r}; give glob patterns (e.g. 'generator/*'), a predicate "
                        "(path, value) -> bool, or an NNX filter.") from None


def select(names, values: dict, wrt, upstream_list) -> tuple[str, ...]:
    """The names among ``names`` (upstream leaves, in order) that ``wrt`` selects; a clear error if none."""
    if isinstance(wrt, str) or (isinstance(wrt, (list, tuple)) and all(isinstance(p, str) for p in wrt)):
        patterns = [wrt] if isinstance(wrt, str) else list(wrt)
        if not patterns:
            raise SelectionError("wrt is empty; give at least one pattern, e.g. 'generator/*'.")
        include = [p for p in patterns if not p.startswith("!")]
        exclude = [p[1:] for p in patterns if p.startswith("!")]
        chosen = tuple(n for n in names
                       if (not include or any(fnmatch.fnmatchcase(n, p) for p in include))
                       and not any(fnmatch.fnmatchcase(n, p) for p in exclude))
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
