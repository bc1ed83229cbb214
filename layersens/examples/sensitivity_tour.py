"""A tour of the answers layersens gives without forming a layer's Jacobian, as a notebook would run it.

    python -m layersens.examples.sensitivity_tour [OUT_DIR]

It loads the shipped LeNet, summarizes ``relu2`` (J is 6,272 × 6,096 per example, 153 MB in float32) for two
digits under a 64 MB working-memory budget, prints what the summary holds, and draws the figures into OUT_DIR (a
temporary directory by default). Needs matplotlib (``pip install 'layersens[report]'``).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

import layersens


def main(out_dir=None) -> dict[str, Path]:
    """Runs the tour; returns the figures written, by name."""
    out_dir = Path(out_dir or tempfile.mkdtemp(prefix="layersens-tour-"))

    # 1. The model, the layer, two examples.
    model = layersens.load_model(layersens.examples.LENET_DIGITS)
    split = layersens.split(model, "relu2")
    x = model.example_inputs[:2]
    print(
        f"relu2: {split.activation_shape} per example, {split.num_params:,} upstream parameters in "
        f"{len(split.param_names)} leaves"
    )

    # 2. One call: the exact sensitivity, the top 6 singular values, the NTK across the two examples.
    summary = layersens.summarize_layer(split, x, k=6, max_memory="64MB")
    print(summary)

    # 3. The numbers, per example.
    for n in range(summary.num_examples):
        print(
            f"example {n}: ‖J‖_F = {summary.frobenius[n]:.4g}, σ_1..σ_6 = "
            + ", ".join(f"{v:.4g}" for v in summary.singular_values[n])
            + f"; stable rank {summary.stable_rank[n]:.4g}, entropy rank (top 6) {summary.entropy_rank[n]:.4g}"
        )

    # 4. Which parameters and units matter: shares of ‖J‖²_F.
    for leaf, share in sorted(summary.leaf_shares().items(), key=lambda item: -item[1]):
        channels = summary.channel_shares(leaf)
        print(f"  {leaf:<14} {100 * share:6.3g}%   top output channel {int(np.argmax(channels))}")
    print("top units:", ", ".join(f"{index} {100 * share:.3g}%" for index, share in summary.top_units(5)))
    direction = summary.spectrum.direction(0, example=0)
    print(f"top direction of example 0: σ = {direction.value:.4g}, mostly in {direction.leaf_shares[0][0]}")
    print("NTK tr(J_n J_mᵀ):\n", np.array2string(summary.ntk.values, precision=4))

    # 5. Figures: matplotlib Figures of their own (pyplot untouched); shown as they are in a notebook, saved here
    #    through layersens's atomic writer (fig.savefig(path) works as well).
    from layersens.report import save_png

    written = {
        kind: save_png(summary.plot(kind), out_dir / f"relu2-{kind}.png")
        for kind in ("overview", "parameters", "units", "spectrum")
    }
    print("figures in", out_dir)
    return written


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
