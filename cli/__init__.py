"""The ``layersens`` command line (installed as the package ``layersens_cli``).

Started as the program (the ``layersens`` script, ``python -m layersens``), it records Ctrl-C from its first
import on, so an interrupt while the command line itself is still being imported ends it cleanly (exit code 130)
once it starts, instead of with a traceback; see ``layersens._interrupt``. Imported by other code, it changes
nothing until a command runs.
"""

import importlib
import os
import signal
import sys


def _started_as_program() -> bool:
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if getattr(spec, "name", None) in ("layersens.__main__", "layersens_cli.__main__"):
        return True
    return os.path.basename(sys.argv[0] if sys.argv else "") == "layersens"


STARTED_AS_PROGRAM = _started_as_program()

if STARTED_AS_PROGRAM:
    _early: list = []
    _default = signal.signal(signal.SIGINT, lambda signum, frame: _early.append(signum))  # until the next one is in

    importlib.import_module("layersens._interrupt").install(deferring=True, early=_early, replaces=_default)
    del _early, _default
