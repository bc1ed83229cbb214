"""Figures of a ``LayerSummary`` and a ``SensitivityProfile`` (duck-typed): the top singular values per example,
where the top directions live, an overview, and the profile's quantities against depth."""

from __future__ import annotations

import numpy as np

from ._canvas import FRO, FRO2, LABEL, SMALL, TITLE, colours, examples_note, figure, percent_axis, value_scale
from ._sensitivity import draw_channel_shares, draw_leaf_shares, parameters_figure, units_figure

_SHOWN = 8  # examples drawn one by one; beyond, their spread


def draw_spectrum(ax, summary) -> None:
    """σ_1 … σ_k of each example on a log scale, the exact stable rank in the legend."""
    values = summary.singular_values
    k = values.shape[1]
    index = np.arange(1, k + 1)
    palette = colours(min(len(values), _SHOWN))
    for n, row in enumerate(values[:_SHOWN]):
        ax.plot(
            index,
            row,
            "o-",
            color=palette[n],
            markersize=4,
            linewidth=1.2,
            label=f"example {n} (stable rank {summary.stable_rank[n]:.3g})",
        )
    if len(values) > _SHOWN:
        ax.fill_between(
            index,
            values.min(axis=0),
            values.max(axis=0),
            color="grey",
            alpha=0.25,
            label=f"range over all {len(values)} examples",
        )
    value_scale(ax, values.ravel())
    ax.set_xticks(index)
    ax.set_xlabel("index i (1 = largest)", fontsize=LABEL)
    ax.set_ylabel(
        r"singular value $\sigma_i$ of J" + (" (log scale)" if ax.get_yscale() == "log" else ""), fontsize=LABEL
    )
    ax.set_title(f"top {k} singular values", fontsize=LABEL + 1)
    ax.legend(fontsize=SMALL, loc="upper right")
    ax.grid(True, which="both", alpha=0.3)


def draw_directions(ax, summary, example: int = 0) -> None:
    """Stacked bars: for each of the top singular directions of one example, the share of its right vector's
    mass in each parameter leaf."""
    shares = summary.spectrum.leaf_shares[example]  # (k, leaves)
    k, names = shares.shape[0], summary.sensitivity.param_names
    palette = colours(len(names))
    left = np.zeros(k)
    y = np.arange(1, k + 1)
    for j, name in enumerate(names):
        ax.barh(y, shares[:, j], left=left, color=palette[j], label=name, height=0.7)
        left += shares[:, j]
    ax.set_yticks(y, [rf"$\sigma_{{{i}}}$" for i in y], fontsize=LABEL)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    percent_axis(ax.xaxis)
    ax.set_xlabel(f"share of the right singular vector per leaf (%, example {example})", fontsize=LABEL)
    ax.set_title("where the top directions live", fontsize=LABEL + 1)
    ax.legend(fontsize=SMALL, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)


def spectrum_figure(summary):
    """The top singular values per example, and where example 0's top directions live among the leaves."""
    k = summary.singular_values.shape[1]
    fig = figure(12.0, max(4.2, 2.6 + 0.3 * k))
    left, right = fig.subplots(1, 2, width_ratios=[1.0, 1.15])
    draw_spectrum(left, summary)
    draw_directions(right, summary)
    m = int(np.prod(summary.activation_shape))
    p = int(sum(np.prod(s) for s in summary.sensitivity.param_shapes))
    fig.suptitle(
        f"{summary.model} / {summary.layer}: spectrum of J per example "
        f"({examples_note(summary.num_examples)}; J is {m:,} × {p:,})",
        fontsize=TITLE,
    )
    return fig


def overview_figure(summary):
    """Leaf shares, the spectrum (when computed) and the activation channels' shares, side by side."""
    sens = summary.sensitivity
    panels = 3 if summary.singular_values is not None else 2
    fig = figure(5.0 * panels, max(4.2, 1.6 + 0.3 * len(sens.param_names)))
    axes = fig.subplots(1, panels)
    draw_leaf_shares(axes[0], sens)
    if panels == 3:
        draw_spectrum(axes[1], summary)
    draw_channel_shares(axes[-1], sens)
    fig.suptitle(
        f"{summary.model} / {summary.layer}: sensitivity summary ({examples_note(summary.num_examples)})",
        fontsize=TITLE,
    )
    return fig


def summary_figure(summary, kind: str = "overview"):
    """One figure of a ``LayerSummary``: ``"overview"``, ``"parameters"``, ``"units"`` or ``"spectrum"``."""
    kinds = {
        "overview": overview_figure,
        "parameters": lambda s: parameters_figure(s.sensitivity),
        "units": lambda s: units_figure(s.sensitivity),
        "spectrum": spectrum_figure,
    }
    if kind not in kinds:
        raise ValueError(f"kind is {kind!r}; choose one of {', '.join(kinds)}.")
    if kind == "spectrum" and summary.singular_values is None:
        raise ValueError("this summary has no spectrum (k=0); choose another kind.")
    return kinds[kind](summary)


def sensitivity_figure(sens, kind: str = "parameters"):
    """One figure of a ``Sensitivity``: ``"parameters"`` or ``"units"``."""
    if kind not in ("parameters", "units"):
        raise ValueError(f"kind is {kind!r}; choose 'parameters' or 'units'.")
    return parameters_figure(sens) if kind == "parameters" else units_figure(sens)


def profile_figure(profile):
    """‖J‖_F, σ₁ and the stable rank of each layer against its depth: the mean over examples as a line, each
    example as a dot; log scales."""
    rows = profile.rows
    x = np.arange(len(rows))
    width = max(7.0, 0.75 * len(rows) + 3.0)
    fig = figure(width, 8.5)
    axes = fig.subplots(3, 1, sharex=True)
    series = [
        (f"Frobenius norm {FRO}", [r.frobenius for r in rows], "tab:blue"),
        ("top singular value " + r"$\sigma_1$", [r.sigma_1 for r in rows], "tab:orange"),
        (
            f"stable rank {FRO2}" + r"$/\sigma_1^2$" + "\n(number of directions)",
            [r.stable_rank for r in rows],
            "tab:green",
        ),
    ]
    for ax, (label, values, colour) in zip(axes, series):
        for xi, v in zip(x, values):
            ax.plot(
                np.full(len(v), xi),
                v,
                ".",
                color=colour,
                alpha=0.45,
                markersize=5,
                label="each example" if xi == 0 else None,
            )
        ax.plot(
            x,
            [float(np.mean(v)) for v in values],
            "o-",
            color=colour,
            linewidth=1.5,
            markersize=5,
            label="mean over examples",
        )
        value_scale(ax, np.concatenate(values) if values else [])
        ax.set_ylabel(label + ("\n(log scale)" if ax.get_yscale() == "log" else ""), fontsize=LABEL)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=SMALL, loc="best")
    axes[-1].set_xticks(
        x,
        [f"{r.layer}\n{r.num_params:,} params" for r in rows],
        rotation=45,
        ha="right",
        rotation_mode="anchor",
        fontsize=SMALL + 1,
    )
    axes[-1].set_xlabel("layer, in depth order (input → output)", fontsize=LABEL)
    skipped = ", ".join(name for name, _ in profile.skipped)
    skipped = f"; skipped (no upstream parameters): {skipped}" if skipped else ""
    fig.suptitle(
        f"{profile.model}: sensitivity of each layer to the parameters upstream of it "
        f"({examples_note(profile.num_examples)}){skipped}",
        fontsize=TITLE,
    )
    return fig
