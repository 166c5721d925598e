"""Fixtures that run the OliAI sandbox as a real subprocess and hand each test a clean one.

``sandbox_server`` (session) starts ``python -m sandbox --port 0`` with two organizations, a
revoked and an expired key and a 2-second rate window, and stops it at the end. ``sandbox``
(function) resets its data, request log, rate windows and runtime config before each test and
gives the test a small handle (``base_url``, ``root``, ``keys``, ``configure``, ``requests``,
``state``, ``client``).
"""

from __future__ import annotations

import re
import selectors
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

from jobs.oliai import OliAIClient

REPO_ROOT = Path(__file__).resolve().parents[1]
KEYS = ["sk_live_" + "orgonetest".ljust(32, "1"), "sk_live_" + "orgtwotest".ljust(32, "2")]
REVOKED_KEY = "sk_live_" + "revoked".ljust(32, "3")
EXPIRED_KEY = "sk_live_" + "expired".ljust(32, "4")
RATE_WINDOW = 2.0
START_TIMEOUT = 20.0


@dataclass
class SandboxServer:
    """The running sandbox process: where it listens and the config it started with."""

    process: subprocess.Popen
    base_url: str
    root: str
    start_line: str
    defaults: dict = field(default_factory=dict)


@pytest.fixture(scope="session")
def sandbox_server():
    stderr = tempfile.TemporaryFile()
    command = [
        sys.executable,
        "-m",
        "sandbox",
        "--port",
        "0",
        "--rate-window",
        str(RATE_WINDOW),
        "--keys",
        ",".join(KEYS),
        "--revoked-keys",
        REVOKED_KEY,
        "--expired-keys",
        EXPIRED_KEY,
        "--seed",
        "1234",
        "--import-delay-ms",
        "50",
        "--quiet",
    ]
    process = subprocess.Popen(
        command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=stderr, text=True
    )
    try:
        line = _first_line(process, stderr)
        match = re.search(r"http://\S+/v1", line)
        assert match, f"no URL in the sandbox's start line: {line!r}"
        base_url = match.group(0)
        root = base_url.removesuffix("/v1")
        defaults = requests.get(f"{root}/_sandbox/config", timeout=5).json()
        yield SandboxServer(process, base_url, root, line, defaults)
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        stderr.close()


def _first_line(process: subprocess.Popen, stderr: Any) -> str:
    selector = selectors.DefaultSelector()
    selector.register(process.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + START_TIMEOUT
    try:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                break
            if selector.select(timeout=0.1):
                return process.stdout.readline()
    finally:
        selector.close()
    stderr.seek(0)
    raise RuntimeError(f"sandbox did not start: {stderr.read().decode(errors='replace')}")


class SandboxHandle:
    """What a test needs to drive and inspect a freshly reset sandbox."""

    def __init__(self, server: SandboxServer):
        self.base_url = server.base_url
        self.root = server.root
        self.keys = list(KEYS)
        self.revoked_key = REVOKED_KEY
        self.expired_key = EXPIRED_KEY
        # The n-th key of --keys owns org_n.
        self.orgs = {key: f"org_{n}" for n, key in enumerate(KEYS, start=1)}
        self._clients: list[OliAIClient] = []

    def configure(self, **options: Any) -> dict:
        response = requests.post(f"{self.root}/_sandbox/config", json=options, timeout=5)
        response.raise_for_status()
        return response.json()

    def requests(self, since: float | None = None) -> list[dict]:
        params = {"since": since} if since is not None else None
        response = requests.get(f"{self.root}/_sandbox/requests", params=params, timeout=5)
        response.raise_for_status()
        return response.json()

    def state(self) -> dict:
        response = requests.get(f"{self.root}/_sandbox/state", timeout=5)
        response.raise_for_status()
        return response.json()

    def org_state(self, key: str | None = None) -> dict:
        return self.state()["orgs"][self.orgs[key or self.keys[0]]]

    def client(self, key: str | None = None, **kw: Any) -> OliAIClient:
        client = OliAIClient(self.base_url, key or self.keys[0], **kw)
        self._clients.append(client)
        return client

    def raw(self, method: str, path: str, *, key: str | None = None, **kw: Any):
        """A plain HTTP request, for what the client hides (headers, exact bodies)."""
        headers = kw.pop("headers", {})
        headers.setdefault("x-api-key", key or self.keys[0])
        return requests.request(method, self.base_url + path, headers=headers, timeout=10, **kw)

    def close(self) -> None:
        for client in self._clients:
            client.close()


@pytest.fixture
def sandbox(sandbox_server: SandboxServer):
    requests.post(f"{sandbox_server.root}/_sandbox/reset", timeout=5).raise_for_status()
    handle = SandboxHandle(sandbox_server)
    handle.configure(**sandbox_server.defaults)
    yield handle
    handle.close()
