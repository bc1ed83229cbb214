"""`layersens summarize` end to end (a layer, every layer, each kind of saved result), its reports (Markdown,
JSON, PNG, written atomically, an existing report refused), the figures of the notebook API, the progress display,
and the example tour."""

from __future__ import annotations

import io
import json
import re
import sys

import numpy as np
import pytest
from click.testing import CliRunner

import layersens
from layersens.examples import LENET_DIGITS
from layersens_cli.main import main
from tests.summary_tiny import INPUT_SHAPE, Net, inputs, variables

pytest.importorskip("matplotlib")
SUMMARY_FILES = {"report.md", "report.json", "parameters.png", "units.png", "spectrum.png", "sensitivity.npz"}


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return layersens.save_model(
        tmp_path_factory.mktemp("models") / "tiny",
        Net(),
        variables(),
        input_shape=INPUT_SHAPE,
        example_inputs=inputs(3),
    )


def _numbers(value):
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return []
    if isinstance(value, (int, float)):
        return [value]
    items = value.values() if isinstance(value, dict) else value
    return [n for item in items for n in _numbers(item)]


def _shown(value) -> set[str]:
    """Every way the reports print a number."""
    forms = {f"{value:.4g}", f"{value:.2g}", f"{100 * value:.3g}%"}
    if float(value).is_integer():
        forms |= {str(int(value)), f"{int(value):,}"}
    return forms


def assert_markdown_numbers_in_json(markdown: str, data: dict):
    """Each number in the Markdown's tables (labels aside: example numbers, the rank i of σ_i) is one of the
    JSON's numbers, as printed."""
    known = set().union(*(_shown(v) for v in _numbers(data)))
    checked = 0
    for table in re.findall(r"(?:^\|.*\|$\n?)+", markdown, flags=re.M):
        lines = table.strip().split("\n")
        header = [c.strip() for c in lines[0].strip("|").split("|")]
        for line in lines[2:]:
            for column, cell in zip(header, line.strip("|").split("|")):
                if column in ("example", "i", ""):
                    continue
                cell = re.sub(r"`[^`]*`", "", cell)  # leaf and layer names
                for token in re.findall(r"-?\d+(?:,\d{3})*(?:\.\d+)?(?:e[+-]?\d+)?%?", cell):
                    assert token in known, (column, cell, token)
                    checked += 1
    assert checked > 20


def test_summarize_a_layer_prints_the_table_and_writes_the_report(tmp_path, monkeypatch):
    from layersens.report import _write

    written = []
    real = _write.write_bytes
    monkeypatch.setattr(_write, "write_bytes", lambda path, data: written.append(path.name) or real(path, data))
    out = tmp_path / "relu1-summary"
    args = [
        "summarize",
        "--layer",
        "relu1",
        "--model",
        LENET_DIGITS,
        "--num-examples",
        2,
        "--k",
        3,
        "--max-memory",
        "64MB",
        "--out",
        out,
    ]
    result = run(*args)
    assert result.exit_code == 0, result.output
    assert result.stderr == ""  # no progress display off a terminal
    for expected in (
        "relu1: (28, 28, 20) per example = 15,680 outputs",
        "240 parameters in 4 leaves",
        "‖J‖_F",
        "σ_1 … σ_3",
        "stable rank",
        "entropy rank (top 3)",
        "conv1/kernel",
        "top units",
        "share of ‖J‖²_F",
        "NTK",
        f"wrote       {out / 'report.md'}",
    ):
        assert expected in result.output, expected
    assert {p.name for p in out.iterdir()} == SUMMARY_FILES  # no temporaries left
    assert sorted(written) == sorted(SUMMARY_FILES - {"sensitivity.npz"})  # through the one atomic writer
    data = json.loads((out / "report.json").read_text())
    markdown = (out / "report.md").read_text()
    assert_markdown_numbers_in_json(markdown, data)
    assert len(data["per_example"]) == 2 and len(data["per_example"][0]["singular_values"]) == 3
    for name in ("parameters.png", "units.png", "spectrum.png"):
        assert f"]({name})" in markdown and (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    sens = layersens.results.load_sensitivity(out / "sensitivity.npz")
    np.testing.assert_allclose(sens.frobenius, [row["frobenius"] for row in data["per_example"]])

    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    again = run(*args)
    assert again.exit_code == 1 and again.stdout == ""
    assert again.stderr.startswith(f"error: --out {out} already holds a summary report (report.md, report.json")
    assert "pass --overwrite" in again.stderr and again.stderr.count("\n") == 1
    assert before == {p.name: p.stat().st_mtime_ns for p in out.iterdir()}

    shown = run("summarize", out / "sensitivity.npz")
    assert shown.exit_code == 0, shown.output
    assert "LeNet / relu1: sensitivity" in shown.output and f"{data['per_example'][0]['frobenius']:.4g}" in shown.output


def test_profile_of_every_layer(tiny_dir, tmp_path):
    out = tmp_path / "profile"
    result = run("summarize", "--all-layers", "--model", tiny_dir, "--allow-import", "--num-examples", 2, "--out", out)
    assert result.exit_code == 0, result.output
    assert "skipped     scaled: no parameter reaches it" in result.output
    for layer in ("conv", "act", "dense", "hidden", "head", "output"):
        assert f" {layer} " in result.output
    assert {p.name for p in out.iterdir()} == {"report.md", "report.json", "profile.png"}
    data = json.loads((out / "report.json").read_text())
    assert [r["layer"] for r in data["rows"]] == ["conv", "act", "dense", "hidden", "head", "output"]
    assert_markdown_numbers_in_json((out / "report.md").read_text(), data)
    refused = run("summarize", "--all-layers", "--model", tiny_dir, "--allow-import", "--out", out)
    assert refused.exit_code == 1 and "already holds a profile report (report.md, report.json" in refused.stderr


def test_overwrite_replaces_a_report(tiny_dir, tmp_path):
    args = [
        "summarize",
        "--layer",
        "head",
        "--model",
        tiny_dir,
        "--allow-import",
        "--k",
        0,
        "--no-ntk",
        "--out",
        tmp_path,
    ]
    assert run(*args, "--num-examples", 2).exit_code == 0
    assert run(*args, "--num-examples", 1).exit_code == 1
    assert run(*args, "--num-examples", 1, "--overwrite").exit_code == 0
    assert json.loads((tmp_path / "report.json").read_text())["examples"] == 1
    assert {p.name for p in tmp_path.iterdir()} == SUMMARY_FILES - {"spectrum.png"}  # k = 0: no spectrum


def test_summarize_each_kind_of_saved_file(tiny_dir, tmp_path):
    common = ["--model", tiny_dir, "--allow-import", "--num-examples", 2]
    np.save(tmp_path / "v.npy", np.ones(119, np.float32))
    np.save(tmp_path / "u.npy", np.ones((2, 3), np.float32))
    made = {
        "j.npz": ["extract", "--layer", "hidden", *common],
        "g.npz": ["gradient", "--layer", "hidden", "--readout", "sum", *common],
        "h.npz": ["hessian", "--layer", "hidden", "--wrt", "dense/*", *common],
        "p.npz": [
            "products",
            "--layer",
            "hidden",
            "--tangents",
            tmp_path / "v.npy",
            "--cotangents",
            tmp_path / "u.npy",
            *common,
        ],
    }
    for name, args in made.items():
        assert run(*args, "--out", tmp_path / name).exit_code == 0, name
    layersens.sensitivity(layersens.split(layersens.load_model(tiny_dir, allow_import=True), "hidden"), inputs(2)).save(
        tmp_path / "s.npz"
    )
    expected = {
        "j.npz": ["exact zeros", "dense/kernel", "example 1: rank"],
        "g.npz": ["readout     sum of hidden", "norm of each leaf's gradient", "conv/kernel"],
        "h.npz": ["hessian     (2, 99, 99); largest |eigenvalue| per example", "dense/bias"],
        "p.npz": ["jvp         J V (2, 3, 1)", "vjp         Jᵀ U (2, 119, 1)", "conv/bias"],
        "s.npz": ["sensitivity of (3,) per example", "share of ‖J‖²_F", "top params"],
    }
    for name, words in expected.items():
        result = run("summarize", tmp_path / name)
        assert result.exit_code == 0, (name, result.output)
        for word in words:
            assert word in result.output, (name, word)
    spectrum = run("summarize", tmp_path / "g.npz", "--spectrum")
    assert spectrum.exit_code == 2 and "--spectrum/--no-spectrum is for a saved Jacobian" in spectrum.stderr


@pytest.mark.parametrize(
    "args, code, message",
    [
        (["summarize"], 2, "give a result FILE to read, or --model DIR with --layer LAYER or --all-layers"),
        (["summarize", "--model", "{model}"], 2, "give --layer LAYER or --all-layers (one of them)"),
        (["summarize", "--model", "{model}", "--layer", "act", "--all-layers"], 2, "(one of them)"),
        (
            ["summarize", "x.npz", "--layer", "act"],
            2,
            "give a result FILE or --model DIR, not both (--layer with x.npz)",
        ),
        (
            ["summarize", "--model", "{model}", "--all-layers", "--no-ntk"],
            2,
            "--no-ntk, --device and --devices go with --layer",
        ),
        (["summarize", "--model", "{model}", "--layer", "act", "--k", "-1"], 2, "-1 is not in the range x>=0"),
        (["summarize", "--model", "{model}", "--layer", "acts"], 1, "unknown layer 'acts'. Did you mean 'act'?"),
        (["summarize", "--model", "{model}", "--layer", "act", "--k", "40"], 1, "so choose 0 to 20 singular values"),
        (["summarize", "--model", "{model}", "--layer", "scaled"], 1, "scaled"),
        (["summarize", "--model", "{model}", "--layer", "act", "--out", "{file}"], 1, "is a file, not a directory"),
    ],
)
def test_errors_are_one_line(tiny_dir, tmp_path, args, code, message):
    (tmp_path / "file").write_text("x")
    args = [a.format(model=tiny_dir, file=tmp_path / "file") for a in args]
    result = run(*(args + (["--allow-import"] if "--model" in args else [])))
    assert result.exit_code == code and message in result.stderr, result.stderr
    lines = result.stderr.splitlines()  # after the announced import of the model's module, when it is loaded
    assert lines[-1].startswith("error: ") and sum(line.startswith("error") for line in lines) == 1
    assert all(line.startswith("importing tests.summary_tiny") for line in lines[:-1]) and result.stdout == ""


@pytest.fixture(scope="module")
def tiny():
    return layersens.from_linen(Net(), variables(), INPUT_SHAPE)


@pytest.fixture(scope="module")
def act_summary(tiny):
    return layersens.summarize_layer(layersens.split(tiny, "act"), inputs(2), k=2)


def test_a_failing_figure_writes_nothing(act_summary, tmp_path, monkeypatch):
    from layersens.report import _write

    summary = act_summary

    def broken(summary):
        raise RuntimeError("no figure")

    monkeypatch.setattr(_write, "spectrum_figure", broken)
    with pytest.raises(RuntimeError):
        _write.write_summary_report(summary, tmp_path / "r")
    assert not (tmp_path / "r").exists()


def test_figures_leave_pyplot_alone_and_read_every_activation_shape(tiny, act_summary):
    from matplotlib.figure import Figure

    had_pyplot = "matplotlib.pyplot" in sys.modules
    hidden = layersens.summarize_layer(layersens.split(tiny, "hidden"), inputs(2), k=2, ntk=False)
    for summary in (act_summary, hidden):
        for kind in ("overview", "parameters", "units", "spectrum"):
            assert isinstance(summary.plot(kind), Figure)
        assert isinstance(summary.sensitivity.plot("units"), Figure)
    with pytest.raises(ValueError, match="choose one of overview"):
        summary.plot("nothing")
    profile = layersens.SensitivityProfile(model="m", rows=(), skipped=(("x", "why"),), num_examples=2, k=1)
    assert isinstance(profile.plot(), Figure)  # (drawn with rows in test_profile_of_every_layer's report)
    rng = np.random.default_rng(0)
    for shape in ((5, 7), (300,), ()):  # a 2-axis activation (a heat map), many units (a line), a scalar
        sens = layersens.Sensitivity(
            layer="h",
            model="m",
            param_names=("w",),
            param_shapes=((4, 3),),
            activation_shape=shape,
            wrt="parameters",
            mode="fwd",
            device="cpu:0",
            parameter={"w": rng.random((2, 4, 3))},
            unit=rng.random((2,) + shape),
            frobenius=rng.random(2) + 1,
        )
        assert isinstance(sens.plot("units"), Figure) and isinstance(sens.plot(), Figure)
    assert ("matplotlib.pyplot" in sys.modules) == had_pyplot


def test_progress_shows_on_a_terminal_only(monkeypatch):
    from rich.console import Console

    import layersens_cli._common as common

    screen = io.StringIO()
    monkeypatch.setattr(common, "err", Console(file=screen, force_terminal=True, width=100))
    with common.StepProgress() as progress:
        progress("relu2: sensitivity", 3, 16)
        progress("relu2: top 6 singular value(s)", 0, None)
    assert "relu2: sensitivity" in screen.getvalue() and "3/16" in screen.getvalue()
    quiet = io.StringIO()
    monkeypatch.setattr(common, "err", Console(file=quiet, force_terminal=False))
    with common.StepProgress() as progress:
        progress("relu2: sensitivity", 3, 16)
    assert quiet.getvalue() == ""


def test_the_example_tour_runs(tmp_path, capsys):
    from layersens.examples import sensitivity_tour

    figures = sensitivity_tour.main(tmp_path)
    assert set(figures) == {"overview", "parameters", "units", "spectrum"}
    assert all(path.read_bytes()[:4] == b"\x89PNG" for path in figures.values())
    printed = capsys.readouterr().out
    assert "relu2: (14, 14, 32) per example, 6,096 upstream parameters" in printed and "NTK" in printed
