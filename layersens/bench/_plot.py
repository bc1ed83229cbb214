"""The benchmark plot: log-scale bars of steady-state time per method, annotated with the speedup over the
jitted scalar loop (matplotlib's object API with its Agg canvas: no display, and the global backend left as the user
set it)."""

from __future__ import annotations

import io
import math

from . import _format as fmt

# Sizes in inches: the panels' height, and the legend's columns (a handle, then up to its longest label) and rows
# at its font size.
_PANEL_IN = 5.0
_DPI = 130
_LEGEND_FONT = 8
_LEGEND_HANDLE_IN = 0.55
_LEGEND_CHAR_IN = 0.068
_LEGEND_ROW_IN = 0.18


def report_plot(report) -> bytes:
    """The PNG of :func:`report_figure`."""
    buffer = io.BytesIO()
    # "tight" grows the image to whatever the layout still missed, so nothing is ever cut at its edges.
    report_figure(report).savefig(buffer, format="png", dpi=_DPI, bbox_inches="tight", pad_inches=0.15)
    return buffer.getvalue()


def report_figure(report):
    """Log-scale bars of steady-state time per method, one group per layer, one panel per example count, and a
    legend of every method below them (a matplotlib ``Figure`` on an Agg canvas)."""
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.transforms import blended_transform_factory

    counts = sorted({c.num_examples for c in report.cases})
    layers = list(dict.fromkeys(c.layer for c in report.cases))
    methods = report.settings.methods
    colors = colormaps["tab10" if len(methods) <= 10 else "tab20"]
    width = 0.8 / len(methods)
    fig_width = max(6.0, 0.32 * len(methods) * len(layers) + 1.5) * len(counts)
    # The legend goes below the panels, in as many columns as its longest label lets fit across the figure, and
    # the figure grows by its height: every label whole, whatever the number of methods and cases.
    column_in = _LEGEND_HANDLE_IN + _LEGEND_CHAR_IN * max(len(m) for m in methods)
    ncol = max(1, min(len(methods), int((fig_width - 0.4) // column_in)))
    legend_in = 0.15 + _LEGEND_ROW_IN * math.ceil(len(methods) / ncol)
    fig_height = _PANEL_IN + legend_in
    fig = Figure(figsize=(fig_width, fig_height))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(counts), squeeze=False)
    legend = {}  # method -> its first bar, whichever case that is in
    for ax, count in zip(axes[0], counts):
        below = blended_transform_factory(ax.transData, ax.transAxes)
        for i, layer in enumerate(layers):
            case = next((c for c in report.cases if c.layer == layer and c.num_examples == count), None)
            for j, name in enumerate(methods):
                x = i + (j - (len(methods) - 1) / 2) * width
                m = case.method(name) if case else None
                if m is None or not m.ok:
                    ax.text(
                        x,
                        0.02,
                        m.status if m else "n/a",
                        transform=below,
                        rotation=90,
                        fontsize=6,
                        ha="center",
                        va="bottom",
                        color="grey",
                    )
                    continue
                bars = ax.bar(
                    x,
                    m.steady_seconds,
                    width,
                    color=colors(j),
                    hatch="//" if m.extrapolated else None,
                    edgecolor="white" if not m.extrapolated else "black",
                )
                legend.setdefault(name, bars)
                if m.speedup_vs_loop is not None:
                    ax.annotate(
                        fmt.speedup(m.speedup_vs_loop),
                        (x, m.steady_seconds),
                        textcoords="offset points",
                        xytext=(0, 2),
                        rotation=90,
                        fontsize=6,
                        ha="center",
                        va="bottom",
                    )
        ax.set_yscale("log")
        ax.margins(y=0.25)
        ax.set_xticks(range(len(layers)), layers)
        ax.set_title(f"{count} example(s)")
        ax.set_ylabel("steady-state seconds (log scale)")
    labels = [name for name in methods if name in legend]
    fig.legend(
        [legend[name] for name in labels], labels, loc="lower center", ncol=ncol, fontsize=_LEGEND_FONT, frameon=False
    )
    fig.suptitle(
        f"{report.model_name}: Jacobian time per method\n(bar label: speedup vs loop-jit; hatched: extrapolated)",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, legend_in / fig_height, 1, 1 - 0.45 / fig_height))
    return fig
