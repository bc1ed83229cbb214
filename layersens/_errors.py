"""Errors that tell the user what was wrong and how to fix it.

Every error raised on purpose by layersens derives from :class:`LayersensError`, so the command line can turn
them into one clean line on stderr and exit code 1, while genuine bugs still show a traceback.
"""

from __future__ import annotations

import difflib


class LayersensError(Exception):
    """Base class of every error layersens raises about its input."""


class UnknownLayerError(LayersensError, KeyError):
    def __init__(self, layer: str, available: list[str], what: str = "layer"):
        self.layer = layer
        self.available = list(available)
        close = difflib.get_close_matches(layer, self.available, n=1, cutoff=0.0)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        super().__init__(
            f"unknown {what} {layer!r}.{hint} Available layers: {', '.join(self.available)}. "
            "Run `layersens layers --model DIR` to see each with its shape."
        )

    def __str__(self) -> str:  # KeyError would otherwise quote the whole message
        return self.args[0]


class InputShapeError(LayersensError, ValueError):
    pass


class CheckpointError(LayersensError):
    pass


class SpecError(LayersensError, ValueError):
    """A model spec (``layersens.json``, ``--module``/``--kwargs``, ``save_model`` arguments) that cannot rebuild the
    model."""


class ModeError(LayersensError, ValueError):
    """An unknown strategy (``mode=``, ``--mode``) or chunk size."""


class BudgetError(LayersensError, ValueError):
    """A budget that cannot be read or met: memory (``max_memory=``, ``--max-memory``), or a benchmark's repeats and
    time budgets."""


class DeviceError(LayersensError, ValueError):
    """A device that is not available."""


class SelectionError(LayersensError, ValueError):
    """What to differentiate cannot be chosen as asked: ``wrt``/``wrt_layer`` selecting nothing, a layer no
    parameter reaches, complex values, a readout that is not a unit of the layer, float64 without 64-bit mode."""


class UntrustedModuleError(LayersensError):
    pass


class JacobianTooLargeError(LayersensError, MemoryError):
    pass


class OutputError(LayersensError):
    """An output path that cannot or must not be written."""


class InputValueError(LayersensError, ValueError):
    """Inputs or parameters whose values cannot give a meaningful Jacobian (NaN, Inf, complex)."""


class MemoryBudgetError(BudgetError, MemoryError):
    """The narrowest chunk needs more working memory than the budget the user gave."""


class TrainModeError(LayersensError):
    pass


class InputWarning(UserWarning):
    """Inputs were converted in a way the user should know about (integers to floats, float64 to float32)."""


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def format_clock(seconds: float) -> str:
    """``h:mm:ss``, as progress displays show an ETA."""
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
