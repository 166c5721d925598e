"""What ``oliai-bridge web`` asks of gunicorn, seen from outside: several bridges on one machine
(a test run, a staging and a production copy) do not fight over a per-user control socket."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

from bridge.storage import free_port


def start_web(tmp_path: Path, redis_server, name: str) -> tuple[subprocess.Popen, int]:
    port = free_port()
    env = {
        **os.environ,
        "HOME": str(tmp_path / "home"),
        "REDIS_URL": redis_server.url,
        "OLIAI_API_KEY": "sk_live_" + "w" * 32,
        "OLIAI_BASE_URL": "http://127.0.0.1:9/v1",
        "PORT": str(port),
        "WEB_CONCURRENCY": "1",
        "BRIDGE_CONFIG_TOML": '[[routes]]\nname = "leads"\nsource = "generic"\n'
        'audience_name = "Leads"\n',
    }
    (tmp_path / "home").mkdir(exist_ok=True)
    out = (tmp_path / f"{name}.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "bridge", "web", "--host", "127.0.0.1"],
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    for _ in range(200):
        try:
            if requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1).ok:
                return proc, port
        except requests.ConnectionError:
            time.sleep(0.1)
    proc.kill()
    raise AssertionError((tmp_path / f"{name}.log").read_text())


def test_two_bridges_run_side_by_side_without_a_shared_control_socket(tmp_path, redis_server):
    procs = []
    try:
        for name in ("one", "two"):
            procs.append(start_web(tmp_path, redis_server, name))
        for _, port in procs:
            assert requests.get(f"http://127.0.0.1:{port}/healthz", timeout=5).ok
        assert not (tmp_path / "home" / ".gunicorn").exists()
        for name in ("one", "two"):
            assert "control" not in (tmp_path / f"{name}.log").read_text().lower()
    finally:
        for proc, _ in procs:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
