"""The benchmark harness on a tiny saved model: files, fields, verification, extrapolation, failures, CLI."""

import dataclasses
import json

import click
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from click.testing import CliRunner

import layersens
from layersens.bench import available_methods, run_benchmark
from layersens.bench._worker import PeakMemory
from tests.bench_tiny import Tiny

FAST = dict(repeats=2, bandwidth_bytes=4 * 2**20, measure_memory=False, allow_import=True)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    module = Tiny()
    variables = module.init(jax.random.key(0), jnp.zeros((1, 4, 4, 1), jnp.float32))
    inputs = np.random.default_rng(0).normal(size=(3, 4, 4, 1)).astype(np.float32)
    return layersens.save_model(
        tmp_path_factory.mktemp("models") / "tiny", module, variables, input_shape=(4, 4, 1), example_inputs=inputs
    )


@pytest.fixture(scope="module")
def full_report(tiny_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    return run_benchmark(
        tiny_dir,
        ["act", "hidden"],
        num_examples=2,
        out_dir=out,
        loop_sample=8,
        nojit_sample=4,
        **{**FAST, "repeats": 1},
    ), out


def test_report_files_and_json_fields(full_report):
    report, out = full_report
    assert sorted(p.name for p in out.iterdir()) == ["plot.png", "report.json", "report.md"]
    assert [str(out / n) for n in ("report.md", "report.json", "plot.png")] == list(report.files)
    assert (out / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads((out / "report.json").read_text())
    assert data["format"] == "layersens-benchmark/1"
    for key in ("environment", "bandwidth", "settings", "cases", "overview", "model_dir"):
        assert key in data
    assert {"devices", "versions", "thread_settings", "cpu_count"} <= set(data["environment"])
    assert data["bandwidth"]["fill"] > 0 and data["bandwidth"]["first_touch"] > 0
    assert [(c["layer"], c["num_examples"]) for c in data["cases"]] == [("act", 2), ("hidden", 2)]
    case = data["cases"][0]
    assert (case["num_outputs"], case["num_params"]) == (32, 20)
    assert case["jacobian_bytes"] == 2 * 32 * 20 * 4
    method = case["methods"][0]
    for key in (
        "name",
        "status",
        "compile_seconds",
        "steady_seconds",
        "speedup_vs_loop",
        "speedup_vs_best_jax",
        "write_fraction",
        "max_abs_error",
        "timing",
    ):
        assert key in method
    markdown = (out / "report.md").read_text()
    assert "## act, 2 example(s)" in markdown and "plot.png" in markdown and case["summary"] in markdown


def test_every_method_verified_and_timed(full_report):
    report, _ = full_report
    assert report.settings.methods == available_methods()
    for case in report.cases:
        assert [m.name for m in case.methods] == list(available_methods())
        for m in case.methods:
            assert m.status == "ok", (case.layer, m.name, m.reason)
            assert m.checked_entries > 0 and m.max_abs_error <= 1e-4
            assert m.steady_seconds > 0 and m.speedup_vs_loop > 0
        loop = case.method("loop-jit")
        assert loop.speedup_vs_loop == pytest.approx(1.0)
        # 8 sampled gradients predicted a full loop far inside the budget, so it ran in full
        assert not loop.extrapolated and loop.checked_entries == case.num_examples * case.num_outputs * case.num_params
        assert case.method("loop-jit").compile_seconds > 0 and case.method("loop-nojit").compile_seconds is None
        assert case.method("layersens-auto").compute_seconds <= case.method("layersens-auto").steady_seconds
        # the compressed result is verified through its dense form, ranked apart, and sized by what it returns
        compressed = case.method("layersens-compressed")
        assert 0 < compressed.result_bytes <= case.jacobian_bytes and compressed.bytes_per_second is None
        assert "layersens-compressed (compressed_jacobian" in case.summary
        assert (
            not case.summary.startswith(f"For {case.layer}") or "layersens-compressed was fastest" not in case.summary
        )
    assert "layersens-compressed, which writes per-channel blocks" in report.overview


def test_tiny_loop_budget_extrapolates_and_says_so(tiny_dir, tmp_path):
    report = run_benchmark(
        tiny_dir,
        "act",
        num_examples=2,
        loop_budget_s=1e-9,
        loop_sample=5,
        nojit_sample=3,
        methods="loop-jit,loop-nojit,jacfwd",
        out_dir=tmp_path,
        **FAST,
    )
    case = report.cases[0]
    for name, k in (("loop-jit", 5), ("loop-nojit", 3)):
        m = case.method(name)
        assert m.extrapolated and m.sampled_gradients == k and m.total_gradients == 64
        assert m.timing.startswith(f"extrapolated from {k} of 64 gradients")
        assert m.steady_seconds == pytest.approx(np.median(m.runs_seconds) / k * 64)
    assert "extrapolated from 5 of 64 gradients" in (tmp_path / "report.md").read_text()
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["cases"][0]["methods"][0]["extrapolated"] is True


def test_wrong_result_is_failed_not_timed(tiny_dir, monkeypatch):
    real = layersens.jacobian

    def off_by_a_little(*args, **kwargs):
        jac = real(*args, **kwargs)
        return dataclasses.replace(jac, matrix=jac.matrix + 1e-2)

    monkeypatch.setattr(layersens, "jacobian", off_by_a_little)
    report = run_benchmark(tiny_dir, "act", methods=["jacrev", "layersens-fwd"], **FAST)
    jacrev, ours = report.cases[0].methods
    assert jacrev.status == "ok"
    assert ours.status == "failed" and "differs from the reference" in ours.reason
    assert ours.steady_seconds is None and ours.runs_seconds == () and ours.speedup_vs_loop is None
    assert "layersens-fwd failed" in report.cases[0].summary


def test_method_that_raises_is_failed(tiny_dir, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(layersens, "jacobian", broken)
    report = run_benchmark(tiny_dir, "act", methods=["layersens-auto"], **FAST)
    assert report.cases[0].methods[0].status == "failed" and "RuntimeError: boom" in report.cases[0].methods[0].reason


def test_run_limit_stops_a_slow_method_and_says_so(tiny_dir):
    report = run_benchmark(tiny_dir, "act", num_examples=2, methods="jacrev,layersens-auto", run_limit_s=1e-6, **FAST)
    for m in report.cases[0].methods:
        assert m.status == "skipped" and m.reason.startswith("too slow: compiling and one run"), m
        assert m.steady_seconds is None and m.runs_seconds == ()


def test_dense_method_too_big_for_memory_is_skipped_not_run(tiny_dir, monkeypatch):
    from layersens.bench._methods import DenseMethod

    monkeypatch.setattr(DenseMethod, "working_bytes", lambda self: 10**15)  # as jacfwd of a wide layer would be
    monkeypatch.setattr(DenseMethod, "full", lambda self: pytest.fail("a skipped method must not run"))
    monkeypatch.setattr(
        "layersens.bench._run._reference",
        lambda split, xs, budget: (layersens.jacobian(split, xs, mode="fwd").matrix, "layersens fwd"),
    )
    workers = []
    monkeypatch.setattr(
        "layersens.bench._run.measure_peak_memory",
        lambda model_dir, layer, n, name, **kw: workers.append(name) or PeakMemory(1, 2),
    )
    report = run_benchmark(tiny_dir, "act", methods="jacfwd,layersens-rev", **{**FAST, "measure_memory": True})
    jacfwd, ours = report.cases[0].methods
    assert jacfwd.status == "skipped" and "its compiled program needs" in jacfwd.reason and jacfwd.memory is None
    assert ours.ok and ours.speedup_vs_best_jax is None and ours.memory.added_bytes == 1
    assert workers == ["layersens-rev"]  # the one that would not fit never ran, not even in a worker


def test_peak_memory_from_own_process(tiny_dir):
    report = run_benchmark(
        tiny_dir, "act", methods=["loop-jit", "jacfwd", "layersens-auto@1MiB"], **{**FAST, "measure_memory": True}
    )
    for m in report.cases[0].methods:
        assert m.memory is not None and m.memory.error is None, m.memory
        assert m.memory.peak_bytes >= m.memory.baseline_bytes > 10 * 2**20  # Python + JAX are already resident
        assert m.memory.added_bytes is not None
    budgeted = report.cases[0].method("layersens-auto@1MiB").memory
    assert budgeted.steady_added_bytes is not None  # a second call, measured after resetting the high-water mark
    assert "layersens-auto@1MiB added" in report.cases[0].summary and "1.0 MiB working-memory budget" in (
        report.cases[0].summary
    )


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(layer="nope"), "unknown layer 'nope'"),
        (dict(layer="act", methods="jacrev,fastest"), "unknown ['fastest']"),
        (dict(layer="act", methods="layersens-auto@lots"), "unknown ['layersens-auto@lots']"),
        (dict(layer="act", num_examples=9), "ships 3 example inputs"),
        (dict(layer="act", repeats=0), "must be positive"),
    ],
)
def test_bad_input_is_a_layersens_error(tiny_dir, kwargs, message):
    layer = kwargs.pop("layer")
    with pytest.raises(layersens.LayersensError, match=message.replace("[", r"\[").replace("]", r"\]")):
        run_benchmark(tiny_dir, layer, **{**FAST, **kwargs})


def _cli():
    from layersens_cli.bench import bench

    group = click.Group()
    group.add_command(bench)
    return group


def test_cli_bench_writes_report(tiny_dir, tmp_path):
    out = tmp_path / "bench"
    result = CliRunner().invoke(
        _cli(),
        [
            "bench",
            "--layer",
            "act",
            "--model",
            str(tiny_dir),
            "--num-examples",
            "2",
            "--repeats",
            "1",
            "--out",
            str(out),
            "--methods",
            "jacrev,layersens-auto",
            "--no-memory",
            "--allow-import",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "layersens-auto" in result.stdout and f"wrote       {out / 'report.json'}" in result.stdout
    assert json.loads((out / "report.json").read_text())["cases"][0]["num_examples"] == 2


def test_cli_bench_unknown_layer_is_one_error_line(tiny_dir, tmp_path):
    result = CliRunner().invoke(
        _cli(), ["bench", "--layer", "nope", "--model", str(tiny_dir), "--out", str(tmp_path / "x"), "--allow-import"]
    )
    assert result.exit_code == 1
    assert result.stderr.startswith("error: unknown layer 'nope'")
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()


def test_cli_bench_checks_its_output_directory_before_any_work(tiny_dir, tmp_path, monkeypatch):
    """A file at --out, or a report already there, was found only after the whole benchmark had run (the results
    lost), and a second report silently replaced the first."""
    import layersens.bench._run as run_module

    def no_work(*args, **kwargs):
        raise AssertionError("the benchmark ran before its output directory was checked")

    monkeypatch.setattr(run_module, "environment", no_work)
    monkeypatch.setattr(layersens, "load_model", no_work)
    args = [
        "bench",
        "--layer",
        "act",
        "--model",
        str(tiny_dir),
        "--methods",
        "jacrev",
        "--no-memory",
        "--allow-import",
        "--repeats",
        "1",
    ]
    (tmp_path / "a_file").write_text("not a directory")
    result = CliRunner().invoke(_cli(), args + ["--out", str(tmp_path / "a_file")])
    assert result.exit_code == 1, result.output
    assert (
        result.stderr == f"error: --out {tmp_path / 'a_file'} is a file, not a directory; give a directory for "
        "report.md, report.json, plot.png.\n"
    )
    report = tmp_path / "report"
    report.mkdir()
    (report / "report.json").write_text("{}")
    result = CliRunner().invoke(_cli(), args + ["--out", str(report)])
    assert result.exit_code == 1, result.output
    assert result.stderr == (
        f"error: --out {report} already holds a benchmark report (report.json); pass --overwrite "
        "(overwrite=True) to replace it, or choose another directory.\n"
    )
    assert (report / "report.json").read_text() == "{}"
    with pytest.raises(layersens.OutputError, match="already holds a benchmark report"):
        run_benchmark(tiny_dir, "act", out_dir=report, **FAST)


def test_cli_bench_overwrite_replaces_a_report(tiny_dir, tmp_path):
    out = tmp_path / "bench"
    out.mkdir()
    (out / "report.md").write_text("an older report")
    result = CliRunner().invoke(
        _cli(),
        [
            "bench",
            "--layer",
            "act",
            "--model",
            str(tiny_dir),
            "--repeats",
            "1",
            "--out",
            str(out),
            "--overwrite",
            "--methods",
            "jacrev",
            "--no-memory",
            "--allow-import",
        ],
    )
    assert result.exit_code == 0, result.output
    assert (out / "report.md").read_text().startswith("# layersens benchmark")


def _synthetic_report(layers, counts):
    """A report with every method verified and timed, made up (no benchmark run): for the plot's layout."""
    from layersens.bench import BenchmarkReport, CaseResult, MethodResult, Settings

    methods = available_methods()
    settings = Settings(
        repeats=1, loop_budget_s=1.0, loop_sample=8, nojit_sample=4, seed=0, rtol=1e-4, atol=1e-4, methods=methods
    )
    cases = tuple(
        CaseResult(
            layer=layer,
            num_examples=n,
            num_outputs=32,
            num_params=20,
            num_leaves=2,
            jacobian_bytes=2560,
            reference="jacfwd",
            methods=tuple(
                MethodResult(
                    name,
                    "ok",
                    steady_seconds=1e-3 * (k + 1),
                    speedup_vs_loop=1.0 / (k + 1),
                    extrapolated=name == "loop-nojit",
                )
                for k, name in enumerate(methods)
            ),
        )
        for layer in layers
        for n in counts
    )
    return BenchmarkReport(
        model_dir="tiny",
        model_name="Tiny",
        framework="linen",
        eval_mode="evaluation mode",
        created="",
        settings=settings,
        environment=None,
        bandwidth=None,
        cases=cases,
    )


@pytest.mark.parametrize("layers, counts", [(["act"], [2]), (["act", "hidden"], [1, 2])], ids=["single", "multi"])
def test_plot_shows_every_legend_label_whole(layers, counts):
    """The single-case plot cut 5 of its 13 legend labels at the image's edges."""
    from layersens.bench._plot import report_figure, report_plot

    report = _synthetic_report(layers, counts)
    fig = report_figure(report)
    fig.canvas.draw()  # lays the legend out
    renderer = fig.canvas.get_renderer()
    canvas = fig.bbox
    (legend,) = fig.legends
    texts = legend.get_texts()
    assert [t.get_text() for t in texts] == list(available_methods())
    for text in texts + [fig._suptitle]:
        box = text.get_window_extent(renderer)
        assert canvas.x0 <= box.x0 and box.x1 <= canvas.x1 and canvas.y0 <= box.y0 and box.y1 <= canvas.y1, (
            text.get_text(),
            box,
            canvas,
        )
    assert report_plot(report)[:8] == b"\x89PNG\r\n\x1a\n"
