"""What every figure shares: matplotlib's object API on an Agg canvas (no display, pyplot's global state and the
user's backend untouched), imported on first use, and PNG bytes with nothing cut at the edges."""

from __future__ import annotations

import io
from pathlib import Path

from .._errors import LayersensError

DPI = 120
TITLE = 11
LABEL = 9
SMALL = 7


def matplotlib_needed() -> None:
    """Raises a one-line error saying how to install matplotlib when it is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise LayersensError("figures and reports need matplotlib: pip install 'layersens[report]'.") from None


def figure(width: float, height: float):
    """A ``Figure`` of ``width`` × ``height`` inches on its own Agg canvas, laid out by matplotlib's constrained
    layout (labels, titles and colour bars kept inside)."""
    matplotlib_needed()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def png(fig) -> bytes:
    """The figure as PNG bytes; "tight" grows the image to whatever the layout missed, so no label is cut."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight", pad_inches=0.15)
    return buffer.getvalue()


# Norms in matplotlib's mathtext (``‖J‖²_F`` typed out would show its underscore).
FRO = r"$\|J\|_F$"
FRO2 = r"$\|J\|_F^2$"
UNIT = r"$\|\partial h_i/\partial\theta\|$"


def save_png(fig, path) -> Path:
    """Writes ``fig`` as a PNG to ``path`` through layersens's one atomic writer; returns the path written."""
    from .._atomic import write_bytes

    return write_bytes(path, png(fig))


def percent_axis(axis) -> None:
    """Tick labels such as ``12 %`` or ``0.04 %`` on ``axis`` (``ax.xaxis`` or ``ax.yaxis``) of values given as
    fractions."""
    from matplotlib.ticker import FuncFormatter

    axis.set_major_formatter(FuncFormatter(lambda value, _: f"{100 * value:.3g} %"))


def integer_axis(axis) -> None:
    """Only whole numbers as ticks (channel and unit indices)."""
    from matplotlib.ticker import MaxNLocator

    axis.set_major_locator(MaxNLocator(integer=True))


def value_scale(ax, values) -> None:
    """A log y scale when ``values`` span more than a factor of 20 (a linear one otherwise), with plain tick labels
    (``150``, not ``1.5 × 10²``)."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    values = [float(v) for v in values if v > 0]
    if values and max(values) / min(values) > 20:
        ax.set_yscale("log")
        ax.yaxis.set_minor_formatter(NullFormatter())
    ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:.4g}"))


def examples_note(count: int) -> str:
    return f"{count} example{'s' if count != 1 else ''}"


def colours(count: int):
    """``count`` distinct colours (tab10, tab20 beyond ten)."""
    from matplotlib import colormaps

    cmap = colormaps["tab10" if count <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(count)]
