"""Ctrl-C: at any moment of a command-line run (start-up, JAX's import, loading, compiling, computing) it ends the
run with exit code 130, one line, and nothing written, even where a library swallows the KeyboardInterrupt."""

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from layersens import _interrupt
from layersens._atomic import atomic_directory, atomic_file
from layersens.examples import LENET_DIGITS

MESSAGE = "error: interrupted; nothing was written."
main_thread_only = pytest.mark.skipif(
    threading.current_thread() is not threading.main_thread(),
    reason="signal handlers can only be set in the main thread",
)


@pytest.fixture
def installed():
    previous = _interrupt.install()
    yield
    _interrupt.uninstall(previous)


def _swallowed_ctrl_c():
    """Ctrl-C arriving where a library catches it (a gc callback, a thread): the exception is lost."""
    try:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.1)  # the handler runs in this thread at the next bytecode
    except KeyboardInterrupt:
        pass


@main_thread_only
def test_a_swallowed_interrupt_still_stops_the_write(installed, tmp_path):
    _swallowed_ctrl_c()
    assert _interrupt.interrupted()
    with pytest.raises(KeyboardInterrupt), atomic_file(tmp_path / "r.npz") as f:
        f.write(b"a result")
    with pytest.raises(KeyboardInterrupt), atomic_directory(tmp_path / "model") as folder:
        (folder / "state").write_bytes(b"a checkpoint")
    assert list(tmp_path.iterdir()) == []  # neither the targets nor their temporaries


@main_thread_only
def test_deferred_records_and_raises_at_the_end(installed):
    reached = False
    with pytest.raises(KeyboardInterrupt), _interrupt.deferred():
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.1)
        reached = True
    assert reached


def test_without_the_handler_nothing_is_recorded(tmp_path):
    assert not _interrupt.interrupted()
    _interrupt.raise_if_interrupted()
    with atomic_file(tmp_path / "r.npz") as f:
        f.write(b"a result")
    assert (tmp_path / "r.npz").read_bytes() == b"a result"


def test_ctrl_c_at_any_moment_exits_130_with_one_line_and_no_file(tmp_path):
    """Before the handler, Ctrl-C in the first seconds was swallowed by JAX's gc callback (the run went on, exited 0
    and wrote its result), aborted the process inside jaxlib's start-up (SIGABRT), or printed a traceback."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    interrupted = []
    for delay in (0.3, 1.0, 2.0, 4.0):  # start-up, JAX's import, loading, compiling/computing
        out = tmp_path / f"r{delay}.npz"
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "layersens",
                "extract",
                "--layer",
                "relu1",
                "--num-examples",
                "16",
                "--model",
                str(LENET_DIGITS),
                "--out",
                str(out),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=tmp_path,
        )
        time.sleep(delay)
        if proc.poll() is not None:  # a fast machine finished before this delay: nothing left to interrupt
            proc.communicate()
            out.unlink(missing_ok=True)
            continue
        proc.send_signal(signal.SIGINT)
        sent = time.monotonic()
        stdout, stderr = proc.communicate(timeout=120)
        if proc.returncode == 0 and "wrote" in stdout and time.monotonic() - sent < 0.5 and delay > 1:
            out.unlink()  # the result was in place as the signal came: only printing was left
            continue
        assert (proc.returncode, stderr) == (130, MESSAGE + "\n"), (delay, proc.returncode, stderr[-2000:], stdout)
        assert "wrote" not in stdout
        assert list(tmp_path.iterdir()) == [], delay  # no result, no temporary
        interrupted.append(delay)
    assert interrupted[:2] == [0.3, 1.0]  # no machine imports JAX and computes within a second
