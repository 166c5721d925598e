"""README command 1 as a new user meets it: ``oliai-bridge dev`` in an empty folder."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from bridge.storage import free_port
from sandbox import DEMO_KEY

pytestmark = pytest.mark.e2e

#: Seconds before a step counts as hung; generous, for a busy 2-core machine.
HANG_GUARD = 60


def descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.add(child)
            todo.append(child)
    return out


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/status")
    return status.exists() and "zombie" not in status.read_text()


def test_dev_runs_everything_and_ctrl_c_stops_everything_in_order(tmp_path):
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("REDIS_URL", "OLIAI_API_KEY", "OLIAI_BASE_URL", "BRIDGE_CONFIG")
    }
    port, sandbox_port = free_port(), free_port()
    log = tmp_path / "dev.log"
    out = open(log, "w+")  # noqa: SIM115
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bridge",
            "dev",
            "--port",
            str(port),
            "--sandbox-port",
            str(sandbox_port),
        ],
        cwd=tmp_path,
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # a process group of its own, as a shell gives a command
    )
    try:
        deadline = time.monotonic() + HANG_GUARD
        while "oliai-bridge is running" not in log.read_text():
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, f"hang guard: not started\n{log.read_text()}"
            time.sleep(0.1)
        banner = log.read_text()
        hook = re.search(r"curl -sS -X POST (\S+)", banner).group(1)
        sandbox_url = re.search(r"'(http://\S+/v1)/contacts", banner).group(1)
        assert (tmp_path / ".bridge-data" / "redis" / "appendonly.aof").exists() or any(
            (tmp_path / ".bridge-data" / "redis").glob("appendonly*")
        )
        children = descendants(proc.pid)
        assert len(children) >= 4  # redis, sandbox, web (+ its workers), worker

        r = requests.post(
            hook,
            json={"name": "Priya Sharma", "phone": "098765 43210", "city": "Mumbai"},
            timeout=5,
        )
        assert r.status_code == 202, r.text
        status_url = f"http://127.0.0.1:{port}/deliveries/{r.json()['deliveryId']}"
        deadline = time.monotonic() + HANG_GUARD
        while (status := requests.get(status_url, timeout=5).json())["status"] != "delivered":
            assert status["status"] in ("queued", "delivering", "retrying"), status
            assert time.monotonic() < deadline, f"hang guard: not delivered: {status}"
            time.sleep(0.1)
        found = requests.get(
            f"{sandbox_url}/contacts",
            params={"search": "+919876543210"},
            headers={"x-api-key": DEMO_KEY},
            timeout=5,
        ).json()["data"]
        assert [c["name"] for c in found] == ["Priya Sharma"]

        # Ctrl-C in a terminal: SIGINT to the whole foreground process group.
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(HANG_GUARD)  # a hang guard, not a speed claim
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    deadline = time.monotonic() + 10  # hang guard: dev waits for its children before exiting
    while any(alive(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in children if alive(pid)], "dev left processes running"
    assert proc.returncode in (0, 130)
    output = log.read_text()
    # Redis went last: no worker lost its connection, nothing crashed on the way down.
    assert not [line for line in output.splitlines() if "ERROR" in line or "Traceback" in line], (
        output
    )
