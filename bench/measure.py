"""The measurements: the five sections of a run, each returning its raw numbers as a dict.

Deliveries are observed in Redis (their hashes and histories, the bridge's own counters), API
calls in the sandbox's request log and CPU in /proc, per process group of the stack.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import signal
import threading
import time
from collections.abc import Iterator

import requests
from redis import Redis

from bench.load import Leads, run_load
from bench.stack import ROUTE, STOP, TOKEN, Stack, say
from bridge import keys


def pct(values: list[float], p: float) -> float:
    """Percentile by linear interpolation between closest ranks (p in 0..100)."""
    if not values:
        return float("nan")
    xs = sorted(values)
    k = (len(xs) - 1) * p / 100.0
    lo, hi = math.floor(k), math.ceil(k)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def iso_epoch(value: str) -> float:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def group_stats(pgid: int) -> Iterator[tuple[str, list[str]]]:
    """(pid, the fields of /proc/<pid>/stat after the name) of every live process in a process
    group (Linux /proc): the state is field 3, the group 5, user and system CPU 14 and 15."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                stat = fh.read()
        except OSError:
            continue
        fields_ = stat[stat.rindex(")") + 2 :].split()
        if int(fields_[2]) == pgid:
            yield entry, fields_


def group_cpu_seconds(pgid: int) -> float:
    """User+system CPU of every live process in a process group (Linux /proc)."""
    return sum(_cpu_seconds(fields) for _, fields in group_stats(pgid))


def group_usage(pgid: int) -> tuple[float, int]:
    """``group_cpu_seconds`` and how many times the same processes have blocked (gave up the
    CPU to wait: their voluntary context switches), read in one pass over /proc. A server that
    waits for Redis with nothing else to do blocks; one that always has a request ready does
    not."""
    cpu, waits = 0.0, 0
    for pid, fields in group_stats(pgid):
        cpu += _cpu_seconds(fields)
        try:
            with open(f"/proc/{pid}/status") as fh:
                status = fh.read()
        except OSError:  # gone since its stat was read
            continue
        waits += int(status.split("voluntary_ctxt_switches:")[1].split()[0])
    return cpu, waits


def _cpu_seconds(fields: list[str]) -> float:
    """User+system CPU of one process, from ``group_stats``' fields."""
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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


# --- observing the stack ---------------------------------------------------------------------


def cpu_snapshot(stack: Stack) -> dict[str, float]:
    snap = {
        "web (gunicorn)": group_cpu_seconds(stack.pgid("web")),
        "workers": sum(group_cpu_seconds(p) for p in stack.worker_pgids()),
        "sandbox": group_cpu_seconds(stack.pgid("sandbox")),
        "redis": pid_cpu_seconds(stack.redis_server.proc.pid),
    }
    t = os.times()
    snap["bench client"] = t.user + t.system
    snap["other processes"] = system_busy_seconds() - sum(snap.values())
    return snap


def statuses(redis: Redis, ids: list[str]) -> list[str | None]:
    pipe = redis.pipeline(transaction=False)
    for i in ids:
        pipe.hget(keys.delivery(i), "status")
    return [s.decode() if s else None for s in pipe.execute()]


def delivery_field(redis: Redis, ids: list[str], name: str) -> list[str | None]:
    pipe = redis.pipeline(transaction=False)
    for i in ids:
        pipe.hget(keys.delivery(i), name)
    return [s.decode() if s else None for s in pipe.execute()]


def histories(redis: Redis, ids: list[str]) -> list[list[dict]]:
    from bridge.deliveries import DeliveryStore

    store = DeliveryStore(redis)
    out = []
    for start in range(0, len(ids), 500):
        out += store.histories(ids[start : start + 500])
    return out


def commands_processed(redis: Redis) -> int:
    return int(redis.info("stats")["total_commands_processed"])


def command_calls(redis: Redis) -> dict[str, int]:
    stats = redis.info("commandstats")
    return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()}


def finished_count(redis: Redis) -> int:
    """Deliveries of our route that reached an end (the bridge's own counters, one HGETALL:
    cheaper than polling every delivery, so it does not skew Redis numbers)."""
    from bridge.metrics import read_counters

    return sum(
        v
        for k, v in read_counters(redis).items()
        if k.split("|")[0] in ("delivered", "failed", "skipped") and f"|{ROUTE}" in k
    )


def wait_finished(redis: Redis, base: int, count: int, timeout: float, interval=0.05) -> float:
    """Wait until ``count`` more deliveries finished; returns when (epoch), or NaN."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not STOP.is_set():
        if finished_count(redis) - base >= count:
            return time.time()
        time.sleep(interval)
    return float("nan")


def wait_delivered(redis: Redis, ids: list[str], timeout: float, interval: float = 0.05) -> dict:
    """Poll until every id is terminal; returns {id: (status, seen_at_epoch)}."""
    remaining = list(ids)
    seen: dict[str, tuple[str, float]] = {}
    deadline = time.monotonic() + timeout
    while remaining and time.monotonic() < deadline and not STOP.is_set():
        now = time.time()
        still = []
        for i, status in zip(remaining, statuses(redis, remaining), strict=True):
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


def sandbox_requests(stack: Stack, since: float | None = None) -> list[dict]:
    params = {"since": since} if since is not None else None
    r = requests.get(f"{stack.sandbox_root}/_sandbox/requests", params=params, timeout=30)
    r.raise_for_status()
    return r.json()


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
    cpu0 = cpu_snapshot(stack)
    cmd0 = commands_processed(stack.redis)
    p = run_load(hook, count, clients, leads.take(count))
    cpu1 = cpu_snapshot(stack)
    cmds = commands_processed(stack.redis) - cmd0
    accepted = p.ok(202)
    stored = sum(1 for s in statuses(stack.redis, p.ids) if s == "queued")
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
        _e2e_warm_up(stack, s, hook, leads, workers)
        say(f"e2e: {workers} worker(s): {count} leads, one at a time at {rate:g}/s")
        track = _E2eTrack()
        th = threading.Thread(target=_e2e_poll, args=(stack.redis, track), daemon=True)
        th.start()
        bodies = leads.take(count)
        post_lat = _e2e_post_paced(s, hook, bodies, rate, track)
        track.posting_done.set()
        th.join(60)
        with track.lock:
            missing = len(track.pending)
        lat = list(track.result.values())
        server = _server_latencies(stack.redis, list(track.result))
        return {
            "workers": workers,
            "count": count,
            "rate": rate,
            "delivered": len(lat),
            "not_delivered": missing + len(track.bad),
            "p50": pct(lat, 50),
            "p95": pct(lat, 95),
            "max": max(lat) if lat else float("nan"),
            "post_p50": pct(post_lat, 50),
            "server_p50": pct(server, 50),
            "server_p95": pct(server, 95),
        }
    finally:
        s.close()


class _E2eTrack:
    """Leads posted and not yet settled, and how each one settled; shared with the poller."""

    def __init__(self) -> None:
        self.pending: dict[str, float] = {}  # delivery id -> when its 202 came back
        self.result: dict[str, float] = {}  # delivery id -> seconds from 202 to delivered
        self.bad: dict[str, str] = {}
        self.lock = threading.Lock()
        self.posting_done = threading.Event()


def _e2e_warm_up(stack: Stack, s: requests.Session, hook: str, leads: Leads, workers: int) -> None:
    """A few leads through the whole path (imports, connections, audience cache)."""
    warm = []
    for body in leads.take(3 * workers):
        r = s.post(hook, json=body, timeout=30)
        r.raise_for_status()
        warm.append(r.json()["deliveryId"])
    wait_delivered(stack.redis, warm, timeout=30)


def _e2e_poll(redis: Redis, track: _E2eTrack) -> None:
    """Settle pending leads as they finish, until posting is done and none are left (or 30 s)."""
    deadline = None
    while not STOP.is_set():
        with track.lock:
            ids = list(track.pending)
        if ids:
            _e2e_settle(redis, track, ids)
        elif track.posting_done.is_set():
            return
        if track.posting_done.is_set():
            deadline = deadline or time.monotonic() + 30
            if time.monotonic() > deadline:
                return
        time.sleep(0.02)


def _e2e_settle(redis: Redis, track: _E2eTrack, ids: list[str]) -> None:
    now = time.perf_counter()
    for i, status in zip(ids, statuses(redis, ids), strict=True):
        if status == "delivered":
            with track.lock:
                track.result[i] = now - track.pending.pop(i)
        elif status in ("failed", "skipped"):
            with track.lock:
                track.bad[i] = status
                track.pending.pop(i)


def _e2e_post_paced(
    s: requests.Session, hook: str, bodies: list[dict], rate: float, track: _E2eTrack
) -> list[float]:
    """Post one lead at a time at ``rate`` per second; return each POST's latency."""
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
            with track.lock:
                track.pending[r.json()["deliveryId"]] = t202
        else:
            track.bad[f"post{n}"] = str(r.status_code)
    return post_lat


def _server_latencies(redis: Redis, ids: list[str]) -> list[float]:
    """The bridge's own clock: the history's "received" -> "delivered" entries (ms precision)."""
    server = []
    for h in histories(redis, ids):
        at = {e["what"]: iso_epoch(e["at"]) for e in h}
        if "received" in at and "delivered" in at:
            server.append(at["delivered"] - at["received"])
    return server


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
        base = finished_count(stack.redis)
        req0 = time.time()
        cpu0 = cpu_snapshot(stack)
        cmd0 = commands_processed(stack.redis)
        calls0 = command_calls(stack.redis)
        say(f"backlog: resuming {workers} worker(s)")
    finally:
        resume(stack.redis)
    t_resume = time.time()
    t_done = wait_finished(stack.redis, base, count, timeout=max(120.0, count * 0.5))
    wall = t_done - t_resume
    cpu1 = cpu_snapshot(stack)
    cmds = commands_processed(stack.redis) - cmd0
    calls1 = command_calls(stack.redis)
    delivered = [
        i for i, st in zip(ids, statuses(stack.redis, ids), strict=True) if st == "delivered"
    ]
    per = max(1, len(delivered))
    top = sorted(
        ((k, (v - calls0.get(k, 0)) / per) for k, v in calls1.items()), key=lambda kv: -kv[1]
    )
    first_attempt, last_delivered = math.inf, -math.inf
    attempts = 0
    for h in histories(stack.redis, delivered):
        for entry in h:
            if entry["what"] == "attempt":
                first_attempt = min(first_attempt, iso_epoch(entry["at"]))
                attempts += 1
            elif entry["what"] == "delivered":
                last_delivered = max(last_delivered, iso_epoch(entry["at"]))
    span = last_delivered - first_attempt
    api = sandbox_requests(stack, since=req0)
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
    stack.write_config(
        "config-ratelimit.toml",
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
    base = finished_count(stack.redis)
    t_first = time.time()
    load = run_load(hook, count, clients, leads.take(count))
    if len(load.ids) != count:
        raise RuntimeError(f"rate limit: only {len(load.ids)} of {count} leads accepted")
    t_all = wait_finished(stack.redis, base, count, timeout=max(180.0, count * 1.0))
    delivered = sum(1 for st in statuses(stack.redis, load.ids) if st == "delivered")
    api = [e for e in sandbox_requests(stack) if e["ts"] >= t_first - 1]
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
    attempts = [int(a or 0) for a in delivery_field(stack.redis, load.ids, "attempts")]
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
