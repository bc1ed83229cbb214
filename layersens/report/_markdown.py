"""The Markdown of a summary's or a profile's report. Every number it shows is in ``report.json`` (the result's
``to_dict()``), formatted here in one of a few ways: ``.4g`` for values, percentages with three significant digits
(:func:`pct`) for shares, ``.2g`` for residual bounds."""

from __future__ import annotations


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def pct(share: float) -> str:
    """A share as a percentage with three significant digits: ``71.5%``, ``0.0412%``."""
    return f"{100 * share:.3g}%"


def _shape(shape) -> str:
    return "×".join(str(d) for d in shape) or "scalar"


def _index(index) -> str:
    return "(" + ", ".join(str(i) for i in index) + ")"


def summary_markdown(data: dict, figures: dict[str, str]) -> str:
    """``data`` is ``LayerSummary.to_dict()``; ``figures`` maps each PNG written to its caption."""
    m, p, n = data["num_outputs"], data["num_params"], data["examples"]
    lines = [
        f"# {data['model']} / {data['layer']}: what the layer's Jacobian does",
        "",
        f"J is the Jacobian of `{data['layer']}` ({_shape(data['activation_shape'])} per example = {m:,} "
        f"outputs) with respect to the {p:,} parameters upstream of it ({len(data['leaves'])} leaves), for "
        f"{n} example(s): M × P = {m:,} × {p:,} per example. It was never formed: the norms are exact sums of "
        "its chunks, the singular values come from products with J. Every number below is in "
        "`report.json`.",
        "",
        "## Per example",
        "",
    ]
    k = data["k"]
    header = ["example", "‖J‖_F"]
    if k:
        header += [f"σ_1 … σ_{k}", "stable rank ‖J‖²_F/σ₁²", f"entropy rank (top {k})", f"σ₁/σ_{k}"]
    rows = []
    for i, row in enumerate(data["per_example"]):
        cells = [str(i), f"{row['frobenius']:.4g}"]
        if k:
            cells += [
                ", ".join(f"{v:.4g}" for v in row["singular_values"]),
                f"{row['stable_rank']:.4g}",
                f"{row['entropy_rank_top_k']:.4g}",
                f"{row['condition_top_k']:.4g}",
            ]
        rows.append(cells)
    lines += _table(header, rows) + [""]
    if k:
        lines += [
            "The stable rank counts the directions that carry ‖J‖²_F as σ₁ does (1: one direction dominates; "
            "the whole spectrum counted). The entropy rank is exp(entropy of σ_i² / Σσ²) over the top k values "
            f"only (at most {k}); σ₁/σ_k is a lower bound on J's condition number.",
            "",
        ]
    lines += [
        "## Parameters",
        "",
        "Each leaf's share of ‖J‖²_F summed over the examples, and the index on the leaf's last axis (a Flax "
        "kernel's output channel; an (out, in) or OIHW kernel's input feature or kernel column) with the largest "
        "share.",
        "",
    ]
    rows = []
    for leaf in data["leaves"]:
        shares, top = leaf["channel_shares"], leaf["top_channel"]
        rows.append(
            [
                f"`{leaf['name']}`",
                _shape(leaf["shape"]),
                pct(leaf["share"]),
                f"{top}: {pct(shares[top])}" if len(shares) > 1 else "—",
            ]
        )
    lines += _table(["leaf", "shape", "share of ‖J‖²_F", "top channel: share"], rows) + [""]
    lines += ["Single parameters with the largest share:", ""]
    lines += _table(
        ["leaf", "index", "share of ‖J‖²_F"],
        [[f"`{e['leaf']}`", _index(e["index"]), pct(e["share"])] for e in data["top_parameters"]],
    )
    lines += (
        [""]
        + _figures(figures, "parameters.png")
        + [
            "## Units",
            "",
            "Units (activation entries) with the largest share of ‖J‖²_F, i.e. the largest ‖∂h_i/∂θ‖²:",
            "",
        ]
    )
    lines += _table(
        ["unit index", "share of ‖J‖²_F"], [[_index(e["index"]), pct(e["share"])] for e in data["top_units"]]
    )
    lines += [""] + _figures(figures, "units.png")
    if k:
        lines += [
            "## Spectrum",
            "",
            "The top singular directions: σ_i with its residual bound (a singular value "
            "of J lies within it), the leaf holding most of the right vector v_i, and the activation channel "
            "holding most of the left vector u_i.",
            "",
        ]
        rows = []
        for i, row in enumerate(data["per_example"]):
            for d in row["directions"]:
                leaf, share = max(d["leaf_shares"].items(), key=lambda item: item[1])
                channel, cshare = d["top_channels"][0]
                rows.append(
                    [
                        str(i),
                        str(d["index"] + 1),
                        f"{d['value']:.4g}",
                        f"{d['residual']:.2g}",
                        f"`{leaf}` {pct(share)}",
                        f"{channel}: {pct(cshare)}",
                    ]
                )
        lines += _table(["example", "i", "σ_i", "residual", "top leaf of v_i", "top channel of u_i"], rows)
        lines += [""] + _figures(figures, "spectrum.png")
    if data["ntk"] is not None and data["ntk"].get("values") is not None:
        values = data["ntk"]["values"]
        lines += [
            "## Empirical NTK",
            "",
            "Θ[n, m] = tr(J_n J_mᵀ) = Σ_i ⟨∂h_i(x_n)/∂θ, ∂h_i(x_m)/∂θ⟩: how alike "
            "two examples move the layer (the diagonal is ‖J_n‖²_F).",
            "",
        ]
        lines += _table(
            ["", *(f"example {j}" for j in range(len(values)))],
            [[f"example {i}", *(f"{v:.4g}" for v in row)] for i, row in enumerate(values)],
        ) + [""]
    lines += [
        "## Run",
        "",
        f"- mode: {data['mode']}; device {data['device']}; spectrum: {data['spectrum_method']}",
        f"- time: {data['seconds']:.3g} s",
        *(f"- note: {note}" for note in data["notes"]),
        "",
    ]
    return "\n".join(lines)


def _figures(figures: dict[str, str], *names: str) -> list[str]:
    return [line for name in names if name in figures for line in (f"![{figures[name]}]({name})", "")]


def profile_markdown(data: dict, figures: dict[str, str]) -> str:
    """``data`` is ``SensitivityProfile.to_dict()``."""
    lines = [
        f"# {data['model']}: sensitivity of each layer",
        "",
        f"For each layer, in depth order, its Jacobian J with respect to every parameter upstream of it, over "
        f"{data['examples']} example(s), never formed: ‖J‖_F exactly, σ₁ its top singular value, the stable "
        "rank ‖J‖²_F/σ₁² (how many directions carry it), and the leaves with the largest share of ‖J‖²_F. "
        "Values are means over the examples; `report.json` holds each example's.",
        "",
    ]
    rows = [
        [
            str(r["depth"]),
            f"`{r['layer']}`",
            _shape(r["shape"]),
            f"{r['num_params']:,}",
            f"{r['frobenius_mean']:.4g}",
            f"{r['sigma_1_mean']:.4g}",
            f"{r['stable_rank_mean']:.4g}",
            ", ".join(f"`{s['leaf']}` {pct(s['share'])}" for s in r["leaf_shares"][:3]),
        ]
        for r in data["rows"]
    ]
    lines += _table(["depth", "layer", "shape", "params", "‖J‖_F", "σ₁", "stable rank", "top leaves"], rows) + [""]
    if data["skipped"]:
        lines += ["Skipped: " + "; ".join(f"`{s['layer']}` ({s['why']})" for s in data["skipped"]) + ".", ""]
    lines += _figures(figures, "profile.png")
    lines += [f"Time: {data['seconds']:.3g} s.", ""]
    return "\n".join(lines)
