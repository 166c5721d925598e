"""Draining a backlog within OliAI's limits, fairness between keys, and what a worker costs.

    .venv/bin/python -m bench.drain                 # 3,000 and 10,000 leads, fairness, cost
    .venv/bin/python -m bench.drain --quick         # 3,000 leads, fairness, cost
    .venv/bin/python -m bench.drain --only drain    # any of: drain, fairness, cost, memory

Same stack as ``bench/run.py`` (embedded Redis with fsync always, the sandbox, gunicorn, RQ
workers, all child processes). Sections:

1. drain: the sandbox enforces the documented limits (60 general and 10 bulk requests per key
   and window) with the window shrunk to 1 s, the bridge is configured the same way. N leads
   for one key are posted while the lane is held (its trigger taken, so the backlog stands
   whole), then the lane is opened. Reported: seconds from the last accepted webhook until the
   bridge has every lead delivered (it says so only after the API confirmed the audience), and
   the sandbox's audience is checked to hold every contact; the ratio to the lower bound the
   limits allow with ``/contacts/bulk`` (100 per request, one audience add per 100:
   (ceil(requests / limit) - 1) windows for the busier class); the requests by endpoint and
   the 429s.
2. fairness: two keys, documented limits, 1 s window, one worker. Key A has a backlog of
   thousands and is throttled (another program spends it flat out, so the API answers 429);
   leads for key B are posted one at a time. Reported: 202 -> delivered for B's leads, against
   the 2 s target.
3. cost: one worker against a sandbox without limits, a standing backlog; deliveries per
   second (first attempt to last delivered, from the histories) and CPU per delivery.
4. memory: ``bench/memory.py`` (bytes of Redis per queued and per delivered lead).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import requests  # noqa: E402

from bench import measure  # noqa: E402
from bench.load import Leads, run_load  # noqa: E402
from bench.measure import iso_epoch, pct  # noqa: E402
from bench.report import machine  # noqa: E402
from bench.stack import API_KEY, ROUTE, STOP, TOKEN, Stack, bench_stack, say  # noqa: E402

KEY_B = "sk_live_" + "benchmarkb".ljust(32, "8")
ROUTE_B = "bench-b"
WINDOW = 1.0
GENERAL, BULK = 60, 10  # the documented limits per key and window (oliai-api.md §4)
BULK_ITEMS = 100  # per /contacts/bulk request, and per audience add (#6, #17)
FAIRNESS_TARGET = 2.0


def write_config(path: Path, oliai: dict, two_keys: bool = False) -> Path:
    # The inbound quota would throttle the benchmark's own flood of webhooks.
    lines = ["[bridge]", "max_requests_per_minute = 1000000"]
    lines += ["[oliai]"] + [f"{k} = {json.dumps(v)}" for k, v in oliai.items()]
    lines += ["[delivery]", "retry_base_seconds = 1.0", "retry_max_seconds = 5.0"]
    routes = [(ROUTE, None, "Benchmark leads")]
    if two_keys:
        routes.append((ROUTE_B, KEY_B, "Benchmark leads B"))
    for name, key, audience in routes:
        lines += ["[[routes]]", f'name = "{name}"', 'source = "generic"', f'token = "{TOKEN}"']
        lines += [f'audience_name = "{audience}"', 'on_duplicate = "update"']
        if key:
            lines.append(f'api_key = "{key}"')
    path.write_text("\n".join(lines) + "\n")
    return path


def limited(window: float = WINDOW) -> dict:
    return {
        "rate_window_seconds": window,
        "general_per_minute": GENERAL,
        "bulk_per_minute": BULK,
        "timeout_seconds": 10.0,
    }


UNLIMITED = {
    "rate_window_seconds": 60.0,
    "general_per_minute": 100000,
    "bulk_per_minute": 10000,
    "timeout_seconds": 10.0,
}


def kid_of(api_key: str) -> str:
    from jobs.ratelimit import key_id

    return key_id(api_key)


class Lane:
    """Hold a lane closed while a backlog is posted, then open it (a drain starts at once).

    Held = its trigger is a drain job scheduled an hour from now: ingest starts no other one,
    and the reaper sees a live trigger."""

    def __init__(self, stack: Stack, api_key: str = API_KEY):
        from bridge.queue import make_queue

        self.stack = stack
        self.kid = kid_of(api_key)
        self.queue = make_queue(stack.redis)
        self.job_id = ""

    def hold(self) -> None:
        from jobs.lanes import enqueue_drain, new_job_id, now_ms, trigger_key

        self.job_id = new_job_id(self.kid, "live")
        enqueue_drain(self.queue, self.kid, "live", self.job_id, at_ms=now_ms() + 3_600_000)
        self.stack.redis.set(trigger_key(self.kid, "live"), self.job_id, px=3_600_000)

    def open(self) -> None:
        from jobs.lanes import kick_lanes, trigger_key

        job = self.queue.fetch_job(self.job_id)
        if job is not None:
            job.delete()
        self.stack.redis.delete(trigger_key(self.kid, "live"))
        kick_lanes(self.stack.redis, self.queue, [(self.kid, "live")], 60)


def wait_counter(stack: Stack, base: int, count: int, timeout: float) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not STOP.is_set():
        if measure.finished_count(stack.redis) - base >= count:
            return time.time()
        time.sleep(0.02)
    return float("nan")


def bulk_bound(n: int, window: float = WINDOW) -> float:
    """Seconds the documented limits force on n leads sent through /contacts/bulk (100 per
    request) plus one audience add per 100: the busier class sets the pace."""
    bulk = math.ceil(n / BULK_ITEMS)
    general = bulk + math.ceil(n / BULK_ITEMS)  # bulk requests count as general too
    windows = max(math.ceil(bulk / BULK), math.ceil(general / GENERAL)) - 1
    return windows * window


def by_endpoint(log: list[dict]) -> dict[str, int]:
    out: dict[str, int] = {}
    for e in log:
        path = e["path"].removeprefix("/v1")
        for prefix, name in (("/audiences/", "/audiences/:id/contacts"), ("/imports/", None)):
            if path.startswith(prefix) and name and path.endswith("/contacts"):
                path = name
        if path.startswith("/imports/") and path.endswith("/status"):
            path = "/imports/:id/status"
        label = f"{e['method']} {path}"
        out[label] = out.get(label, 0) + 1
    return out


def measure_drain(stack: Stack, leads: Leads, count: int, clients: int) -> dict:
    stack.stop_workers()
    stack.redis.flushall()
    stack.start_sandbox(
        "--general-limit", str(GENERAL), "--bulk-limit", str(BULK), "--rate-window", str(WINDOW)
    )
    stack.config = write_config(stack.tmp / "config-drain.toml", limited())
    stack.start_web()
    stack.start_workers(1)
    hook = f"{stack.web_url}/hooks/{ROUTE}"
    warm = run_load(hook, 3, 1, leads.take(3))
    measure.wait_delivered(stack.redis, warm.ids, timeout=30)
    time.sleep(WINDOW * 1.5)  # the warm-up's requests leave the window
    lane = Lane(stack)
    lane.hold()
    say(f"drain: posting {count} leads while the lane is held")
    load = run_load(hook, count, clients, leads.take(count))
    last_202 = time.time()
    if len(load.ids) != count:
        raise RuntimeError(f"drain: only {len(load.ids)} of {count} leads accepted")
    base = measure.finished_count(stack.redis)
    cpu0 = measure.cpu_snapshot(stack)
    lane.open()
    opened = time.time()
    say(f"drain: lane opened; waiting for {count} deliveries")
    done = wait_counter(stack, base, count, timeout=max(120.0, count * 0.1))
    cpu1 = measure.cpu_snapshot(stack)
    state = requests.get(f"{stack.sandbox_root}/_sandbox/state", timeout=60).json()
    org = next(iter(state["orgs"].values()))
    members = sum(a["contactCount"] for a in org["audiences"])
    log = measure.sandbox_requests(stack, since=opened - 0.5)
    delivered = sum(1 for s in measure.statuses(stack.redis, load.ids) if s == "delivered")
    seconds = done - last_202
    bound = bulk_bound(count)
    return {
        "count": count,
        "delivered": delivered,
        "in_audience": members - len(warm.ids),
        "seconds": seconds,
        "from_open": done - opened,
        "bound": bound,
        "ratio": seconds / bound if bound else float("nan"),
        "requests": len(log),
        "api_429": sum(1 for e in log if e["status"] == 429),
        "endpoints": by_endpoint(log),
        "cpu": {k: cpu1[k] - cpu0[k] for k in cpu0},
    }


def measure_fairness(stack: Stack, leads: Leads, backlog: int, probes: int, clients: int) -> dict:
    stack.stop_workers()
    stack.redis.flushall()
    stack.start_sandbox(
        "--general-limit",
        str(GENERAL),
        "--bulk-limit",
        str(BULK),
        "--rate-window",
        str(WINDOW),
        "--keys",
        f"{API_KEY},{KEY_B}",
    )
    stack.config = write_config(stack.tmp / "config-fair.toml", limited(), two_keys=True)
    stack.start_web()
    stack.start_workers(1)
    hook_a, hook_b = f"{stack.web_url}/hooks/{ROUTE}", f"{stack.web_url}/hooks/{ROUTE_B}"
    b_leads = Leads()
    b_leads.n = iter(range(50_000_000, 60_000_000))
    warm = run_load(hook_b, 2, 1, b_leads.take(2)).ids + run_load(hook_a, 2, 1, leads.take(2)).ids
    measure.wait_delivered(stack.redis, warm, timeout=30)
    lane = Lane(stack)
    lane.hold()
    say(f"fairness: key A gets a backlog of {backlog} and is spent flat out by another program")
    run_load(hook_a, backlog, clients, leads.take(backlog))
    spend = threading.Event()

    def other_program() -> None:
        s = requests.Session()
        while not spend.is_set() and not STOP.is_set():
            s.get(f"{stack.sandbox_url}/flows", headers={"x-api-key": API_KEY}, timeout=5)
            time.sleep(0.005)

    spender = threading.Thread(target=other_program, daemon=True)
    spender.start()
    time.sleep(WINDOW)
    lane.open()
    time.sleep(WINDOW)
    session = requests.Session()
    session.headers["X-Bridge-Token"] = TOKEN
    latencies, late = [], 0
    say(f"fairness: {probes} leads for key B, one at a time")
    try:
        for body in b_leads.take(probes):
            r = session.post(hook_b, json=body, timeout=10)
            t202 = time.perf_counter()
            delivery_id = r.json()["deliveryId"]
            while True:
                [status] = measure.statuses(stack.redis, [delivery_id])
                if status in ("delivered", "failed", "skipped"):
                    latencies.append(time.perf_counter() - t202)
                    break
                if time.perf_counter() - t202 > 30:
                    late += 1
                    break
                time.sleep(0.02)
            time.sleep(0.5)
    finally:
        spend.set()
        spender.join(10)
    log = measure.sandbox_requests(stack)
    a_429 = [e for e in log if e["status"] == 429 and e["org"] == "org_1"]
    bridge_429 = sum(1 for e in a_429 if not e["path"].endswith("/flows"))
    from bridge.metrics import read_counters

    a_done = read_counters(stack.redis).get(f"delivered|{ROUTE}", 0)
    return {
        "backlog": backlog,
        "probes": probes,
        "p50": pct(latencies, 50),
        "max": max(latencies) if latencies else float("nan"),
        "late": late,
        "a_429": len(a_429),
        "a_429_bridge": bridge_429,
        "a_delivered_meanwhile": a_done - 2,
    }


def measure_cost(stack: Stack, leads: Leads, count: int, clients: int) -> dict:
    stack.stop_workers()
    stack.redis.flushall()
    stack.start_sandbox("--general-limit", "1000000", "--bulk-limit", "100000")
    stack.config = write_config(stack.tmp / "config-cost.toml", UNLIMITED)
    stack.start_web()
    stack.start_workers(1)
    hook = f"{stack.web_url}/hooks/{ROUTE}"
    warm = run_load(hook, 3, 1, leads.take(3))
    measure.wait_delivered(stack.redis, warm.ids, timeout=30)
    lane = Lane(stack)
    lane.hold()
    say(f"cost: posting {count} leads while the lane is held")
    load = run_load(hook, count, clients, leads.take(count))
    base = measure.finished_count(stack.redis)
    cpu0 = measure.cpu_snapshot(stack)
    cmd0 = measure.commands_processed(stack.redis)
    lane.open()
    opened = time.time()
    done = wait_counter(stack, base, count, timeout=max(120.0, count * 0.2))
    cpu1 = measure.cpu_snapshot(stack)
    cmds = measure.commands_processed(stack.redis) - cmd0
    first, last = math.inf, -math.inf
    delivered = 0
    for h in measure.histories(stack.redis, load.ids):
        for entry in h:
            if entry["what"] == "attempt":
                first = min(first, iso_epoch(entry["at"]))
            elif entry["what"] == "delivered":
                last = max(last, iso_epoch(entry["at"]))
                delivered += 1
    log = measure.sandbox_requests(stack, since=opened - 0.5)
    span = last - first
    return {
        "count": count,
        "delivered": delivered,
        "span": span,
        "per_s": delivered / span if span > 0 else float("nan"),
        "wall": done - opened,
        "requests": len(log),
        "endpoints": by_endpoint(log),
        "cpu_ms": {k: 1000 * (cpu1[k] - cpu0[k]) / max(1, delivered) for k in cpu0},
        "redis_cmds_per_delivery": cmds / max(1, delivered),
    }


def report(res: dict, command: str, started: str, elapsed: float) -> str:
    lines = ["=" * 78, "oliai-bridge benchmark: lanes and batches"]
    lines += [f"date:    {started}", f"machine: {res['machine']}", f"command: {command}"]
    la0, la1 = res.get("loadavg_start"), res.get("loadavg_end")
    if la0 and la1:
        lines.append(f"load:    1-min load average {la0[0]:.2f} at start, {la1[0]:.2f} at end")
    ratios = []
    for row in res.get("drain", []):
        lines.append("-" * 78)
        lines.append(
            f"1. drain {row['count']} leads, one key, limits {GENERAL} general / {BULK} bulk per "
            f"{WINDOW:g} s window"
        )
        lines.append(
            f"   last 202 -> all delivered {row['seconds']:.2f} s (from the lane opening "
            f"{row['from_open']:.2f} s); delivered {row['delivered']}/{row['count']}, in the "
            f"audience {row['in_audience']}"
        )
        lines.append(
            f"   lower bound via /contacts/bulk: {row['bound']:.1f} s; API requests "
            f"{row['requests']}, 429s {row['api_429']}"
        )
        lines.append("   requests: " + ", ".join(f"{k} {v}" for k, v in row["endpoints"].items()))
        target = "< 10 s" if row["count"] <= 3000 else "<= 1.25 x bound"
        ok = row["seconds"] < 10 if row["count"] <= 3000 else row["ratio"] <= 1.25
        ratios.append((f"drain {row['count']}: seconds ({target})", f"{row['seconds']:.2f}", ok))
        ratios.append(
            (f"drain {row['count']}: time / bulk-path bound", f"{row['ratio']:.2f}", None)
        )
        ratios.append(
            (f"drain {row['count']}: 429s (must be 0)", str(row["api_429"]), not row["api_429"])
        )
    if "fairness" in res:
        f = res["fairness"]
        lines.append("-" * 78)
        lines.append(
            f"2. fairness: key A {f['backlog']} leads queued and spent flat out by another "
            f"program (429s on A: {f['a_429']}, {f['a_429_bridge']} of them the bridge's); "
            f"{f['probes']} leads for key B, one worker"
        )
        lines.append(
            f"   key B 202 -> delivered: p50 {f['p50']:.3f} s, max {f['max']:.3f} s "
            f"(target {FAIRNESS_TARGET:g} s); not delivered in 30 s: {f['late']}"
        )
        ratios.append(
            (
                "fairness: key B max / 2 s (must be < 1)",
                f"{f['max'] / FAIRNESS_TARGET:.2f}",
                f["max"] < FAIRNESS_TARGET and not f["late"],
            )
        )
    if "cost" in res:
        c = res["cost"]
        lines.append("-" * 78)
        lines.append(f"3. cost: {c['count']} leads, one worker, sandbox without limits")
        lines.append(
            f"   {c['per_s']:.0f} deliveries/s (first attempt -> last delivered {c['span']:.2f} s;"
            f" lane opened -> all delivered {c['wall']:.2f} s), {c['requests']} API requests"
        )
        cpu = ", ".join(f"{k} {v:.2f}" for k, v in c["cpu_ms"].items())
        lines.append(f"   CPU ms per delivery: {cpu}")
        lines.append(f"   Redis commands per delivery: {c['redis_cmds_per_delivery']:.1f}")
        ratios.append(
            (
                "cost: deliveries/s per worker (target >= 300)",
                f"{c['per_s']:.0f}",
                c["per_s"] >= 300,
            )
        )
    if "memory" in res:
        from bench.memory import report as memory_report

        m = res["memory"]
        lines.append("-" * 78)
        lines.append("4. " + memory_report(m))
        ratios.append(
            (
                "memory: bytes per queued lead (<= 2048)",
                f"{m['queued_bytes_per_lead']:.0f}",
                m["queued_bytes_per_lead"] <= 2048,
            )
        )
        ratios.append(
            (
                "memory: bytes per delivered lead (<= 1536)",
                f"{m['delivered_bytes_per_lead']:.0f}",
                m["delivered_bytes_per_lead"] <= 1536,
            )
        )
    lines.append("-" * 78)
    lines.append("figures (measured in this run)")
    width = max((len(r[0]) for r in ratios), default=10)
    for name, value, ok in ratios:
        mark = "" if ok is None else ("ok" if ok else "MISSED")
        lines.append(f"   {name:<{width}}  {value:>8}  {mark}".rstrip())
    lines.append(f"total run time {elapsed:.0f} s")
    lines.append("=" * 78)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3,000 leads only in the drain")
    parser.add_argument("--only", default="drain,fairness,cost,memory")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--json", help="also write the raw results to this file")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, AOF)")
    args = parser.parse_args(argv)
    only = set(args.only.split(","))
    command = " ".join([".venv/bin/python -m bench.drain", *sys.argv[1:]])
    started = dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")
    t0 = time.monotonic()

    results: dict = {"machine": machine(), "loadavg_start": os.getloadavg()}
    try:
        with bench_stack("oliai-drain-", keep=args.keep) as stack:
            leads = Leads()
            if "drain" in only:
                sizes = (3000,) if args.quick else (3000, 10000)
                results["drain"] = [measure_drain(stack, leads, n, args.clients) for n in sizes]
            if "fairness" in only:
                results["fairness"] = measure_fairness(stack, leads, 3000, 10, args.clients)
            if "cost" in only:
                results["cost"] = measure_cost(stack, leads, 3000, args.clients)
            stack.stop_workers()
            stack.children.stop_all()
            if "memory" in only:
                from bench.memory import measure_memory

                say("memory: 1000 webhooks through Ingest, then delivered")
                results["memory"] = measure_memory(1000)
            results["loadavg_end"] = os.getloadavg()
    except KeyboardInterrupt:
        return 130
    text = report(results, command, started, time.monotonic() - t0)
    print()
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
