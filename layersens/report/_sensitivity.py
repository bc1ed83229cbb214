"""Figures of a ``Sensitivity`` (duck-typed: this package imports no result class): each parameter leaf's share of
‖J‖²_F and its output channels', and each unit's ‖∂h_i/∂θ‖ averaged over the examples."""

from __future__ import annotations

import math

import numpy as np

from ._canvas import FRO, FRO2, LABEL, SMALL, TITLE, UNIT, examples_note, figure, integer_axis, percent_axis

_COLS = 4  # channel panels per row
_UNIT_COLS = 8  # activation-channel images per row
_MANY = 48  # indices drawn as bars; more as a staircase


def _shares(sens) -> tuple[list[str], np.ndarray]:
    totals = sens.leaf_totals()
    whole = sum(totals.values()) or 1.0
    return list(sens.param_names), np.array([totals[n] / whole for n in sens.param_names])


def draw_leaf_shares(ax, sens) -> None:
    """Horizontal bars: each leaf's share of Σ_n ‖J_n‖²_F, labelled with its value."""
    names, shares = _shares(sens)
    shapes = dict(zip(sens.param_names, sens.param_shapes))
    y = np.arange(len(names))
    ax.barh(y, shares, color="tab:blue")
    ax.set_yticks(y, [f"{n} {tuple(shapes[n])}" for n in names], fontsize=SMALL + 1)
    ax.invert_yaxis()  # the first leaf on top, as listed
    for yi, share in zip(y, shares):
        ax.annotate(
            f"{100 * share:.3g}%", (share, yi), xytext=(3, 0), textcoords="offset points", va="center", fontsize=SMALL
        )
    ax.set_xlim(0, max(float(shares.max(initial=0)) * 1.18, 0.05))
    percent_axis(ax.xaxis)
    ax.set_xlabel(f"share of {FRO2} (%, summed over the examples)", fontsize=LABEL)
    ax.set_title("per parameter leaf", fontsize=LABEL + 1)


def _bars(ax, values, colour) -> None:
    """One bar per index; beyond ``_MANY`` indices, one filled staircase (thin bars alias into stripes)."""
    if len(values) > _MANY:
        ax.stairs(values, np.arange(len(values) + 1) - 0.5, fill=True, color=colour)
    else:
        ax.bar(np.arange(len(values)), values, width=0.85, color=colour)
    ax.set_ylim(0, float(np.max(values, initial=0)) * 1.1 or 1.0)


def _channel_leaves(sens) -> list[str]:
    return [n for n, s in zip(sens.param_names, sens.param_shapes) if len(s) >= 1 and s[-1] > 1]


def parameters_figure(sens):
    """The leaf shares on top; below, one small panel per leaf with channels (its last axis: in Flax's layout a
    conv or dense kernel's output channel, a bias, a normalization scale): each index's share of ‖J‖²_F."""
    leaves = _channel_leaves(sens)
    rows = math.ceil(len(leaves) / _COLS)
    cols = min(_COLS, max(1, len(leaves)))
    top = 0.9 + 0.28 * len(sens.param_names)
    fig = figure(3.2 * cols + 1.5, top + 2.3 * rows + 0.6)
    grid = fig.add_gridspec(1 + rows, cols, height_ratios=[top] + [2.3] * rows)
    draw_leaf_shares(fig.add_subplot(grid[0, :]), sens)
    whole = float(np.sum(np.square(sens.frobenius))) or 1.0
    totals = sens.leaf_totals()
    for i, name in enumerate(leaves):
        ax = fig.add_subplot(grid[1 + i // cols, i % cols])
        per = sens.per_channel(name).sum(axis=0) / whole
        _bars(ax, per, "tab:orange")
        ax.set_title(f"{name}: {100 * totals[name] / whole:.3g}% in all", fontsize=SMALL + 1)
        ax.set_xlabel("index on the leaf's last axis", fontsize=SMALL + 1)
        if i % cols == 0:
            ax.set_ylabel(f"share of {FRO2} (%)", fontsize=SMALL + 1)
        percent_axis(ax.yaxis)
        integer_axis(ax.xaxis)
        ax.tick_params(labelsize=SMALL)
        ax.set_xlim(-0.7, len(per) - 0.3)
    norms = ", ".join(f"{v:.4g}" for v in sens.frobenius[:4]) + (" …" if sens.num_examples > 4 else "")
    fig.suptitle(
        f"{sens.model} / {sens.layer}: which parameters move the layer ({examples_note(sens.num_examples)}; "
        f"{FRO} = {norms})\nbelow: one panel per leaf with channels, each index of its last axis",
        fontsize=TITLE,
    )
    return fig


def draw_channel_shares(ax, sens) -> None:
    """Bars: each channel of the activation (its last axis) as a share of ‖J‖²_F (rows of J summed)."""
    whole = float(np.sum(np.square(sens.frobenius))) or 1.0
    per = sens.unit_channels().sum(axis=0) / whole
    _bars(ax, per, "tab:green")
    percent_axis(ax.yaxis)
    integer_axis(ax.xaxis)
    ax.set_xlabel(f"channel of {sens.layer} (last axis)", fontsize=LABEL)
    ax.set_ylabel(f"share of {FRO2} (%)", fontsize=LABEL)
    ax.set_title("per activation channel", fontsize=LABEL + 1)
    ax.set_xlim(-0.7, len(per) - 0.3)


def units_figure(sens):
    """‖∂h_i/∂θ‖ averaged over the examples: one image per channel of an (H, W, C) activation on one colour scale,
    a heat map of a 2-axis one, bars (a line for many units) over the units of a vector."""
    mean = sens.unit.mean(axis=0)
    shape = tuple(sens.activation_shape)
    label = f"{UNIT}, mean over {examples_note(sens.num_examples)}"
    title = f"{sens.model} / {sens.layer} {shape}: how strongly each unit moves with all upstream parameters"
    if len(shape) == 3:
        height, width, channels = shape
        cols = min(_UNIT_COLS, channels)
        rows = math.ceil(channels / cols)
        panel = 1.35
        fig = figure(max(5.5, panel * cols * max(0.6, width / max(height, width)) + 1.6), max(3.4, panel * rows + 1.0))
        axes = fig.subplots(rows, cols, squeeze=False)
        top = float(mean.max(initial=0)) or 1.0
        image = None
        for c, ax in enumerate(axes.flat):
            if c >= channels:
                ax.set_axis_off()
                continue
            image = ax.imshow(mean[:, :, c], vmin=0, vmax=top, cmap="viridis", interpolation="nearest")
            ax.set_title(f"channel {c}", fontsize=SMALL + 1, pad=2)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[-1, 0].set_xlabel(f"width ({width})", fontsize=SMALL + 1)
        axes[-1, 0].set_ylabel(f"height ({height})", fontsize=SMALL + 1)
        bar = fig.colorbar(image, ax=axes, shrink=0.9, aspect=30)
        bar.set_label(label, fontsize=LABEL)
        fig.suptitle(
            title + "\n(one panel per channel; rows: height, columns: width; one colour scale)", fontsize=TITLE
        )
        return fig
    if len(shape) == 2:
        fig = figure(7.5, 5.0)
        ax = fig.add_subplot()
        image = ax.imshow(mean, aspect="auto", cmap="viridis", interpolation="nearest", vmin=0)
        ax.set_xlabel(f"axis 1 index (of {shape[1]})", fontsize=LABEL)
        ax.set_ylabel(f"axis 0 index (of {shape[0]})", fontsize=LABEL)
        fig.colorbar(image, ax=ax).set_label(label, fontsize=LABEL)
        fig.suptitle(title, fontsize=TITLE)
        return fig
    flat = mean.reshape(-1)
    fig = figure(min(14.0, 5.5 + 0.06 * flat.size), 4.2)
    ax = fig.add_subplot()
    x = np.arange(flat.size)
    if flat.size <= _MANY:
        ax.bar(x, flat, width=0.8, color="lightsteelblue", label="mean over the examples")
    else:
        ax.plot(x, flat, color="tab:blue", linewidth=1.2, label="mean over the examples")
    if 1 < sens.num_examples <= 8:
        markers = "os^vD<>P"
        for n, row in enumerate(sens.unit.reshape(sens.num_examples, -1)):
            ax.plot(
                x,
                row,
                markers[n],
                markersize=5 if flat.size <= _MANY else 3,
                alpha=0.8,
                zorder=3,
                linestyle="none",
                label=f"example {n}",
            )
    ax.legend(fontsize=SMALL, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)  # beside: never over data
    if shape:
        ax.set_xlabel(
            f"unit index of {sens.layer}" + (f" (flattened {shape})" if len(shape) > 1 else ""), fontsize=LABEL
        )
        integer_axis(ax.xaxis)
    else:
        ax.set_xticks([0], [f"{sens.layer} (a scalar)"])
    ax.set_ylabel(label if sens.num_examples <= 1 or sens.num_examples > 8 else UNIT, fontsize=LABEL)
    ax.set_xlim(-0.7, flat.size - 0.3)
    ax.set_ylim(bottom=0)
    fig.suptitle(title, fontsize=TITLE)
    return fig
