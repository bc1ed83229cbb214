"""Releases of JAX known to compute wrong values in ways layersens would pass on as results.

jax/jaxlib 0.10.2 miscompiles vmapped products followed by a reduction on CPU (jax-ml/jax#39103; 0.10.1 is
right): ``jax.jit(jax.vmap(jax.jacfwd(f), in_axes=(None, 0)))`` of ``f(p, x) = (x + p) * mean((x + p)**2)``
returns wrong Jacobians for every example after the first, in float32, silently. layersens computes the
examples of a small layer side by side in exactly such programs. The project's requirements exclude these
releases; an environment that has one anyway is warned at import (reading installed metadata only: JAX is not
imported), and ``tests/test_jax_release.py`` checks the installed release on that very program.
"""

from __future__ import annotations

import importlib.metadata
import warnings

BROKEN = {"0.10.2": "jax-ml/jax#39103: vmapped products followed by a reduction are miscompiled on CPU"}


def broken_release(version: str | None) -> str | None:
    """Why ``version`` of jax or jaxlib gives wrong results, or ``None``."""
    return BROKEN.get(version or "")


def warn_if_broken() -> None:
    for package in ("jaxlib", "jax"):
        try:
            version = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            continue
        reason = broken_release(version)
        if reason is not None:
            warnings.warn(
                f"{package} {version} is installed; it computes wrong values ({reason}), and Jacobians of several "
                "examples can be silently wrong. Install another release: pip install 'jax!=0.10.2' "
                "'jaxlib!=0.10.2' (0.10.1 is right).",
                RuntimeWarning,
                stacklevel=3,
            )
            return
