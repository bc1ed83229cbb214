"""The command line end to end on the shipped checkpoint: output, files, and one-line errors."""

import os
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

import layersens
from layersens.examples import LENET_DIGITS, LENET_DIGITS_NNX
from layersens_cli.main import main


def run(*args, cwd=None):
    runner = CliRunner()
    if cwd is not None:
        os.chdir(cwd)
    return runner.invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(autouse=True)
def _keep_cwd():
    here = os.getcwd()
    yield
    os.chdir(here)


def test_layers_lists_every_layer_with_sizes():
    result = run("layers", "--model", LENET_DIGITS)
    assert result.exit_code == 0
    for name in ("conv1", "bn1", "relu1", "conv2", "bn2", "relu2", "fc1", "relu3", "fc2"):
        assert name in result.output
    assert "15,680" in result.output and "6,096" in result.output and "206,928" in result.output
    assert "14.4 MiB" in result.output and "evaluation mode" in result.output


@pytest.mark.parametrize("model_dir", [LENET_DIGITS, LENET_DIGITS_NNX], ids=["linen", "nnx"])
def test_extract_relu1_equals_the_apis_jacobian(tmp_path, model_dir):
    out = tmp_path / "relu1.npz"
    result = run("extract", "--layer", "relu1", "--model", model_dir, "--num-examples", 1, "--out", out)
    assert result.exit_code == 0, result.output
    for expected in (
        "relu1: (28, 28, 20) per example = 15,680 outputs",
        "240 parameters in 4 leaves",
        "(1, 15680, 240) float32",
        "fwd-colour (asked: auto)",
        "cpu:0",
        "evaluation mode",
        str(out),
    ):
        assert expected in result.output
    jac = layersens.load_jacobian(out)
    # The same programs as layersens.jacobian's, to the bit; tests/test_jacobian.py checks that one against
    # jax.jacrev of the flat function, for this model, layer and example (an independent reference too costly to
    # compute twice: 15,680 pullbacks through the convolution).
    model = layersens.load_model(model_dir)
    split = layersens.split(model, "relu1")
    api = layersens.jacobian(split, model.example_inputs[:1])
    assert jac.param_names == api.param_names and jac.param_shapes == api.param_shapes
    np.testing.assert_array_equal(jac.matrix, api.matrix)
    np.testing.assert_array_equal(jac.activation, api.activation)


def test_extract_default_output_name_and_user_inputs(tmp_path):
    x = layersens.load_model(LENET_DIGITS).example_inputs[3:5]
    np.save(tmp_path / "x.npy", x)
    result = run(
        "extract",
        "--layer",
        "fc1",
        "--model",
        LENET_DIGITS,
        "--inputs",
        tmp_path / "x.npy",
        "--mode",
        "rev",
        cwd=tmp_path,
    )
    assert result.exit_code == 0, result.output
    jac = layersens.load_jacobian(tmp_path / "fc1.npz")
    assert jac.matrix.shape == (2, 128, 206928) and jac.mode == "rev"
    np.testing.assert_array_equal(jac.inputs, x)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--layer", "relu_1"], "error: unknown layer 'relu_1'. Did you mean 'relu1'? Available layers: conv1, bn1,"),
        (
            ["--layer", "relu1", "--inputs", "x.npy"],
            "error: inputs x.npy have shape (2, 28, 28); the model expects (examples,) + (28, 28, 1)",
        ),
        (["--layer", "relu1", "--inputs", "missing.npy"], "error: inputs file missing.npy does not exist."),
        (
            ["--layer", "relu1", "--num-examples", "99"],
            "--num-examples is 99; the model's own example inputs (pass --inputs FILE.npy for others) hold 16",
        ),
    ],
)
def test_bad_input_gives_one_line_exit_1_and_writes_nothing(tmp_path, args, message):
    np.save(tmp_path / "x.npy", np.zeros((2, 28, 28), np.float32))
    before = set(os.listdir(tmp_path))
    result = run("extract", "--model", LENET_DIGITS, *args, cwd=tmp_path)
    assert result.exit_code == 1
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert set(os.listdir(tmp_path)) == before


def test_missing_model_directory(tmp_path):
    result = run("layers", "--model", tmp_path / "nowhere")
    assert result.exit_code == 1
    assert f"error: model directory {tmp_path / 'nowhere'} does not exist" in result.stderr


def test_summarize_reports_norms_and_rank(tmp_path):
    out = tmp_path / "relu1.npz"
    assert run("extract", "--layer", "relu1", "--model", LENET_DIGITS, "--num-examples", 1, "--out", out).exit_code == 0
    result = run("summarize", out)
    assert result.exit_code == 0
    assert "conv1/kernel" in result.output and "exact zeros" in result.output
    assert "example 0: rank" in result.output


def test_python_dash_m_runs_without_x64(tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env.pop("JAX_ENABLE_X64", None)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "layersens",
            "extract",
            "--layer",
            "relu1",
            "--model",
            str(LENET_DIGITS),
            "--num-examples",
            "2",
            "--out",
            str(tmp_path / "r.npz"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "(2, 15680, 240) float32" in proc.stdout
    assert layersens.load_jacobian(tmp_path / "r.npz").matrix.dtype == np.float32


@pytest.mark.parametrize(
    "args, message",
    [
        (["extract", "--model", LENET_DIGITS], "error: Missing option '--layer'. (see `layersens extract --help`)"),
        (["extract", "--model", LENET_DIGITS, "--layer", "relu1", "--bogus"], "error: No such option '--bogus'."),
        (
            ["extract", "--model", LENET_DIGITS, "--layer", "relu1", "--num-examples", "abc"],
            "'abc' is not a valid integer",
        ),
        (
            ["extract", "--model", LENET_DIGITS, "--layer", "relu1", "--mode", "fastest"],
            "'fastest' is not one of 'auto'",
        ),
        (
            ["extract", "--model", LENET_DIGITS, "--layer", "relu1", "--max-memory", "lots"],
            "error: --max-memory is 'lots'; write a size such as '512MB'",
        ),
        (["layers", "--model", LENET_DIGITS, "--kwargs", "{x"], "error: --kwargs is '{x', which is not JSON"),
        (
            ["layers", "--model", LENET_DIGITS, "--input-shape", "3,-1"],
            "error: --input-shape is '3,-1'; write the shape",
        ),
        (["bench", "--model", LENET_DIGITS], "error: Missing option '--layer'. (see `layersens bench --help`)"),
        (["nonsense"], "error: No such command 'nonsense'."),
    ],
    ids=[
        "missing-option",
        "unknown-option",
        "not-an-int",
        "not-a-choice",
        "size",
        "json",
        "shape",
        "bench-missing",
        "command",
    ],
)
def test_usage_errors_exit_2_with_one_line(tmp_path, args, message):
    """A command line that does not parse exits with 2 (click's and argparse's convention), a failed run with 1."""
    result = CliRunner().invoke(main, [str(a) for a in args], prog_name="layersens")
    assert result.exit_code == 2, (result.exit_code, result.stderr)
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.output


def test_help_and_version_do_not_import_jax():
    """`layersens --help`, `layersens <command> --help` and `--version` answer without importing JAX (seconds)."""
    code = """if True:
        import sys
        from layersens_cli.main import main
        for args in (["--help"], ["extract", "--help"], ["bench", "--help"], ["products", "--help"], ["--version"]):
            try:
                main(args, prog_name="layersens", standalone_mode=False)
            except SystemExit as e:
                assert e.code == 0, (args, e.code)
        heavy = sorted(m for m in ("jax", "jaxlib", "flax", "orbax", "numpy") if m in sys.modules)
        assert not heavy, heavy
        """
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "--max-memory SIZE" in done.stdout and "layersens-compressed" in done.stdout
    assert f"[{'|'.join(layersens.MODE_NAMES)}|" in done.stdout  # the choices read from the library
    assert "layersens, version" in done.stdout


def test_products_error_names_the_shape_given():
    """A block of vectors of the wrong shape is reported as given, not as broadcast against the examples."""
    model = layersens.load_model(LENET_DIGITS)
    op = layersens.linearize(layersens.split(model, "relu1"), model.example_inputs[:2])
    with pytest.raises(layersens.LayersensError, match=r"vectors have shape \(5, 3\); expected \(240, k\)"):
        op.matmat(np.zeros((5, 3), np.float32))
    with pytest.raises(layersens.LayersensError, match=r"cotangents have shape \(2, 7\); expected \(2, 15680, k\)"):
        op.rmatmat(np.zeros((2, 7), np.float32))


def test_cli_products_reports_the_tangents_shape_given(tmp_path):
    np.save(tmp_path / "t.npy", np.zeros((4, 28, 28, 1), np.float32))
    result = run(
        "products",
        "--layer",
        "relu1",
        "--model",
        LENET_DIGITS,
        "--tangents",
        tmp_path / "t.npy",
        "--out",
        tmp_path / "p.npz",
    )
    assert result.exit_code == 1
    assert "error: vectors have shape (4, 28, 28, 1); expected (240, k) or (4, 240, k)." in result.stderr
    assert not (tmp_path / "p.npz").exists()
