"""Every bad input answered in one line: the input, what is wrong, the fix; exit code 1; no traceback; nothing
written; and checked before any expensive work. One table, each row a command line and the message it must give.
"""

import json
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest
from click.testing import CliRunner

import layersens
from layersens.examples import LENET_DIGITS, RBM_SPINS
from layersens_cli.main import main


@pytest.fixture(scope="module")
def place(tmp_path_factory):
    """A folder with the files the table refers to: broken models, inputs, result files."""
    root = tmp_path_factory.mktemp("bad")
    rng = np.random.default_rng(0)
    np.save(root / "wrong_shape.npy", rng.normal(size=(3, 28, 28)).astype(np.float32))
    np.save(root / "complex.npy", (rng.normal(size=(2, 28, 28, 1)) * 1j).astype(np.complex64))
    nan = rng.normal(size=(2, 28, 28, 1)).astype(np.float32)
    nan[1, 3, 4, 0] = np.nan
    np.save(root / "nan.npy", nan)
    np.savez(root / "archive.npz", x=nan)
    (root / "garbage.npy").write_bytes(b"not an array at all")
    np.save(root / "two.npy", rng.normal(size=(2, 28, 28, 1)).astype(np.float32))
    (root / "a_file").write_text("x")
    (root / "empty_model").mkdir()
    (root / "notes.txt").write_text("0.1 0.2 0.3\n0.4 0.5 0.6\n")  # what np.savetxt writes
    shutil.copy(Path(layersens.__file__).parents[1] / "README.md", root / "README.md")
    (root / "loop.npz").symlink_to("loop.npz")
    (root / "dangling.npz").symlink_to(root / "no_folder" / "target.npz")

    def copy(name, edit=None, spec_change=None):
        target = root / name
        shutil.copytree(LENET_DIGITS, target)
        if spec_change is not None:
            spec = json.loads((target / "layersens.json").read_text())
            spec_change(spec)
            (target / "layersens.json").write_text(json.dumps(spec))
        if edit is not None:
            edit(target)
        return target

    copy("bad_json", edit=lambda t: (t / "layersens.json").write_text("{not json"))
    copy("unknown_key", spec_change=lambda s: s.update(colour="blue"))
    copy("no_import", spec_change=lambda s: s.update(module="no_such_package.models:Net"))
    copy("not_flax", spec_change=lambda s: s.update(module="tests.bad_models:NotFlax"))
    copy("wrong_kwargs", spec_change=lambda s: s.update(kwargs={"fc1_features": 64}))
    copy("nnx_as_linen", spec_change=lambda s: s.update(module="tests.bad_models:NnxNet", kwargs={}, leaf_hashes={}))

    def truncate(t):
        data = max((p for p in (t / "state").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
        data.write_bytes(data.read_bytes()[:100])

    copy("truncated", edit=truncate)

    from tests.bad_models import InputOnly

    module = InputOnly()
    variables = module.init(jax.random.key(0), np.ones((1, 3), np.float32))
    layersens.save_model(
        root / "input_only", module, variables, input_shape=(3,), example_inputs=np.ones((2, 3), np.float32)
    )
    nan_params = jax.tree.map(np.array, variables)
    nan_params["params"]["dense"]["kernel"][0, 0] = np.nan
    layersens.save_model(
        root / "nan_params", module, nan_params, input_shape=(3,), example_inputs=np.ones((2, 3), np.float32)
    )

    jac = layersens.jacobian(
        layersens.split(layersens.load_model(LENET_DIGITS), "fc2"),
        layersens.load_model(LENET_DIGITS).example_inputs[:1],
    )
    good = jac.save(root / "good.npz")
    raw = good.read_bytes()
    (root / "truncated.npz").write_bytes(raw[: len(raw) // 2])
    damaged = bytearray(raw)
    damaged[len(raw) // 3] ^= 0xFF
    (root / "crc.npz").write_bytes(bytes(damaged))
    meta = jac.metadata()
    meta["param_shapes"] = [[7]] + meta["param_shapes"][1:]
    np.savez(
        root / "inconsistent.npz",
        matrix=jac.matrix,
        activation=jac.activation,
        inputs=jac.inputs,
        metadata=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
    )
    return root


M = str(LENET_DIGITS)
EXTRACT = ["extract", "--model", M, "--layer", "relu1", "--num-examples", "1"]

# (id, command line with {root} and {out} placeholders, a regex the one error line must match)
TABLE = [
    (
        "unknown layer",
        ["extract", "--model", M, "--layer", "relu_1"],
        r"unknown layer 'relu_1'\. Did you mean 'relu1'\? Available layers: conv1, bn1, relu1",
    ),
    ("missing option", ["extract", "--model", M], r"Missing option '--layer'\. \(see `layersens extract --help`\)"),
    (
        "filter selects nothing",
        EXTRACT + ["--wrt", "fc9/*"],
        r"wrt fc9/\* selects none of the leaves upstream of the layer; they are: conv1/kernel",
    ),
    (
        "wrong input shape",
        EXTRACT + ["--inputs", "{root}/wrong_shape.npy"],
        r"have shape \(3, 28, 28\); the model expects \(examples,\) \+ \(28, 28, 1\)",
    ),
    ("npz instead of npy", EXTRACT + ["--inputs", "{root}/archive.npz"], r"is an \.npz archive \(arrays \['x'\]\)"),
    (
        "not an array",
        EXTRACT + ["--inputs", "{root}/garbage.npy"],
        r"garbage\.npy is a text file, not a \.npy array file; write the inputs with np\.save\('inputs\.npy', x\)",
    ),
    # numpy's own message advised loading these "unsafely with allow_pickle" (defect 7)
    (
        "text file as inputs",
        EXTRACT + ["--inputs", "{root}/notes.txt"],
        r"^(?!.*pickle).*notes\.txt is a text file, not a \.npy array file; write the inputs with np\.save",
    ),
    (
        "device as inputs",
        EXTRACT + ["--inputs", "/dev/zero"],
        r"^(?!.*pickle).*inputs file /dev/zero is a character device, not a \.npy array file; write the inputs with "
        r"np\.save",
    ),
    ("missing inputs", EXTRACT + ["--inputs", "{root}/nowhere.npy"], r"inputs file .*nowhere\.npy does not exist"),
    ("complex inputs", EXTRACT + ["--inputs", "{root}/complex.npy"], r"are complex \(complex64\)"),
    (
        "complex parameters without a convention",
        ["extract", "--model", str(RBM_SPINS), "--layer", "output", "--out", "{out}"],
        r"leaf 'kernel' is complex; choose how its Jacobian is stated: complex_mode='real' .*--complex "
        r"real\|complex\|holomorphic",
    ),
    (
        "complex convention without the Jacobian",
        ["summarize", "--model", str(RBM_SPINS), "--layer", "output", "--complex", "complex"],
        r"a layer's summary without its Jacobian \(summarize --layer\) takes real Jacobians, and "
        r"complex_mode='complex' states a complex one\..*--complex real",
    ),
    (
        "NaN inputs",
        EXTRACT + ["--inputs", "{root}/nan.npy", "--num-examples", "2"],
        r"hold NaN or Inf: 1 value\(s\) in example\(s\) 1; replace or drop those examples",
    ),
    (
        "NaN parameters",
        ["extract", "--model", "{root}/nan_params", "--layer", "dense", "--allow-import"],
        r"parameter leaf dense/kernel of InputOnly holds 1 NaN or Inf value\(s\) of 6",
    ),
    (
        "too many examples",
        EXTRACT[:-2] + ["--num-examples", "17"],
        r"--num-examples is 17; .* hold 16 example\(s\), "
        r"so choose 1 to 16",
    ),
    (
        "too many examples of the user's",
        EXTRACT[:-2] + ["--inputs", "{root}/two.npy", "--num-examples", "3"],
        r"--num-examples is 3; inputs .*two\.npy hold 2 example\(s\), so choose 1 to 2",
    ),
    ("negative examples", EXTRACT[:-2] + ["--num-examples", "-1"], r"--num-examples is -1"),
    (
        "missing model",
        ["extract", "--model", "{root}/nowhere", "--layer", "relu1"],
        r"model directory .*nowhere does not exist",
    ),
    (
        "empty model folder",
        ["extract", "--model", "{root}/empty_model", "--layer", "relu1"],
        r"holds neither a layersens model \(layersens\.json\) nor an Orbax checkpoint",
    ),
    (
        "truncated checkpoint",
        ["extract", "--model", "{root}/truncated", "--layer", "relu1"],
        r"(cannot restore the checkpoint|does not match the hash recorded)",
    ),
    ("malformed spec", ["extract", "--model", "{root}/bad_json", "--layer", "relu1"], r"is not valid JSON"),
    (
        "unknown spec key",
        ["extract", "--model", "{root}/unknown_key", "--layer", "relu1"],
        r"unknown field\(s\) \['colour'\]",
    ),
    (
        "module that does not import",
        ["extract", "--model", "{root}/no_import", "--layer", "relu1", "--allow-import"],
        r"cannot import 'no_such_package\.models'",
    ),
    (
        "not a Flax module",
        ["extract", "--model", "{root}/not_flax", "--layer", "relu1", "--allow-import"],
        r"names 'tests\.bad_models:NotFlax', which is not a Flax module class",
    ),
    (
        "user module without consent",
        ["extract", "--model", "{root}/not_flax", "--layer", "relu1"],
        r"importing module 'tests\.bad_models' runs its code\. Pass --allow-import",
    ),
    (
        "NNX class under linen",
        ["extract", "--model", "{root}/nnx_as_linen", "--layer", "relu1", "--allow-import"],
        r"the spec says framework 'linen', but tests\.bad_models:NnxNet builds a nnx module; set \"framework\": "
        r"\"nnx\"",
    ),
    (
        "constructor arguments that do not fit",
        ["extract", "--model", "{root}/wrong_kwargs", "--layer", "relu1"],
        r"does not fit layersens\.examples\.lenet:LeNet .*fc1/kernel: checkpoint \(1568, 128\), module \(1568, 64\)",
    ),
    (
        "no upstream parameters",
        ["extract", "--model", "{root}/input_only", "--layer", "scaled", "--allow-import"],
        r"no parameter reaches 'scaled': it is computed from the input alone.*wrt='input', --wrt input",
    ),
    (
        "budget too small",
        EXTRACT + ["--max-memory", "1KB"],
        r"max_memory is 1000 B, but the narrowest chunk of .* Raise --max-memory",
    ),
    ("budget in words", EXTRACT + ["--max-memory", "2gigs"], r"--max-memory is '2gigs'; write a size such as"),
    ("unknown device", EXTRACT + ["--device", "tpu"], r"device 'tpu' is not available"),
    ("existing output", EXTRACT + ["--out", "{root}/good.npz"], r"good\.npz already exists; pass --overwrite"),
    ("special output", EXTRACT + ["--out", "/dev/null"], r"--out /dev/null is a special file"),
    ("output in a file", EXTRACT + ["--out", "{root}/a_file/x.npz"], r"a_file is a file, not a folder"),
    ("unwritable output", EXTRACT + ["--out", "/proc/layersens.npz"], r"cannot be written"),
    ("output is a folder", EXTRACT + ["--out", "{root}"], r"is a directory; give a file name"),
    # a 41-line traceback, OSError: [Errno 36] File name too long (defect 2)
    (
        "output name too long",
        EXTRACT + ["--out", "{root}/" + "x" * 300 + ".npz"],
        r"--out: the file name is 304 bytes long and this file system allows at most \d+; choose a shorter name",
    ),
    # written, and then not readable by the name reported (defects 2 and 14)
    (
        "control character as output name",
        EXTRACT + ["--out", "{root}/\r"],
        r"--out '.*/\\r\.npz' contains control characters \('\\r'\); choose a printable file name",
    ),
    # a symbolic link at --out was replaced without --overwrite (defect 9)
    (
        "dangling symlink as output",
        EXTRACT + ["--out", "{root}/dangling.npz"],
        r"dangling\.npz \(a symbolic link to .*no_folder/target\.npz\) already exists; pass --overwrite",
    ),
    (
        "symlink loop as output",
        EXTRACT + ["--out", "{root}/loop.npz", "--overwrite"],
        r"loop\.npz is a symbolic link that leads back to itself \(a loop\); remove it or give another name",
    ),
    (
        "bad readout",
        ["gradient", "--model", M, "--layer", "relu1", "--readout", "unit:99999"],
        r"readout is 'unit:99999'; use 'sum', a unit of the activation \(28, 28, 20\)",
    ),
    ("bad kwargs JSON", ["layers", "--model", M, "--kwargs", "{x"], r"--kwargs is '\{x', which is not JSON"),
    (
        "bad input shape",
        [
            "layers",
            "--model",
            "{root}/empty_model",
            "--module",
            "tests.bad_models:InputOnly",
            "--input-shape",
            "3,-1",
            "--allow-import",
        ],
        r"--input-shape is '3,-1'",
    ),
    ("summarize a truncated file", ["summarize", "{root}/truncated.npz"], r"is not a readable layersens result file"),
    (
        "summarize a damaged file",
        ["summarize", "{root}/crc.npz"],
        r"(not a readable layersens result file|"
        r"inconsistent metadata)",
    ),
    ("summarize inconsistent metadata", ["summarize", "{root}/inconsistent.npz"], r"has inconsistent metadata"),
    ("summarize an .npy", ["summarize", "{root}/two.npy"], r"is not a readable layersens result file"),
    (
        "summarize a text file",
        ["summarize", "{root}/README.md"],
        r"^(?!.*pickle).*README\.md is not a readable layersens result file: it is a text file, not an \.npz archive "
        r"with layersens metadata\. Results are written by `layersens extract --out FILE\.npz`",
    ),
    (
        "summarize a device",
        ["summarize", "/dev/zero"],
        r"^(?!.*pickle).*/dev/zero is not a readable layersens result file: it is a character device",
    ),
]


@pytest.mark.parametrize("case, args, message", TABLE, ids=[row[0] for row in TABLE])
def test_bad_input_gets_one_line_and_nothing_written(place, tmp_path, case, args, message):
    out = tmp_path / "out"
    out.mkdir()
    args = [a.replace("{root}", str(place)) for a in args]
    if "--out" not in args and args[0] in ("extract", "gradient"):
        args += ["--out", str(out / "result.npz")]
    before = sorted(p.name for p in place.iterdir())
    result = CliRunner().invoke(main, args, prog_name="layersens")
    # a command line that does not parse is a usage error (exit code 2); a failed run exits with 1
    usage = ("missing option", "budget in words", "bad kwargs JSON", "bad input shape")
    assert result.exit_code == (2 if case in usage else 1), (case, result.output)
    lines = [line for line in result.stderr.splitlines() if not line.startswith(("warning: ", "importing "))]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    import re

    assert re.search(message, lines[0]), lines[0]
    assert list(out.iterdir()) == []
    assert sorted(p.name for p in place.iterdir()) == before


def test_warnings_are_one_line_each_and_the_run_goes_on(tmp_path):
    pixels = (np.random.default_rng(0).random((1, 28, 28, 1)) * 255).astype(np.uint8)
    np.save(tmp_path / "pixels.npy", pixels)
    result = CliRunner().invoke(
        main, EXTRACT[:-2] + ["--inputs", str(tmp_path / "pixels.npy"), "--out", str(tmp_path / "r.npz")]
    )
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning: ")]
    assert any("are uint8 (values 0..2" in w and "without scaling" in w for w in warnings), result.stderr
    assert any("far outside the model's own example inputs" in w for w in warnings), result.stderr


def test_an_interrupt_leaves_nothing_behind(tmp_path, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(layersens.compute._jacobian, "prepared_for", interrupted)
    result = CliRunner().invoke(main, EXTRACT + ["--out", str(tmp_path / "r.npz")])
    assert result.exit_code == 130 and "error: interrupted; nothing was written." in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_an_interrupted_write_and_a_killed_one_leave_no_partial_file(tmp_path, monkeypatch):
    target = tmp_path / "r.npz"
    (tmp_path / ".r.npz.killed.partial").write_bytes(b"left by kill -9")  # what a killed run leaves
    jac = layersens.jacobian(
        layersens.split(layersens.load_model(LENET_DIGITS), "fc2"),
        layersens.load_model(LENET_DIGITS).example_inputs[:1],
    )

    def half_written(file, **arrays):
        file.write(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez", half_written)
    with pytest.raises(KeyboardInterrupt):
        jac.save(target)
    assert list(tmp_path.iterdir()) == []  # the stale one removed, the interrupted one too
    monkeypatch.undo()
    jac.save(target)
    assert [p.name for p in tmp_path.iterdir()] == ["r.npz"]


def test_outputs_follow_the_umask(tmp_path):
    import os

    old = os.umask(0o022)
    try:
        jac = layersens.jacobian(
            layersens.split(layersens.load_model(LENET_DIGITS), "fc2"),
            layersens.load_model(LENET_DIGITS).example_inputs[:1],
        )
        path = jac.save(tmp_path / "r.npz")
        assert path.stat().st_mode & 0o777 == 0o644
    finally:
        os.umask(old)


def test_the_help_teaches():
    for command in ("layers", "extract", "summarize", "gradient", "hessian", "bench"):
        text = CliRunner().invoke(main, [command, "--help"], terminal_width=200).output
        assert "Examples:" in text and f"layersens {command}" in text, command
    text = CliRunner().invoke(main, ["extract", "--help"], terminal_width=200).output
    assert "32 MiB on CPU" in text and "[default: auto]" in text
    top = CliRunner().invoke(main, ["--help"], terminal_width=200).output
    assert "..." not in top.split("Commands:")[1]  # no description cut short
