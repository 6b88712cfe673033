"""A benchmark stops every process it started when it is stopped (bench/procs.py: bench/run installs it, and
each benchmark run on its own, `python bench/NAME.py`, runs in `procs.guarded()`): a
direct child, a daemon that left its session and was re-parented when its parent exited, and one that ignores
SIGTERM are all gone once the run has exited after a SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# A stand-in for bench/run: the same install()/reap() around a "benchmark" that starts three kinds of process
# and waits to be stopped. It prints their PIDs, one line, once all three exist.
DRIVER = r"""
import os, signal, subprocess, sys
sys.path.insert(0, sys.argv[1])
from bench import procs

with procs.guarded(grace=1.0):
    child = subprocess.Popen(["sleep", "300"])
    stubborn = subprocess.Popen(["sh", "-c", "trap '' TERM; echo ready; exec sleep 300"], stdout=subprocess.PIPE,
                                text=True)
    assert stubborn.stdout is not None and stubborn.stdout.readline() == "ready\n"
    # a daemon: its own session, and its parent exits at once, so it is re-parented away from this process
    spawner = subprocess.run([sys.executable, "-c",
                              "import subprocess; print(subprocess.Popen(['sleep', '300'], "
                              "start_new_session=True, stdout=subprocess.DEVNULL, "
                              "stderr=subprocess.DEVNULL).pid)"], capture_output=True, text=True, check=True)
    print(child.pid, stubborn.pid, int(spawner.stdout), flush=True)
    signal.pause()
"""


def _running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return False
    return stat[stat.rfind(b")") + 2:][:1] != b"Z"


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGINT])
def test_a_stopped_run_leaves_no_process_behind(how: signal.Signals) -> None:
    run = subprocess.Popen([sys.executable, "-c", DRIVER, str(ROOT)], stdout=subprocess.PIPE, text=True)
    try:
        assert run.stdout is not None
        pids = [int(x) for x in run.stdout.readline().split()]
        assert len(pids) == 3 and all(_running(p) for p in pids)
        daemon = pids[2]
        assert int(Path(f"/proc/{daemon}/stat").read_text().rsplit(")", 1)[1].split()[1]) != run.pid
        run.send_signal(how)
        # SystemExit(143) for SIGTERM; an uncaught KeyboardInterrupt ends Python by SIGINT, as a shell expects
        assert run.wait(30) == (143 if how == signal.SIGTERM else -signal.SIGINT)
        assert [p for p in pids if _running(p)] == []
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()


def test_leftovers_are_only_this_runs_processes() -> None:
    """Processes carrying another run's token are not this run's, however they are related to it."""
    sys.path.insert(0, str(ROOT))
    from bench import procs

    started: list[subprocess.Popen[bytes]] = []
    try:
        for token in ("mine", "someone-else", "mine"):
            started.append(subprocess.Popen(["sleep", "300"], env={**os.environ, procs.ENV: token},
                                            start_new_session=True))
        root, other, mine = started  # `root` stands for the run's own process: it has no children
        found = procs.leftovers("mine", root=root.pid)
        assert mine.pid in found and other.pid not in found and root.pid not in found
    finally:
        for p in started:
            p.kill()
            p.wait()
