"""The command line end to end on the shipped checkpoint: output, files, and one-line errors."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from click.testing import CliRunner

import layersens
from layersens.examples import LENET_DIGITS, LENET_DIGITS_NNX
from layersens_cli.main import main
from tests.conftest import TOL


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
def test_extract_relu1_equals_jacrev_of_the_flat_function(tmp_path, model_dir):
    out = tmp_path / "relu1.npz"
    result = run("extract", "--layer", "relu1", "--model", model_dir, "--num-examples", 1, "--out", out)
    assert result.exit_code == 0, result.output
    for expected in ("relu1: (28, 28, 20) per example = 15,680 outputs", "240 parameters in 4 leaves",
                     "(1, 15680, 240) float32", "fwd-colour (asked: auto)", "cpu:0", "evaluation mode", str(out)):
        assert expected in result.output
    jac = layersens.load_jacobian(out)
    model = layersens.load_model(model_dir)
    split = layersens.split(model, "relu1")
    names = split.param_names
    sizes = np.cumsum([np.size(split.params[k]) for k in names])[:-1]

    def flat_fn(theta):
        leaves = jnp.split(theta, sizes)
        return jnp.ravel(split.apply({k: v.reshape(np.shape(split.params[k])) for k, v in zip(names, leaves)},
                                     model.example_inputs[0]))

    theta = jnp.concatenate([jnp.ravel(split.params[k]) for k in names])
    np.testing.assert_allclose(jac.matrix[0], jax.jit(jax.jacrev(flat_fn))(theta), **TOL[np.float32])


def test_extract_default_output_name_and_user_inputs(tmp_path):
    x = layersens.load_model(LENET_DIGITS).example_inputs[3:5]
    np.save(tmp_path / "x.npy", x)
    result = run("extract", "--layer", "fc1", "--model", LENET_DIGITS, "--inputs", tmp_path / "x.npy",
                 "--mode", "rev", cwd=tmp_path)
    assert result.exit_code == 0, result.output
    jac = layersens.load_jacobian(tmp_path / "fc1.npz")
    assert jac.matrix.shape == (2, 128, 206928) and jac.mode == "rev"
    np.testing.assert_array_equal(jac.inputs, x)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--layer", "relu_1"], "error: unknown layer 'relu_1'. Did you mean 'relu1'? Available layers: conv1, bn1,"),
        (["--layer", "relu1", "--inputs", "x.npy"], "error: inputs x.npy have shape (2, 28, 28); the model expects (examples,) + (28, 28, 1)"),
        (["--layer", "relu1", "--inputs", "missing.npy"], "error: inputs file missing.npy does not exist."),
        (["--layer", "relu1", "--num-examples", "99"], "--num-examples is 99; the model's own example inputs (pass --inputs FILE.npy for others) hold 16"),
        (["--layer", "relu1", "--max-memory", "lots"], "--max-memory is 'lots'; write a size such as '512MB'"),
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
        [sys.executable, "-m", "layersens", "extract", "--layer", "relu1", "--model", str(LENET_DIGITS),
         "--num-examples", "2", "--out", str(tmp_path / "r.npz")],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "(2, 15680, 240) float32" in proc.stdout
    assert layersens.load_jacobian(tmp_path / "r.npz").matrix.dtype == np.float32
