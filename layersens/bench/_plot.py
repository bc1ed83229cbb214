"""The benchmark plot: log-scale bars of steady-state time per method, annotated with the speedup over the
jitted scalar loop (matplotlib's object API with its Agg canvas: no display, and the global backend left as the user set it)."""

from __future__ import annotations

import io

from ._report import _x


def report_plot(report) -> bytes:
    """Log-scale bars of steady-state time per method, one group per layer, one panel per example count."""
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.transforms import blended_transform_factory

    counts = sorted({c.num_examples for c in report.cases})
    layers = list(dict.fromkeys(c.layer for c in report.cases))
    methods = report.settings.methods
    colors = colormaps["tab10" if len(methods) <= 10 else "tab20"]
    width = 0.8 / len(methods)
    fig = Figure(figsize=(max(6.0, 0.32 * len(methods) * len(layers) + 1.5) * len(counts), 5.5))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(counts), squeeze=False)
    for ax, count in zip(axes[0], counts):
        below = blended_transform_factory(ax.transData, ax.transAxes)
        for i, layer in enumerate(layers):
            case = next((c for c in report.cases if c.layer == layer and c.num_examples == count), None)
            for j, name in enumerate(methods):
                x = i + (j - (len(methods) - 1) / 2) * width
                m = case.method(name) if case else None
                if m is None or not m.ok:
                    ax.text(x, 0.02, m.status if m else "n/a", transform=below, rotation=90, fontsize=6,
                            ha="center", va="bottom", color="grey")
                    continue
                ax.bar(x, m.steady_seconds, width, color=colors(j), hatch="//" if m.extrapolated else None,
                       label=name if i == 0 else None, edgecolor="white" if not m.extrapolated else "black")
                if m.speedup_vs_loop is not None:
                    ax.annotate(_x(m.speedup_vs_loop), (x, m.steady_seconds), textcoords="offset points",
                                xytext=(0, 2), rotation=90, fontsize=6, ha="center", va="bottom")
        ax.set_yscale("log")
        ax.margins(y=0.25)
        ax.set_xticks(range(len(layers)), layers)
        ax.set_title(f"{count} example(s)")
        ax.set_ylabel("steady-state seconds (log scale)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 5) or 1, fontsize=8, frameon=False)
    fig.suptitle(f"{report.model_name}: Jacobian time per method (label: speedup vs loop-jit; hatched: extrapolated)",
                 fontsize=10)
    fig.tight_layout(rect=(0, 0.1, 1, 0.95))
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=130)
    return buffer.getvalue()
