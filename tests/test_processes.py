"""bridge.processes: own process groups, stops in order, readiness waits, the TOML writer."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
import tomllib
from pathlib import Path

import pytest

from bridge.processes import (
    Children,
    StartFailed,
    start_python,
    stop_group,
    wait_for_line,
    wait_until,
    write_toml,
)

# A child that notes its SIGTERM in a file, then takes a moment to stop, as a server would.
SLOW_STOPPER = textwrap.dedent(
    """
    import signal, sys, time
    def stop(*_):
        with open(sys.argv[1], "a") as f:
            f.write(sys.argv[2] + "\\n")
        time.sleep(0.2)
        sys.exit(0)
    signal.signal(signal.SIGTERM, stop)
    print("ready", flush=True)
    while True:
        time.sleep(0.05)
    """
)

# A child whose own child ignores SIGTERM: only the SIGKILL to the group stops it.
STUBBORN_PARENT = textwrap.dedent(
    """
    import subprocess, sys, time
    grandchild = subprocess.Popen([sys.executable, "-c",
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"])
    print(grandchild.pid, flush=True)
    time.sleep(60)
    """
)


def alive(pid: int) -> bool:
    status = Path(f"/proc/{pid}/status")
    try:
        return "zombie" not in status.read_text()
    except OSError:
        return False


def test_a_child_leads_a_process_group_of_its_own():
    proc = start_python(["-c", "import time; time.sleep(30)"])
    try:
        assert os.getpgid(proc.pid) == proc.pid != os.getpgid(0)
        assert os.getsid(proc.pid) == proc.pid
    finally:
        stop_group(proc)
    assert proc.returncode is not None


def test_stop_all_stops_the_last_started_first(tmp_path):
    order = tmp_path / "order"
    children = Children(cwd=tmp_path)
    for name in ("redis", "web", "worker"):
        proc = children.spawn(name, "-c", SLOW_STOPPER, str(order), name, pipe_stdout=True)
        wait_for_line(proc, "ready", timeout=20)
    children.stop_all()
    assert order.read_text().split() == ["worker", "web", "redis"]
    assert not children.procs


def test_stop_kills_what_is_left_of_the_group(tmp_path):
    children = Children(logdir=tmp_path)
    proc = children.spawn("parent", "-c", STUBBORN_PARENT, pipe_stdout=True)
    grandchild = int(wait_for_line(proc, r"^\d+", timeout=20).group(0))
    assert alive(grandchild)
    children.stop("parent", timeout=1.0)
    deadline = time.monotonic() + 10  # hang guard
    while alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(grandchild)


def test_logs_go_to_one_file_per_child(tmp_path):
    children = Children(logdir=tmp_path)
    proc = children.spawn("talker", "-c", "import sys; print('out'); print('err', file=sys.stderr)")
    assert proc.wait(20) == 0
    assert (tmp_path / "talker.log").read_text().split() == ["out", "err"]


def test_waiting_stops_when_a_watched_child_exits(tmp_path):
    children = Children()
    children.spawn("quitter", "-c", "raise SystemExit(3)")
    with pytest.raises(StartFailed, match="quitter exited with 3"):
        wait_until(lambda: False, "something", timeout=20, watch=children)
    assert children.exited() == ("quitter", 3)


def test_a_line_that_never_comes_is_a_failed_start():
    proc = start_python(["-c", "print('no url here')"], stdout=subprocess.PIPE, text=True)
    with pytest.raises(StartFailed, match="before printing"):
        wait_for_line(proc, r"http://\S+", timeout=20)
    proc.wait(5)


def test_write_toml_escapes_strings_and_writes_tables_and_arrays_of_tables(tmp_path):
    data = {
        "oliai": {"api_key": 'quote " backslash \\ newline \n tab \t', "rate": 2.5, "on": True},
        "routes": [
            {
                "name": "leads",
                "secret": ["old", "new"],
                "fields": {"phoneNumber": "fields.phone", "odd key": "'hi-IN'"},
            },
            {"name": "more", "campaign": {"mode": "window", "every_minutes": 15}},
        ],
    }
    path = write_toml(tmp_path / "config.toml", data)
    assert tomllib.loads(path.read_text()) == data
    assert "[[routes]]" in path.read_text()


@pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_PDEATHSIG is Linux only")
def test_a_child_dies_with_its_parent(tmp_path):
    parent = start_python(
        [
            "-c",
            "import time; from bridge.processes import start_python; "
            "p = start_python(['-c', 'import time; time.sleep(60)']); "
            "print(p.pid, flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    child = int(wait_for_line(parent, r"^\d+", timeout=20).group(0))
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 10  # hang guard
    while alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(child)
