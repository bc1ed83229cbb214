"""Resolving ``package.module:Name`` paths named by a model spec, safely.

A spec names code: the module class (or a factory) that rebuilds the model, and classes, configs and functions
passed to its constructor. Importing code runs it, so:

* library code (``flax``, ``jax``, ``numpy``) and the examples shipped with layersens import freely;
* anything else is imported only when the user allows it (``--allow-import`` / ``allow_import=True``), and each
  such import is announced;
* nothing is resolved from layersens itself (outside its examples) or from Python's standard library, so a
  spec can never make layersens call one of its own functions (say, to load another spec) or ``os.system``;
* with imports allowed, the model directory, its parent and the working directory are searched, so a
  ``mymodels.py`` beside the checkpoint is found without setting ``PYTHONPATH``.

What a resolved object may be used for is checked by the caller (``_values``): only Flax module classes and
declared factories are ever called.
"""

from __future__ import annotations

import contextlib
import importlib
import re
import sys
from pathlib import Path
from typing import Callable

from .._errors import SpecError, UntrustedModuleError

LIBRARY_ROOTS = ("flax", "jax", "jaxlib", "numpy", "ml_dtypes")
SHIPPED = "layersens.examples"
_PATH = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*$")


def parse_path(path, what: str) -> tuple[str, str]:
    if not isinstance(path, str) or not _PATH.match(path):
        raise SpecError(f"{what} is {path!r}; write it as 'package.module:Name'.")
    module, _, attribute = path.partition(":")
    return module, attribute


def _under(module: str, root: str) -> bool:
    return module == root or module.startswith(root + ".")


def is_library(module: str) -> bool:
    return any(_under(module, root) for root in LIBRARY_ROOTS)


class Resolver:
    """Imports what a spec names, under the rules above.

    Args:
      allow_import: whether modules other than library code and shipped examples may be imported.
      search: folders added to ``sys.path`` while importing user modules (the model directory, its parent, the
        working directory).
      announce: called with a sentence for each user module imported (the CLI prints it).
    """

    def __init__(self, allow_import: bool = False, search=(), announce: Callable[[str], None] | None = None):
        self.allow_import = allow_import
        self.search = [str(Path(p).absolute()) for p in search]
        self.announce = announce
        self.imported: list[str] = []

    def resolve(self, path: str, what: str):
        module_name, attribute = parse_path(path, what)
        top = module_name.split(".")[0]
        if _under(module_name, "layersens") and not _under(module_name, SHIPPED):
            raise UntrustedModuleError(
                f"{what} names {path!r}, a part of layersens itself; a model spec may only name the model's own "
                "code (its Flax module class, a factory, configs) and Flax, JAX or NumPy objects."
            )
        if top in sys.stdlib_module_names or top == "builtins":
            raise UntrustedModuleError(
                f"{what} names {path!r} from Python's standard library; a model spec may only name the model's "
                "own code and Flax, JAX or NumPy objects."
            )
        trusted = is_library(module_name) or _under(module_name, SHIPPED)
        if not trusted and not self.allow_import:
            raise UntrustedModuleError(
                f"the model spec names {what} {path!r}; importing module {module_name!r} runs its code. Pass "
                "--allow-import on the command line (allow_import=True in the API) if you trust it."
            )
        if not trusted and module_name not in self.imported:
            self.imported.append(module_name)
            if self.announce is not None:
                self.announce(
                    f"importing {module_name} for {what} {path} (this runs its code; allowed by --allow-import)"
                )
        try:
            with self._search_path(not trusted):
                obj = importlib.import_module(module_name)
        except ImportError as e:
            where = ", ".join(self.search) or "sys.path"
            raise SpecError(
                f"cannot import {module_name!r} named by {what} {path!r} ({e}); searched {where}. Install it, or put "
                "it beside the model directory or in the working directory."
            ) from None
        for part in attribute.split("."):
            try:
                obj = getattr(obj, part)
            except AttributeError:
                raise SpecError(f"module {module_name!r} has no attribute {attribute!r} (named by {what}).") from None
        return obj

    @contextlib.contextmanager
    def _search_path(self, extend: bool):
        added = [p for p in self.search if p not in sys.path] if extend else []
        sys.path[:0] = added
        try:
            yield
        finally:
            for p in added:
                if p in sys.path:
                    sys.path.remove(p)
