"""The launcher owns its job (issue 20, item 1): real `dmt train --hosts 2` processes, stopped from outside.

Before: SIGTERM or kill -9 of the launcher left both torchrun agents and all ranks running and still
writing to --out, and a --resume started next ran beside them. Now a SIGTERM stops everything and
exits 143; after a kill -9 the agents notice their launcher is gone and stop their ranks; after a
kill -9 of the agents too, the ranks notice theirs. Processes are found by the unique --out path in
their command line, so the test sees the agents and ranks even after they are re-parented.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dmt.cli import main

REPO = Path(__file__).resolve().parents[1]
STARTUP_S = 300.0  # two agents and two ranks importing torch on a busy 2-core machine


def _processes(token: str) -> dict[int, str]:
    """Live processes (not this one) whose command line contains ``token``: pid -> command line."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue  # ended meanwhile
        if token in cmdline:  # a zombie's command line is empty: it does not count
            found[int(entry.name)] = cmdline
    return found


def _until(condition, timeout: float, what: str) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f}s waiting for {what}"
        time.sleep(0.2)


def _start_training(data: Path, out: Path, log: Path) -> subprocess.Popen:
    """A long emulated 2x1 job; returns once its first checkpoint exists (so every rank is training).

    Its output goes to ``log``, not a pipe: surviving agents and ranks would hold a pipe open.
    """
    argv = ["--data", str(data), "--out", str(out), "--preset", "debug", "--batch-size", "16"]
    argv += ["--epochs", "1000", "--checkpoint-every", "5", "--hosts", "2", "--no-progress"]
    with open(log, "wb") as sink:
        launcher = subprocess.Popen(
            [sys.executable, "-m", "dmt.cli", "train", *argv], cwd=REPO, stdout=sink, stderr=subprocess.STDOUT
        )

    def training() -> bool:
        assert launcher.poll() is None, f"the job ended early: {log.read_text()[-2000:]}"
        return (out / "checkpoints" / "step_00000005").is_dir()

    _until(training, STARTUP_S, "the first checkpoint")
    procs = _processes(str(out))
    agents = [p for p, cmd in procs.items() if "dmt.distributed._torchrun" in cmd]
    assert len(agents) == 2 and len(procs) == 5, procs  # launcher, 2 agents, 2 ranks
    return launcher


@pytest.fixture(autouse=True)
def _no_leftovers(tmp_path):
    """Whatever the outcome, SIGKILL what this test started (found by its --out path), by pid."""
    yield
    for pid in _processes(str(tmp_path / "run")):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _lock_is_free(out: Path) -> bool:
    fd = os.open(out / ".lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


def test_sigterm_stops_agents_and_ranks_and_exits_143(synthetic_criteo, tmp_path, capsys):
    out, log = tmp_path / "run", tmp_path / "log"
    launcher = _start_training(synthetic_criteo, out, log)
    try:
        # A --resume started beside the running job is refused: the directory is locked.
        resume = ["train", "--data", str(synthetic_criteo), "--out", str(out), "--preset", "debug", "--resume"]
        assert main([*resume, "--batch-size", "16", "--hosts", "2", "--no-progress"]) == 2
        assert "is in use by another run" in capsys.readouterr().err
        launcher.send_signal(signal.SIGTERM)
        launcher.wait(timeout=180)
    finally:
        launcher.kill()
    assert launcher.returncode == 128 + signal.SIGTERM, log.read_text()[-2000:]
    assert "dmt train: stopped by SIGTERM" in log.read_text()
    assert _processes(str(out)) == {}  # nothing left that could write to --out
    assert _lock_is_free(out)


def test_kill9_of_the_launcher_stops_agents_and_ranks(synthetic_criteo, tmp_path):
    out = tmp_path / "run"
    launcher = _start_training(synthetic_criteo, out, tmp_path / "log")
    launcher.kill()  # SIGKILL: the launcher cannot clean up; its agents must notice
    launcher.wait()
    _until(lambda: not _processes(str(out)), 120, "the agents and ranks to stop")
    # A rank that is exiting may hold the inherited lock fd a moment after its command line is gone.
    _until(lambda: _lock_is_free(out), 30, "the run directory's lock to be released")


@pytest.mark.slow
def test_kill9_of_launcher_and_agents_stops_the_ranks(synthetic_criteo, tmp_path):
    out = tmp_path / "run"
    launcher = _start_training(synthetic_criteo, out, tmp_path / "log")
    agents = [p for p, cmd in _processes(str(out)).items() if "dmt.distributed._torchrun" in cmd]
    launcher.kill()
    for pid in agents:
        os.kill(pid, signal.SIGKILL)
    launcher.wait()
    _until(lambda: not _processes(str(out)), 60, "the orphaned ranks to stop")
