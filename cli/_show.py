"""Printing results as tables: a layer's summary, a model's profile, and each kind of result file `layersens
summarize FILE` reads (sensitivities, readout gradients and Hessians, products, other results).

Numbers are formatted as in the reports (``layersens.report``): ``.4g`` for values, three significant digits for
percentages.
"""

from __future__ import annotations

import numpy as np
from rich.markup import escape
from rich.table import Table

from ._common import out, say


def pct(share: float) -> str:
    return f"{100 * share:.3g}%"


def _values(values, limit: int = 6) -> str:
    shown = ", ".join(f"{v:.4g}" for v in list(values)[:limit])
    return shown + (f", … ({len(values)} in all)" if len(values) > limit else "")


def _table(*columns: str, left: tuple[str, ...] = ("leaf", "layer", "shape", "unit")) -> Table:
    """Left-aligned text columns that fold when the terminal is narrow; numbers right-aligned, never folded."""
    table = Table()
    for column in columns:
        text = column in left
        table.add_column(column, justify="left" if text else "right", overflow="fold", no_wrap=not text)
    return table


def leaves_table(sens, shares: dict[str, float]) -> Table:
    """One row per leaf: its shape, its share of ‖J‖²_F and its output channel with the largest share."""
    whole = float(np.sum(np.square(sens.frobenius))) or 1.0
    table = _table("leaf", "shape", "share of ‖J‖²_F", "top channel: share")
    for name, shape in zip(sens.param_names, sens.param_shapes):
        per = sens.per_channel(name).sum(axis=0) / whole
        top = int(np.argmax(per)) if per.size else 0
        table.add_row(
            escape(name), str(tuple(shape)), pct(shares[name]), f"{top}: {pct(per[top])}" if per.size > 1 else "—"
        )
    return table


def _units(sens, count: int = 5) -> str:
    whole = float(np.sum(np.square(sens.frobenius))) or 1.0
    return ", ".join(f"{e.index} {pct(e.value / whole)}" for e in sens.top_units(count))


def show_summary(summary) -> None:
    s = summary.sensitivity
    say(
        f"layer       {summary.model} / {summary.layer}: {s.activation_shape} per example = "
        f"{int(np.prod(s.activation_shape)):,} outputs"
    )
    say(
        f"upstream    {sum(int(np.prod(p)) for p in s.param_shapes):,} parameters in {len(s.param_names)} leaves; "
        f"{summary.num_examples} example(s)"
    )
    k = 0 if summary.singular_values is None else summary.singular_values.shape[1]
    columns = ["example", "‖J‖_F"] + (
        [f"σ_1 … σ_{k}", "stable rank", f"entropy rank (top {k})", f"σ₁/σ_{k}"] if k else []
    )
    table = _table(*columns, left=(f"σ_1 … σ_{k}",))
    for n in range(summary.num_examples):
        row = [str(n), f"{summary.frobenius[n]:.4g}"]
        if k:
            row += [
                _values(summary.singular_values[n]),
                f"{summary.stable_rank[n]:.4g}",
                f"{summary.entropy_rank[n]:.4g}",
                f"{summary.condition_top_k[n]:.4g}",
            ]
        table.add_row(*row)
    out.print(table)
    out.print(leaves_table(s, summary.leaf_shares()))
    say(f"top units   {_units(s)} (share of ‖J‖²_F)")
    if summary.spectrum is not None:
        top = summary.spectrum.direction(0, 0)
        leaf, share = top.leaf_shares[0]
        channel, cshare = top.top_channels(1)[0]
        say(
            f"direction 1 of example 0: σ = {top.value:.4g}, {pct(share)} of it in {leaf}, {pct(cshare)} in "
            f"channel {channel}"
        )
    if summary.ntk is not None and summary.ntk.trace_axes:
        values = summary.ntk.values
        say(f"NTK         tr(J_n J_mᵀ), row n = example n{' (the first 8)' if len(values) > 8 else ''}:")
        for n, row in enumerate(values[:8]):
            say(f"  {n:>9}   " + _values(row, 8))
    for note in tuple(s.notes) + tuple(summary.notes):
        say(f"note        {note}")
    say(f"time        {summary.seconds:.3g} s ({s.mode} on {s.device})")


def show_profile(profile) -> None:
    say(
        f"{profile.model}: {len(profile.rows)} layer(s), {profile.num_examples} example(s); values are means "
        "over the examples"
    )
    table = _table(
        "depth",
        "layer",
        "shape",
        "params",
        "‖J‖_F",
        "σ₁",
        "stable rank",
        "top leaves (share of ‖J‖²_F)",
        left=("layer", "shape", "top leaves (share of ‖J‖²_F)"),
    )
    for row in profile.rows:
        table.add_row(
            str(row.depth),
            escape(row.layer),
            str(row.shape),
            f"{row.num_params:,}",
            f"{row.frobenius_mean:.4g}",
            f"{row.sigma_1_mean:.4g}",
            f"{row.stable_rank_mean:.4g}",
            escape(", ".join(f"{name} {pct(share)}" for name, share in row.top_leaves())),
        )
    out.print(table)
    for name, why in profile.skipped:
        say(f"skipped     {name}: {why}")
    say(f"time        {profile.seconds:.3g} s")


def show_sensitivity(sens) -> None:
    say(
        f"{sens.model} / {sens.layer}: sensitivity of {sens.activation_shape} per example to "
        f"{len(sens.param_names)} leaves ({sens.mode}, {sens.device}), {sens.num_examples} example(s)"
    )
    say(f"‖J‖_F       {_values(sens.frobenius, 8)} (per example)")
    totals = sens.leaf_totals()
    whole = sum(totals.values()) or 1.0
    out.print(leaves_table(sens, {name: value / whole for name, value in totals.items()}))
    say(f"top units   {_units(sens)} (share of ‖J‖²_F)")
    say("top params  " + ", ".join(f"{e.leaf}{list(e.index)} {pct(e.value / whole)}" for e in sens.top_parameters(5)))


def _leaf_norms(names, shapes, flat) -> Table:
    """One row per leaf: the norm of its slice of ``flat`` (examples, P), per example."""
    table = _table("leaf", "shape", "norm per example")
    start = 0
    for name, shape in zip(names, shapes):
        stop = start + int(np.prod(shape, dtype=np.int64))
        table.add_row(escape(name), str(tuple(shape)), _values(np.linalg.norm(flat[:, start:stop], axis=1), 8))
        start = stop
    return table


def show_readout(result) -> None:
    say(f"readout     {result.readout} of {result.layer}: {_values(result.values, 8)} (per example)")
    say("gradient    norm of each leaf's gradient:")
    out.print(_leaf_norms(result.param_names, result.param_shapes, result.gradient))
    if result.frozen_params:
        say(f"frozen      {len(result.frozen_params)} upstream leaves held constant")
    if result.hessian_vectors is not None:
        say(f"hvp         |H v| per example: {_values(np.linalg.norm(result.hessian_vectors, axis=1), 8)}")
    if result.hessian is not None:
        largest = [float(np.abs(np.linalg.eigvalsh(h)).max()) if h.size else 0.0 for h in result.hessian]
        say(f"hessian     {tuple(result.hessian.shape)}; largest |eigenvalue| per example: {_values(largest, 8)}")


def show_products(result) -> None:
    say(f"products    with the Jacobian of {result.layer} ({len(result.param_names)} leaves)")
    if result.jvp is not None:
        say(
            f"jvp         J V {tuple(result.jvp.shape)}: norm per example "
            f"{_values(np.linalg.norm(result.jvp.reshape(len(result.jvp), -1), axis=1), 8)}"
        )
    if result.vjp is not None:
        say(f"vjp         Jᵀ U {tuple(result.vjp.shape)}; norm of each leaf's rows:")
        out.print(_leaf_norms(result.param_names, result.param_shapes, np.linalg.norm(result.vjp, axis=2)))


def show_other(result) -> None:
    layer = result.metadata.get("layer")
    say(f"{result.path}: {result.format}" + (f" of layer {layer}" if isinstance(layer, str) else ""))
    for name, value in result.arrays.items():
        norms = (
            f": {_values(np.linalg.norm(value.reshape(len(value), -1).astype(np.float64), axis=1), 8)} "
            "(norm per example)"
            if value.ndim >= 1 and len(value) and value.dtype.kind in "fiu"
            else ""
        )
        say(f"{name:<11} {tuple(value.shape)} {value.dtype}{norms}")
