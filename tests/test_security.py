"""Loading a model never runs code the user did not allow, never calls anything but a Flax module class or a
declared factory, never unpickles, and notices a damaged checkpoint. Each attack leaves a marker file if it
succeeds; the marker must never appear."""

import json
import shutil
import sys

import numpy as np
import pytest

import layersens
from layersens.examples import LENET_DIGITS

EVIL = """
import pathlib
pathlib.Path({marker!r}).write_text("ran")

def run(**kwargs):
    pathlib.Path({marker!r}).write_text("called")
"""

CALLABLE_ONLY = """
import pathlib

def run(**kwargs):
    pathlib.Path({marker!r}).write_text("called")
"""


@pytest.fixture
def lenet_copy(tmp_path):
    copy = tmp_path / "model"
    shutil.copytree(LENET_DIGITS, copy)
    return copy


def _edit_spec(directory, **changes):
    path = directory / "layersens.json"
    spec = json.loads(path.read_text())
    spec.update(changes)
    for key in [k for k, v in changes.items() if v is None]:
        spec.pop(key)
    path.write_text(json.dumps(spec))


@pytest.fixture(autouse=True)
def _forget_planted_modules():
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        if name.startswith(("evil", "planted")):
            del sys.modules[name]


def test_a_spec_naming_layersens_itself_to_load_a_second_spec_is_refused(lenet_copy, tmp_path):
    marker = tmp_path / "marker"
    second = tmp_path / "second"
    shutil.copytree(LENET_DIGITS, second)
    (second / "evil_second.py").write_text(EVIL.format(marker=str(marker)))
    _edit_spec(second, module="evil_second:run")
    _edit_spec(
        lenet_copy, module=None, factory="layersens:load_model", kwargs={"directory": str(second), "allow_import": True}
    )
    for allow in (False, True):
        with pytest.raises(
            layersens.UntrustedModuleError,
            match=r"names 'layersens:load_model', a part of "
            r"layersens itself",
        ):
            layersens.load_model(lenet_copy, allow_import=allow)
    assert not marker.exists()


def test_without_allow_import_no_user_module_is_imported(lenet_copy, tmp_path):
    marker = tmp_path / "marker"
    (lenet_copy / "evil_import.py").write_text(EVIL.format(marker=str(marker)))
    _edit_spec(lenet_copy, module="evil_import:Net")
    with pytest.raises(
        layersens.UntrustedModuleError,
        match=r"importing module 'evil_import' runs its code. Pass "
        r"--allow-import",
    ):
        layersens.load_model(lenet_copy)
    assert not marker.exists()


def test_with_allow_import_only_flax_module_classes_are_called(lenet_copy, tmp_path):
    marker = tmp_path / "marker"
    (lenet_copy / "evil_callable.py").write_text(CALLABLE_ONLY.format(marker=str(marker)))
    _edit_spec(lenet_copy, module="evil_callable:run")
    announced = []
    with pytest.raises(layersens.SpecError, match=r"names 'evil_callable:run', which is not a Flax module class"):
        layersens.load_model(lenet_copy, allow_import=True, announce=announced.append)
    assert not marker.exists()
    assert announced and "importing evil_callable" in announced[0] and "runs its code" in announced[0]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"num_classes": {"__function__": "os:system"}},
        {"num_classes": {"__partial__": "os:system", "args": ["touch MARKER"], "kwargs": {}}},
        {"num_classes": {"__dataclass__": "subprocess:Popen", "fields": {"args": ["touch", "MARKER"]}}},
        {"num_classes": {"__class__": "builtins:eval"}},
    ],
    ids=["function", "partial", "dataclass", "class"],
)
def test_constructor_arguments_cannot_reach_the_standard_library(lenet_copy, tmp_path, kwargs):
    text = json.dumps(kwargs).replace("MARKER", str(tmp_path / "marker"))
    _edit_spec(lenet_copy, kwargs=json.loads(text))
    for allow in (False, True):
        with pytest.raises(layersens.UntrustedModuleError, match=r"from Python's standard library"):
            layersens.load_model(lenet_copy, allow_import=allow)
    assert not (tmp_path / "marker").exists()


def test_python_files_and_pickles_in_a_checkpoint_directory_are_never_run(lenet_copy, tmp_path):
    import pickle

    marker = tmp_path / "marker"

    class Planted:
        def __reduce__(self):
            return (exec, (f"open({str(marker)!r}, 'w').write('unpickled')",))

    (lenet_copy / "state" / "extra.pkl").write_bytes(pickle.dumps(Planted()))
    (lenet_copy / "__init__.py").write_text(EVIL.format(marker=str(marker)))
    (lenet_copy / "planted.py").write_text(EVIL.format(marker=str(marker)))
    for allow in (False, True):
        model = layersens.load_model(lenet_copy, allow_import=allow)
        assert layersens.split(model, "relu1").num_params == 240
    assert not marker.exists()


def test_a_flipped_bit_in_a_data_file_is_an_error_naming_the_damage(lenet_copy):
    data = max((p for p in (lenet_copy / "state").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0x10
    data.write_bytes(bytes(raw))
    with pytest.raises(
        layersens.CheckpointError,
        match=r"(does not match the hash recorded when it was saved|"
        r"cannot restore the checkpoint)",
    ):
        layersens.load_model(lenet_copy)


def test_a_changed_value_is_named_by_its_leaf(lenet_copy, tmp_path):
    spec = json.loads((lenet_copy / "layersens.json").read_text())
    spec["leaf_hashes"]["params/fc1/kernel"] = "sha256:" + "0" * 64
    (lenet_copy / "layersens.json").write_text(json.dumps(spec))
    with pytest.raises(layersens.CheckpointError, match=r"leaf params/fc1/kernel in .* does not match the hash"):
        layersens.load_model(lenet_copy)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("frame_work", "linen", r"unknown field\(s\) \['frame_work'\]"),
        ("input_shape", [28, "28", 1], r"'input_shape' is \[28, '28', 1\]; it must be a list of positive integers"),
        ("input_dtype", "floaty", r"'input_dtype' is 'floaty'; give a numeric dtype such as 'float32'"),
        ("call_kwargs", {"train": float("nan")}, r"not valid JSON|not JSON"),
        ("example_inputs", "../../etc/passwd", r"must name a file in the model directory"),
        ("module", "not a path", r"write it as 'package.module:Name'"),
    ],
)
def test_spec_files_are_parsed_strictly(lenet_copy, field, value, message):
    path = lenet_copy / "layersens.json"
    spec = json.loads(path.read_text())
    spec[field] = value
    path.write_text(json.dumps(spec))
    with pytest.raises(layersens.SpecError, match=message):
        layersens.load_model(lenet_copy)


def test_a_plain_orbax_checkpoint_with_the_users_module_beside_it(tmp_path, monkeypatch):
    import orbax.checkpoint as ocp

    model_code = (
        "import flax.linen as nn\n\n"
        "class Tiny(nn.Module):\n"
        "    features: int = 3\n\n"
        "    @nn.compact\n"
        "    def __call__(self, x):\n"
        "        h = nn.relu(nn.Dense(self.features, name='hidden')(x))\n"
        "        return nn.Dense(2, name='head')(h)\n"
    )
    (tmp_path / "planted_models.py").write_text(model_code)
    rng = np.random.default_rng(0)
    variables = {
        "params": {
            "hidden": {"kernel": rng.normal(size=(4, 5)).astype(np.float32), "bias": np.zeros(5, np.float32)},
            "head": {"kernel": rng.normal(size=(5, 2)).astype(np.float32), "bias": np.zeros(2, np.float32)},
        }
    }
    with ocp.StandardCheckpointer() as ck:
        ck.save(tmp_path / "ckpt", variables)
    with pytest.raises(layersens.SpecError, match=r"plain Orbax checkpoint with no layersens spec; name the module"):
        layersens.load_model(tmp_path / "ckpt")
    with pytest.raises(layersens.UntrustedModuleError, match="--allow-import"):
        layersens.load_model(tmp_path / "ckpt", module="planted_models:Tiny", input_shape=(4,))
    model = layersens.load_model(
        tmp_path / "ckpt", allow_import=True, module="planted_models:Tiny", kwargs={"features": 5}, input_shape=(4,)
    )
    assert [i.name for i in layersens.list_layers(model)][:3] == ["hidden", "relu_0", "head"]
    from click.testing import CliRunner

    from layersens_cli.main import main

    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(
        main,
        [
            "layers",
            "--model",
            "ckpt",
            "--module",
            "planted_models:Tiny",
            "--kwargs",
            '{"features": 5}',
            "--input-shape",
            "4",
            "--allow-import",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "relu_0" in result.output
