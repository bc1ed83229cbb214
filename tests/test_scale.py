"""Scale, in processes of their own: a store killed with SIGKILL at random points and resumed equals an uninterrupted
one; the work spread over 8 CPU devices equals one device's to rounding; two processes (``jax.distributed`` on the
loopback address) write one store equal to a one-process run's.

Tolerance for devices (float32): XLA compiles the program over devices on its own and its fusions round
differently, so results agree to 1e-5 of max|J| (measured: 2e-6 or less); processes and resumes run the same
one-device programs and agree exactly.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from layersens.examples import LENET_DIGITS

ROOT = Path(__file__).resolve().parents[1]
EXTRACT = [sys.executable, "-m", "layersens_cli", "extract", "--layer", "relu2", "--model", LENET_DIGITS]
EXTRACT += ["--num-examples", "2", "--max-memory", "8MB", "--quiet"]


def _env(**extra):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT), **extra)
    env.pop("XLA_FLAGS", None)
    env.update(extra)
    return env


def _arrays(path: Path) -> dict[str, np.ndarray]:
    """Every array of a store, by path, and its metadata."""
    group = zarr.open_group(str(path), mode="r")
    arrays = {name: np.asarray(array[...]) for name, array in group.arrays()}
    for name, sub in group.groups():
        for inner, array in sub.arrays():
            arrays[f"{name}/{inner}"] = np.asarray(array[...])
    arrays["attrs"] = np.frombuffer(json.dumps(dict(group.attrs), sort_keys=True).encode(), np.uint8)
    return arrays


def _assert_same_store(a: Path, b: Path):
    left, right = _arrays(a), _arrays(b)
    assert sorted(left) == sorted(right)
    for name in left:
        np.testing.assert_array_equal(left[name], right[name], err_msg=name)


def _fraction_done(store: Path) -> float:
    """The share of a store's slabs its ledger records (0 before the store exists)."""
    if not (store / "zarr.json").exists():
        return 0.0
    group = zarr.open_group(str(store), mode="r")
    ledger = group["ledger"]
    done = total = 0
    for _, array in ledger.arrays():
        values = np.asarray(array[...])
        done, total = done + int(values.sum()), total + values.size
    return done / max(total, 1)


def _kill_and_resume(tmp_path: Path, whole: Path):
    """A store killed at random points, then resumed, equals ``whole`` (an uninterrupted run's)."""
    store = tmp_path / "J.zarr"
    rng = random.Random(0)
    # Killed during start-up, then twice once a random share of the slabs is recorded (the kill lands wherever that
    # run then is: computing, between a slab's chunks and its ledger entry, writing ...): the second of these
    # resumes a store killed mid-way and is killed again, and the last run finishes one.
    # (Up to 60 % of the slabs and 0.1 s after: a run records the rest over ~1 s here; with 80 % and 0.2 s a run on
    # a loaded CI machine once finished before its kill, and the last kill left nothing to resume.)
    targets = [None] + sorted(rng.uniform(0.05, 0.6) for _ in range(2))
    kills = 0
    for target in targets:
        proc = subprocess.Popen(
            EXTRACT + ["--out", str(store)], env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 300
        if target is None:
            time.sleep(1.0)
        else:
            while proc.poll() is None and time.monotonic() < deadline:
                try:
                    if _fraction_done(store) >= target:
                        break
                except Exception:  # noqa: BLE001 - a store being made: look again
                    pass
                time.sleep(0.02)
            time.sleep(rng.uniform(0, 0.1))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
    assert kills >= 3
    assert _fraction_done(store) < 1.0  # the last kill left it unfinished
    done = subprocess.run(EXTRACT + ["--out", str(store)], env=_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    _assert_same_store(store, whole)
    assert not list(tmp_path.glob(".*.partial"))  # no half-made store left beside it


def test_killed_and_resumed_and_two_processes_stores_equal_an_uninterrupted_runs(tmp_path):
    """One uninterrupted run (a process of its own, the same command) is the reference of both."""
    whole = tmp_path / "whole.zarr"
    subprocess.run(EXTRACT + ["--out", str(whole)], env=_env(), check=True, capture_output=True)
    (tmp_path / "killed").mkdir()
    _kill_and_resume(tmp_path / "killed", whole)
    (tmp_path / "processes").mkdir()
    _two_processes(tmp_path / "processes", whole)


def test_eight_devices_give_one_devices_result(tmp_path):
    env = _env(XLA_FLAGS="--xla_force_host_platform_device_count=8")
    run = subprocess.run(
        [sys.executable, "-m", "tests.scale_worker", "devices", str(tmp_path)], env=env, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads((tmp_path / "devices.json").read_text())
    assert report["devices"] == 8
    assert [(c["layer"], c["devices"]) for c in report["cases"]] == [("relu1", 3), ("fc1", 8)]
    for case in report["cases"]:
        assert case["error"] <= 1e-5 and case["activation_error"] <= 1e-5, case
        assert case["device"].endswith(f"({case['devices']} devices)")
    assert report["store_error"] <= 1e-5
    assert report["cpu5"] == [0.0, 0.0]  # one device, whichever: the same programs


def test_the_command_line_uses_the_devices_it_is_given(tmp_path):
    # relu1 (one program, 4 examples: one per device) is enough to see the devices used; what 4 or 8 devices
    # compute, relu2's store included, is checked against one device's in test_eight_devices_give_one_devices_result
    relu1 = EXTRACT[:-5] + ["--layer", "relu1"]
    out = subprocess.run(
        relu1 + ["--num-examples", "4", "--devices", "4", "--out", str(tmp_path / "J.zarr")],
        env=_env(),
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    assert "on cpu:0-3 (4 devices)" in out.stdout
    one = subprocess.run(
        relu1 + ["--num-examples", "1", "--device", "cpu:1", "--out", str(tmp_path / "x.npz")],
        env=_env(XLA_FLAGS="--xla_force_host_platform_device_count=2"),
        capture_output=True,
        text=True,
    )
    assert one.returncode == 0 and "on cpu:1" in one.stdout, one.stderr
    missing = subprocess.run(
        EXTRACT[:-5] + ["--num-examples", "1", "--device", "cpu:3", "--out", str(tmp_path / "y.npz")],
        env=_env(),
        capture_output=True,
        text=True,
    )
    assert missing.returncode == 1
    assert missing.stderr.strip() == (
        "error: device 'cpu:3' is not available: cpu has devices 0 to 0 here (available: cpu:0)."
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_processes(tmp_path: Path, alone: Path):
    """Two processes (``jax.distributed``) write one store equal to ``alone`` (a one-process run's)."""
    shared = tmp_path / "shared.zarr"
    port = _free_port()
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.scale_worker", "process", str(i), str(port), str(shared)],
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in (0, 1)
    ]
    outputs = [p.communicate(timeout=300) for p in procs]
    for p, (_, stderr) in zip(procs, outputs):
        assert p.returncode == 0, stderr[-3000:]
    told = [json.loads(stdout.strip().splitlines()[-1]) for stdout, _ in outputs]
    assert sorted(t["process"] for t in told) == [0, 1] and all(t["of"] == 2 and t["complete"] for t in told)
    left, right = _arrays(shared), _arrays(alone)
    for name in left:
        if name != "attrs":  # the metadata names the device each wrote from
            np.testing.assert_array_equal(left[name], right[name], err_msg=name)


@pytest.mark.parametrize("flags", [["--coordinator", "127.0.0.1:1"], ["--num-processes", "2", "--process-id", "0"]])
def test_process_options_go_together(flags, tmp_path):
    from click.testing import CliRunner

    from layersens_cli.main import main

    result = CliRunner().invoke(main, ["extract", "--layer", "relu1", "--model", LENET_DIGITS] + flags)
    assert result.exit_code == 2
    assert "--coordinator, --num-processes and --process-id go together: give all three." in result.output


def test_a_repeated_extract_compiles_nothing_with_a_warm_cache(tmp_path):
    env = _env(LAYERSENS_COMPILE_CACHE="1", LAYERSENS_CACHE_DIR=str(tmp_path / "cache"))
    command = EXTRACT[:-5] + [
        "--layer",
        "relu1",
        "--num-examples",
        "1",
        "--overwrite",
        "--out",
        str(tmp_path / "r.npz"),
    ]
    first = subprocess.run(command, env=env, capture_output=True, text=True)
    second = subprocess.run(command, env=env, capture_output=True, text=True)
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    assert "from the compilation cache, 0 compiled)" not in first.stdout
    assert "from the compilation cache, 0 compiled)" in second.stdout, second.stdout
    assert list((tmp_path / "cache" / "xla").iterdir())
    off = subprocess.run(
        command,
        env=_env(LAYERSENS_COMPILE_CACHE="0", LAYERSENS_CACHE_DIR=str(tmp_path / "c2")),
        capture_output=True,
        text=True,
    )
    assert off.returncode == 0 and "compilation cache" not in off.stdout and not (tmp_path / "c2").exists()
