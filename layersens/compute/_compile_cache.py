"""JAX's persistent compilation cache under a project cache directory, so that a second process computing the same
model and layer loads its programs instead of compiling them (a one-example ``extract`` spends more time compiling
than computing).

The command line turns it on for every command (``--no-compile-cache`` or ``LAYERSENS_COMPILE_CACHE=0`` turn it
off); in Python it is a choice: :func:`use_compile_cache`. The directory is ``$LAYERSENS_CACHE_DIR``, else
``$XDG_CACHE_HOME/layersens/xla``, else ``~/.cache/layersens/xla``. JAX keys each entry by the program, the compile
options, the backend and jaxlib's version, so a stale or foreign entry is never used for another program; the
directory can be deleted at any time.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax

_COUNTS = {"hits": 0, "misses": 0}
_LISTENING = False


def cache_directory() -> Path:
    """Where the compiled programs are kept (see the module docstring)."""
    if os.environ.get("LAYERSENS_CACHE_DIR"):
        return Path(os.environ["LAYERSENS_CACHE_DIR"]) / "xla"
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "layersens" / "xla"


def compile_cache_disabled() -> bool:
    """Whether ``LAYERSENS_COMPILE_CACHE`` says no (``0``, ``false``, ``no``, ``off``)."""
    return os.environ.get("LAYERSENS_COMPILE_CACHE", "").strip().lower() in ("0", "false", "no", "off")


def _listen(event: str, **kwargs) -> None:
    if event == "/jax/compilation_cache/cache_hits":
        _COUNTS["hits"] += 1
    elif event == "/jax/compilation_cache/cache_misses":
        _COUNTS["misses"] += 1


def use_compile_cache(directory=None) -> Path | None:
    """Keeps every compiled program in ``directory`` (default: :func:`cache_directory`) and loads it from there in
    later processes; returns the directory, or ``None`` when ``LAYERSENS_COMPILE_CACHE=0`` turns it off. Call it
    before the first computation. Cost: one file write per new program (kilobytes to megabytes); a hit costs a
    file read instead of a compilation."""
    global _LISTENING
    if compile_cache_disabled():
        return None
    path = Path(directory) if directory is not None else cache_directory()
    path.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    # every program, however small or quick to compile: layersens' programs compile in 0.05-2 s each
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    if not _LISTENING:
        jax.monitoring.register_event_listener(_listen)
        _LISTENING = True
    return path


def compile_cache_counts() -> tuple[int, int]:
    """(programs loaded from the cache, programs compiled and stored) in this process since
    :func:`use_compile_cache`."""
    return _COUNTS["hits"], _COUNTS["misses"]
