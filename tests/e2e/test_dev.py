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


def test_dev_runs_everything_and_ctrl_c_stops_everything(tmp_path):
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("REDIS_URL", "OLIAI_API_KEY", "OLIAI_BASE_URL", "BRIDGE_CONFIG")
    }
    port, sandbox_port = free_port(), free_port()
    out = open(tmp_path / "dev.log", "w+")  # noqa: SIM115
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
    )
    try:
        deadline = time.monotonic() + 60
        while "oliai-bridge is running" not in (tmp_path / "dev.log").read_text():
            assert proc.poll() is None, (tmp_path / "dev.log").read_text()
            assert time.monotonic() < deadline, (tmp_path / "dev.log").read_text()
            time.sleep(0.1)
        banner = (tmp_path / "dev.log").read_text()
        hook = re.search(r"curl -sS -X POST (\S+)", banner).group(1)
        sandbox_url = re.search(r"'(http://\S+/v1)/contacts", banner).group(1)
        assert (tmp_path / ".bridge-data" / "redis" / "appendonly.aof").exists() or any(
            (tmp_path / ".bridge-data" / "redis").glob("appendonly*")
        )
        children = descendants(proc.pid)
        assert len(children) >= 4  # redis, sandbox, web (+ its workers), worker

        started = time.monotonic()
        r = requests.post(
            hook,
            json={"name": "Priya Sharma", "phone": "098765 43210", "city": "Mumbai"},
            timeout=5,
        )
        assert r.status_code == 202, r.text
        found = []
        while time.monotonic() - started < 2.0 and not found:
            # poll gently: the sandbox allows this key 60 requests a minute, the bridge included
            time.sleep(0.1)
            found = requests.get(
                f"{sandbox_url}/contacts",
                params={"search": "+919876543210"},
                headers={"x-api-key": DEMO_KEY},
                timeout=2,
            ).json()["data"]
        assert found and found[0]["name"] == "Priya Sharma", "not in the sandbox within 2 s"
        status_url = f"http://127.0.0.1:{port}/deliveries/{r.json()['deliveryId']}"
        while requests.get(status_url, timeout=2).json()["status"] != "delivered":
            assert time.monotonic() - started < 5.0, requests.get(status_url, timeout=2).json()
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    deadline = time.monotonic() + 5
    while any(alive(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in children if alive(pid)], "dev left processes running"
    assert proc.returncode in (0, 130)
