"""Summaries of the shipped complex RBM: the real convention goes through the matrix-free summaries (its
Jacobian is real), the complex conventions are refused there with the way round."""

import numpy as np
from click.testing import CliRunner

import layersens
from layersens.examples import RBM_SPINS
from layersens_cli.main import main


def test_profile_and_layer_summary_in_the_real_convention():
    model = layersens.load_model(RBM_SPINS)
    x = model.example_inputs[:3]
    profile, _ = layersens.summaries.profile_model(model, x, complex_mode="real")
    assert [row.layer for row in profile.rows] == ["theta", "log_cosh", "output"]
    for row in profile.rows:
        dense = layersens.jacobian(layersens.split(model, row.layer, complex_mode="real"), x)
        np.testing.assert_allclose(row.frobenius, np.linalg.norm(dense.matrix, axis=(1, 2)), rtol=1e-5)
    summary, _ = layersens.summaries.summarize_model(model, "log_cosh", x, k=3, complex_mode="real")
    dense = layersens.jacobian(layersens.split(model, "log_cosh", complex_mode="real"), x)
    for n in range(len(x)):
        top = np.linalg.svd(dense.matrix[n].astype(np.float64), compute_uv=False)[:3]
        np.testing.assert_allclose(summary.spectrum.values[n], top, rtol=1e-4)


def test_the_command_line_summarizes_the_real_convention_and_refuses_the_complex_ones():
    runner = CliRunner()
    ok = runner.invoke(main, ["summarize", "--all-layers", "--model", str(RBM_SPINS), "--complex", "real", "--quiet"])
    assert ok.exit_code == 0, ok.output
    assert "kernel.real" in ok.output and "log_cosh" in ok.output
    refused = runner.invoke(main, ["summarize", "--layer", "output", "--model", str(RBM_SPINS), "--complex", "complex"])
    assert refused.exit_code == 1
    assert refused.stderr.startswith("error: a layer's summary without its Jacobian (summarize --layer) takes real")
    assert "--complex real" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
