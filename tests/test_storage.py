"""The one atomic writer (layersens/_atomic.py) and the result files written through it: permissions from the umask,
nothing half-written after an error or an interrupt, stale temporaries removed, symbolic links written through,
output paths checked before any computation, and files that are no Jacobian named for what they are."""

import os
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import layersens
from layersens import CheckpointError, OutputError
from layersens._atomic import (
    atomic_directory,
    atomic_file,
    check_free_space,
    check_name,
    resolve_target,
    write_bytes,
)
from layersens.examples import LENET_DIGITS
from layersens.results._storage import check_output, read_npz, write_npz
from layersens_cli.main import main

M = str(LENET_DIGITS)
FC2 = ["extract", "--model", M, "--layer", "fc2", "--num-examples", "1", "--wrt", "fc2/*"]


@pytest.fixture
def umask022():
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# ------------------------------------------------------------------------------------------------ permissions


def test_files_and_directories_follow_the_umask(tmp_path, umask022):
    with atomic_file(tmp_path / "f.bin") as f:
        f.write(b"x")
    assert _mode(tmp_path / "f.bin") == 0o644
    with atomic_directory(tmp_path / "d") as tmp:
        (tmp / "inside.txt").write_text("x")
    assert _mode(tmp_path / "d") == 0o755 and _mode(tmp_path / "d" / "inside.txt") == 0o644
    assert _mode(write_npz(tmp_path / "r.npz", {"a": np.ones(2)}, {"format": "x"})) == 0o644
    os.umask(0o077)
    assert _mode(write_bytes(tmp_path / "private.bin", b"x")) == 0o600


def test_bench_report_files_are_not_private(tmp_path, umask022):
    # bench/_report.py wrote through its own mkstemp: every report file came out 0600 whatever the umask
    from layersens.bench import _report

    _report.write_bytes(tmp_path / "report.md", b"# report\n")  # what write_report writes each file with
    assert _mode(tmp_path / "report.md") == 0o644
    assert (tmp_path / "report.md").read_bytes() == b"# report\n" and _listing(tmp_path) == ["report.md"]


def test_a_saved_model_directory_follows_the_umask(tmp_path, umask022):
    from tests.tiny_models import TinyCNN, random_linen_variables

    module = TinyCNN(features=3)
    path = layersens.save_model(
        tmp_path / "m",
        module,
        random_linen_variables(module, (6, 6, 1)),
        input_shape=(6, 6, 1),
        call_kwargs={"train": False},
    )
    assert _mode(path) == 0o755 and _mode(path / "layersens.json") == 0o644 and _mode(path / "state") == 0o755
    assert _listing(tmp_path) == ["m"]


# ------------------------------------------------------------------------------------------------ all or nothing


@pytest.mark.parametrize("interrupt", [ValueError("boom"), KeyboardInterrupt()], ids=["error", "interrupt"])
def test_a_failed_file_write_leaves_nothing_and_keeps_the_old_file(tmp_path, interrupt):
    with pytest.raises(type(interrupt)), atomic_file(tmp_path / "new.bin") as f:
        f.write(b"half")
        raise interrupt
    assert _listing(tmp_path) == []
    (tmp_path / "old.bin").write_bytes(b"old")
    with pytest.raises(type(interrupt)), atomic_file(tmp_path / "old.bin") as f:
        f.write(b"new")
        raise interrupt
    assert _listing(tmp_path) == ["old.bin"] and (tmp_path / "old.bin").read_bytes() == b"old"


@pytest.mark.parametrize("interrupt", [ValueError("boom"), KeyboardInterrupt()], ids=["error", "interrupt"])
def test_a_failed_directory_write_leaves_nothing_and_keeps_the_old_directory(tmp_path, interrupt):
    with pytest.raises(type(interrupt)), atomic_directory(tmp_path / "new") as tmp:
        (tmp / "a").write_text("half")
        raise interrupt
    assert _listing(tmp_path) == []
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "a").write_text("old")
    with pytest.raises(type(interrupt)), atomic_directory(tmp_path / "old") as tmp:
        (tmp / "b").write_text("new")
        raise interrupt
    assert _listing(tmp_path) == ["old"] and _listing(tmp_path / "old") == ["a"]


def test_a_directory_is_replaced_whole(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "stale.txt").write_text("old")
    with atomic_directory(tmp_path / "d") as tmp:
        (tmp / "fresh.txt").write_text("new")
    assert _listing(tmp_path) == ["d"] and _listing(tmp_path / "d") == ["fresh.txt"]


def test_a_write_error_is_one_output_error(tmp_path):
    def fails(*args):
        raise OSError(28, "No space left on device")

    message = r"cannot write .*r\.bin \(No space left on device\); nothing was written"
    with pytest.raises(OutputError, match=message), atomic_file(tmp_path / "r.bin") as f:
        fails(f)
    assert _listing(tmp_path) == []


def test_stale_partials_of_a_killed_write_are_removed_by_the_next(tmp_path):
    (tmp_path / ".r.npz.abc123.partial").write_bytes(b"left by kill -9")
    (tmp_path / ".m.xyz.partial").mkdir()  # a killed save_model
    (tmp_path / ".m.xyz.partial" / "state").mkdir()
    (tmp_path / ".other.npz.abc.partial").write_bytes(b"another target's: kept")
    write_bytes(tmp_path / "r.npz", b"new")
    with atomic_directory(tmp_path / "m") as tmp:
        (tmp / "a").write_text("x")
    assert _listing(tmp_path) == [".other.npz.abc.partial", "m", "r.npz"]


# ------------------------------------------------------------------------------------------------ symbolic links


def test_a_symlink_is_written_through(tmp_path):
    (tmp_path / "data").mkdir()
    link = tmp_path / "link.bin"
    link.symlink_to(tmp_path / "data" / "real.bin")  # dangling: its target is created
    write_bytes(link, b"first")
    assert link.is_symlink() and (tmp_path / "data" / "real.bin").read_bytes() == b"first"
    write_bytes(link, b"second")
    assert link.is_symlink() and (tmp_path / "data" / "real.bin").read_bytes() == b"second"
    assert _listing(tmp_path / "data") == ["real.bin"]


def test_a_symlink_loop_is_refused(tmp_path):
    (tmp_path / "loop.npz").symlink_to("loop.npz")
    (tmp_path / "a.npz").symlink_to("b.npz")
    (tmp_path / "b.npz").symlink_to("a.npz")
    for name in ("loop.npz", "a.npz"):
        with pytest.raises(OutputError, match=rf"{name} is a symbolic link that leads back to itself \(a loop\)"):
            resolve_target(tmp_path / name)
        with pytest.raises(OutputError, match="leads back to itself"):
            write_bytes(tmp_path / name, b"x")
    assert (tmp_path / "loop.npz").is_symlink() and _listing(tmp_path) == ["a.npz", "b.npz", "loop.npz"]


# ------------------------------------------------------------------------------------------------ check_output


def test_a_symlink_at_out_counts_as_existing_and_overwrite_writes_through(tmp_path):
    # defect 9: a dangling link was replaced without --overwrite, and with it the link itself was replaced
    target = tmp_path / "data" / "real.npz"
    target.parent.mkdir()
    link = tmp_path / "link.npz"
    link.symlink_to(target)
    with pytest.raises(
        OutputError,
        match=r"link\.npz \(a symbolic link to .*real\.npz\) already exists; pass "
        r"--overwrite",
    ):
        check_output(link)
    assert check_output(link, overwrite=True) == link
    (tmp_path / "loop.npz").symlink_to("loop.npz")
    for overwrite in (False, True):
        with pytest.raises(OutputError, match=r"loop\.npz is a symbolic link that leads back to itself"):
            check_output(tmp_path / "loop.npz", overwrite)


def test_a_symlink_at_out_through_the_command_line(tmp_path):
    target = tmp_path / "data" / "real.npz"
    target.parent.mkdir()
    link = tmp_path / "link.npz"
    link.symlink_to(target)
    result = CliRunner().invoke(main, FC2 + ["--out", str(link)])
    assert result.exit_code == 1 and "already exists; pass --overwrite" in result.stderr, result.output
    assert link.is_symlink() and not target.exists()
    result = CliRunner().invoke(main, FC2 + ["--out", str(link), "--overwrite"])
    assert result.exit_code == 0, result.output
    assert link.is_symlink() and target.is_file() and _listing(tmp_path / "data") == ["real.npz"]
    assert layersens.load_jacobian(link).layer == "fc2"


@pytest.mark.parametrize(
    "name, message",
    [
        (
            "x" * 300,
            (
                r"--out: the file name is 304 bytes long and this file system allows at most \d+; choose a "
                r"shorter name \(it starts 'xxxx"
            ),
        ),
        ("\r", r"--out '.*/\\r\.npz' contains control characters \('\\r'\); choose a printable file name"),
        ("a\nb.npz", r"contains control characters \('\\n'\)"),
        ("y" * 300 + "/r.npz", r"--out: the folder name is 300 bytes long"),
        # found by tests/test_fuzz.py: the file was written, then printing its name raised UnicodeEncodeError
        ("\udcff.npz", r"--out '.*/\\udcff\.npz' holds bytes that are not UTF-8 and cannot be printed; choose a"),
    ],
    ids=["300-characters", "carriage-return", "newline", "300-character-folder", "not-utf-8"],
)
def test_an_output_name_that_cannot_be_held_or_printed_is_refused(tmp_path, name, message):
    # defects 2 and 14: a 300-character name gave a 41-line traceback (OSError: [Errno 36] File name too long); a
    # lone control character was accepted, and the result could not be read back by the name reported
    with pytest.raises(OutputError, match=message):
        check_output(tmp_path / name)
    assert _listing(tmp_path) == []


def test_check_name_alone(tmp_path):
    check_name(tmp_path / ("z" * 200 + ".npz"))
    with pytest.raises(OutputError, match="--inputs: the file name is 400 bytes"):
        check_name(tmp_path / ("é" * 200), option="--inputs")


def _disk(free: int):
    return lambda path: shutil._ntuple_diskusage(10**12, 10**12 - free, free)


def test_a_full_disk_is_refused_by_check_output_given_the_size(tmp_path, monkeypatch):
    # defect 6: a full disk was detected only after the Jacobian was computed
    monkeypatch.setattr(shutil, "disk_usage", _disk(5 << 20))
    assert check_output(tmp_path / "r.npz", nbytes=1 << 20) == tmp_path / "r.npz"
    with pytest.raises(
        OutputError,
        match=r"--out .*r\.npz needs about 1\.0 GiB and only 5\.0 MiB is free on .*; "
        r"free space, choose another disk",
    ):
        check_output(tmp_path / "r.npz", nbytes=1 << 30)
    check_output(tmp_path / "r.npz")  # no size, no check
    with pytest.raises(OutputError, match="needs about 1.0 GiB"):
        check_free_space(tmp_path / "sub" / "r.npz", 1 << 30)


def test_a_full_disk_is_refused_before_the_jacobian_is_computed(tmp_path, monkeypatch):
    import layersens._extract as extract_module

    def computed(*args, **kwargs):
        raise AssertionError("the Jacobian was computed before the disk was checked")

    monkeypatch.setattr(shutil, "disk_usage", _disk(1000))
    monkeypatch.setattr(extract_module, "jacobian", computed)
    result = CliRunner().invoke(main, FC2 + ["--out", str(tmp_path / "r.npz")])
    assert result.exit_code == 1, result.output
    assert result.stderr.startswith("error: --out ") and "and only 1000 B is free on" in result.stderr
    assert _listing(tmp_path) == []


# ------------------------------------------------------------------------------------------------ reading back


@pytest.fixture(scope="module")
def other_results(tmp_path_factory):
    """The .npz files of `layersens gradient`, `hessian` and `products`, written by the library as those commands
    write them."""
    root = tmp_path_factory.mktemp("others")
    model = layersens.load_model(LENET_DIGITS)
    common = {"num_examples": 1, "wrt": ["fc2/bias"]}
    layersens.extract_readout(model, "fc2", out=root / "fc2_gradient.npz", **common)
    layersens.extract_readout(model, "fc2", hessian=True, out=root / "fc2_hessian.npz", **common)
    layersens.extract_products(model, "fc2", tangents=np.ones(10, np.float32), out=root / "fc2_products.npz", **common)
    return root


@pytest.mark.parametrize(
    "name, message",
    [
        (
            "fc2_gradient.npz",
            (
                r"fc2_gradient\.npz holds a readout gradient \(layersens-readout-gradient/1\), written "
                r"by `layersens gradient`, not a Jacobian; read its arrays \(values, gradient\) with "
                r"numpy\.load\("
            ),
        ),
        (
            "fc2_hessian.npz",
            (
                r"holds a readout Hessian and gradient \(layersens-readout-hessian/1\), written by "
                r"`layersens hessian`, not a Jacobian; read its arrays \(values, gradient, hessian\)"
            ),
        ),
        (
            "fc2_products.npz",
            (
                r"holds products with a Jacobian \(J V, Jᵀ U\) \(layersens-products/1\), written by "
                r"`layersens products`, not a Jacobian; read its arrays \(jvp\)"
            ),
        ),
    ],
)
def test_other_layersens_files_are_named_for_what_they_hold(other_results, name, message):
    # defect 10: load_jacobian and `layersens summarize` said "KeyError: 'matrix is not a file in the archive'"
    with pytest.raises(CheckpointError, match=message):
        layersens.load_jacobian(other_results / name)
    # `layersens summarize` reads each kind for what it is (issue 16): no error, no KeyError
    result = CliRunner().invoke(main, ["summarize", str(other_results / name)])
    assert result.exit_code == 0 and result.stderr == "", result.output
    assert "fc2" in result.output and "KeyError" not in result.output


def test_files_that_are_no_result_say_what_they_are(tmp_path):
    # defect 7: numpy's advice to "load it unsafely with allow_pickle" for anything that is not .npy/.npz
    (tmp_path / "notes.txt").write_text("a text file\n")
    (tmp_path / "empty.npz").write_bytes(b"")
    (tmp_path / "binary.npz").write_bytes(bytes(range(256)))
    np.save(tmp_path / "one.npy", np.ones(3))
    np.savez(tmp_path / "plain.npz", x=np.ones(3))
    cases = {
        "notes.txt": "it is a text file, not an .npz archive",
        "empty.npz": "it is an empty file",
        "binary.npz": "it is binary data in no NumPy format",
        "one.npy": "it is a single .npy array",
        "plain.npz": r"is an \.npz archive of arrays \['x'\] without layersens metadata",
    }
    for name, message in cases.items():
        with pytest.raises(CheckpointError, match=message) as e:
            read_npz(tmp_path / name, "layersens-jacobian/1", ("matrix",))
        assert "pickle" not in str(e.value)
    with pytest.raises(
        CheckpointError,
        match=r"/dev/zero is not a readable layersens result file: it is a "
        r"character device.*layersens extract --out FILE\.npz",
    ):
        layersens.load_jacobian("/dev/zero")
    write_npz(tmp_path / "future.npz", {"a": np.ones(1)}, {"format": "layersens-future/9"})
    with pytest.raises(
        CheckpointError,
        match=r"is not a layersens-jacobian/1 file \(its format is "
        r"'layersens-future/9'\)",
    ):
        layersens.load_jacobian(tmp_path / "future.npz")
