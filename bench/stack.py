"""The stack under test: the OliAI sandbox, the web app and RQ workers as child processes.

Started and stopped through ``bridge.processes`` (a process group each, SIGTERM then SIGKILL,
the last started first), configured the way ``tests/bridge_fixtures.py`` configures its stack.
Also the run's clock (``say``) and its stop flag (``STOP``), which every loop checks.
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from redis import Redis

from bridge.processes import (
    Children,
    StartFailed,
    wait_for_line,
    wait_for_url,
    wait_until,
    write_toml,
)
from bridge.storage import EmbeddedRedis, free_port

REPO = Path(__file__).resolve().parents[1]
API_KEY = "sk_live_" + "benchmark".ljust(32, "7")
ROUTE = "bench"
TOKEN = "bench-route-token-0123456789"
STOP = threading.Event()  # set on Ctrl-C: every client loop checks it
T0 = time.monotonic()


def say(msg: str) -> None:
    print(f"[{time.monotonic() - T0:7.1f}s] {msg}", flush=True)


@contextmanager
def bench_stack(
    prefix: str, *, keep: bool, fsync: str = "always", api_latency_ms: float = 0.0
) -> Iterator[Stack]:
    """A temp dir (``logs/`` inside), an embedded Redis started in it and the ``Stack`` over
    them, for one benchmark run. However the run ends (Ctrl-C and SIGTERM arrive as
    ``KeyboardInterrupt``), every loop is told to stop, every child process is stopped, then
    Redis; the temp dir goes unless ``keep`` is set or the run did not finish (then its path is
    printed, with the children's logs and the AOF)."""

    def on_term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with it ignored
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    (tmp / "logs").mkdir()
    children = Children(cwd=REPO, logdir=tmp / "logs")
    redis_server = EmbeddedRedis(tmp / "redis", fsync=fsync)
    finished = False
    try:
        redis_server.start()
        redis = Redis.from_url(redis_server.url)
        yield Stack(tmp, children, redis_server, redis, api_latency_ms)
        finished = True
    except KeyboardInterrupt:
        say("interrupted: stopping every child process")
        raise
    finally:
        STOP.set()
        children.stop_all()
        redis_server.stop()
        if finished and not keep:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"logs and data kept in {tmp}", file=sys.stderr)


def bench_route() -> dict:
    return {
        "name": ROUTE,
        "source": "generic",
        "token": TOKEN,
        "audience_name": "Benchmark leads",
        "on_duplicate": "update",
        # The benchmark measures throughput, not the quota (bench/floods.py measures that).
        "max_requests_per_minute": 1_000_000,
    }


@dataclass
class Stack:
    tmp: Path
    children: Children
    redis_server: EmbeddedRedis
    redis: Redis
    api_latency_ms: float
    sandbox_url: str = ""  # .../v1
    sandbox_root: str = ""
    web_url: str = ""
    config: Path | None = None
    worker_names: list[str] = field(default_factory=list)
    worker_seq: itertools.count = field(default_factory=lambda: itertools.count(1))

    # config ----------------------------------------------------------------------------------

    def write_config(self, filename: str, oliai: dict) -> None:
        """The bridge's config for the next start of web and workers: one generic route."""
        self.config = write_toml(self.tmp / filename, {"oliai": oliai, "routes": [bench_route()]})

    # sandbox ---------------------------------------------------------------------------------

    def start_sandbox(self, *extra: str) -> None:
        self.children.stop("sandbox")
        proc = self.children.spawn(
            "sandbox",
            "-m",
            "sandbox",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--keys",
            API_KEY,
            "--seed",
            "1",
            "--latency-ms",
            str(self.api_latency_ms),
            "--quiet",
            *extra,
            env=self.base_env(),
            pipe_stdout=True,
        )
        try:
            self.sandbox_url = wait_for_line(proc, r"http://\S+/v1", timeout=30).group(0)
        except StartFailed as exc:
            raise RuntimeError(f"sandbox did not start ({exc}); see {self.tmp}/logs") from None
        self.sandbox_root = self.sandbox_url.removesuffix("/v1")

    # bridge ----------------------------------------------------------------------------------

    def base_env(self) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("REDIS_URL", "OLIAI_API_KEY", "OLIAI_BASE_URL", "BRIDGE_CONFIG", "PORT")
        }
        env["PYTHONPATH"] = str(REPO)
        return env

    def bridge_env(self) -> dict[str, str]:
        return {
            **self.base_env(),
            "BRIDGE_CONFIG": str(self.config),
            "REDIS_URL": self.redis_server.url,
            "OLIAI_BASE_URL": self.sandbox_url,
            "OLIAI_API_KEY": API_KEY,
            "WEB_CONCURRENCY": "2",
            "LOG_LEVEL": "INFO",
        }

    def start_web(self) -> None:
        self.children.stop("web")
        port = free_port()
        env = {**self.bridge_env(), "PORT": str(port)}
        self.children.spawn("web", "-m", "bridge", "web", "--host", "127.0.0.1", env=env)
        self.web_url = f"http://127.0.0.1:{port}"
        try:
            wait_for_url(f"{self.web_url}/readyz", timeout=30, watch=self.children)
        except StartFailed as exc:
            raise RuntimeError(f"web did not get ready ({exc}); see {self.tmp}/logs") from None

    def start_workers(self, count: int) -> None:
        from rq import Worker

        self.stop_workers()
        env = self.bridge_env()
        names = []
        for _ in range(count):
            n = next(self.worker_seq)
            name = f"bench-w{n}-{os.getpid()}"
            self.children.spawn(f"worker{n}", "-m", "bridge", "worker", "--name", name, env=env)
            names.append((f"worker{n}", name))
        self.worker_names = [proc_name for proc_name, _ in names]

        def registered() -> bool:
            live = {w.name for w in Worker.all(connection=self.redis)}
            return all(name in live for _, name in names)

        try:
            wait_until(registered, "workers registered with RQ", timeout=30, watch=self.children)
        except StartFailed as exc:
            raise RuntimeError(f"{exc}; see {self.tmp}/logs") from None

    def stop_workers(self) -> None:
        """All at once (RQ's warm shutdown), then wait for each."""
        self.children.stop(*self.worker_names)
        self.worker_names = []

    # where they are, for CPU accounting ------------------------------------------------------

    def pgid(self, name: str) -> int:
        return self.children[name].pid  # each child leads a process group of its own

    def worker_pgids(self) -> list[int]:
        return [self.pgid(n) for n in self.worker_names]
