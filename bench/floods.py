"""Floods: what a flood of forged requests on one route costs, and what it does to another route.

    python -m bench.floods [--seconds 10] [--connections 32] [--rate 10]

In one run, against the bridge as shipped (gunicorn, 2 processes, one RQ worker, the sandbox):

1. Quota cost, in this process over the same Redis: ``Quotas.admit`` for 600 requests (the
   default quota of a route), against one INCR + EXPIRE pipeline per request (a plain shared
   counter); microseconds per request and Redis round trips per 1,000 requests.
2. A forged flood alone: ``wrk`` posts Typeform deliveries signed with a wrong secret to route
   ``flooded`` for ``--seconds`` (no worker runs): requests/s answered, and Redis writes per
   1,000 forged requests (from the server's ``INFO commandstats``).
3. Another route while a flood runs: signed Typeform webhooks to route ``typeform`` at
   ``--rate`` a second, first with no flood, then during a paced flood (``--paced`` forged
   requests a second, far past the route's quota of 600 a minute, on a machine that has CPU
   left), then during the saturating flood of 2 (``wrk`` as fast as it can, sharing the 2
   cores with the bridge): answer-time percentiles and their ratios, and whether every one
   was delivered.

Traffic goes to 127.0.0.1 only; every loop stops by a count or a deadline; every child process
is stopped on exit.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import re
import shutil
import subprocess
import time
from collections import Counter
from pathlib import Path

import requests
from redis import Redis

from bench.ingest import machine
from bench.stack import STOP, Stack, bench_stack, say
from bridge import keys
from bridge.config import build_settings
from bridge.processes import write_toml
from bridge.quotas import Quotas

GENUINE_SECRET = "bench-typeform-secret-8c2d"
FLOODED_SECRET = "bench-flooded-secret-1f7a"

WRK_LUA = r"""
wrk.method = "POST"
wrk.body = BODY
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Typeform-Signature"] = "sha256=bm90IHRoZSBzaWduYXR1cmUgb2YgdGhpcyBib2R5IGF0IGFsbA=="
"""
#: Each connection waits this many milliseconds between its requests (the paced flood).
WRK_PACE = """
function delay()
  return DELAY
end
"""


def typeform_body(response_token: str) -> bytes:
    """A Typeform delivery of one response with a phone answer (~500 bytes)."""
    return json.dumps(
        {
            "event_id": f"evt-{response_token}",
            "event_type": "form_response",
            "form_response": {
                "form_id": "bench1",
                "token": response_token,
                "submitted_at": "2026-01-01T09:01:12Z",
                "definition": {
                    "id": "bench1",
                    "fields": [
                        {"id": "f1", "ref": "name", "type": "short_text", "title": "Name?"},
                        {"id": "f2", "ref": "phone", "type": "phone_number", "title": "Phone"},
                    ],
                },
                "answers": [
                    {"type": "text", "text": "Asha Rao", "field": {"id": "f1", "ref": "name"}},
                    {
                        "type": "phone_number",
                        "phone_number": "+919876543210",
                        "field": {"id": "f2", "ref": "phone"},
                    },
                ],
            },
        }
    ).encode()


def typeform_headers(body: bytes, secret: str) -> dict[str, str]:
    mac = hmac.new(secret.encode(), body, hashlib.sha256).digest()
    return {
        "Content-Type": "application/json",
        "Typeform-Signature": "sha256=" + base64.b64encode(mac).decode(),
    }


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def config() -> dict:
    return {
        # the API's limit must not shape what is measured here (the sandbox is started to match)
        "oliai": {"general_per_minute": 100_000, "bulk_per_minute": 10_000},
        "routes": [
            {
                "name": "flooded",
                "source": "typeform",
                "secret": FLOODED_SECRET,
                "audience_name": "Flooded",
            },
            {
                "name": "typeform",
                "source": "typeform",
                "secret": GENUINE_SECRET,
                "audience_name": "Typeform leads",
            },
        ],
    }


# --- 1. the quota, in process ------------------------------------------------------------------


def commands(redis: Redis) -> Counter[str]:
    return Counter(
        {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in redis.info("commandstats").items()}
    )


def measure_quota_cost(redis: Redis, count: int = 600, rounds: int = 5) -> dict:
    settings = build_settings(config(), env={})
    route = settings.routes["typeform"]
    quota_s, plain_s, trips = [], [], []
    for n in range(rounds):
        quotas = Quotas(redis, settings, clock=lambda n=n: n * 60.0 + 1.0)  # a fresh window
        before = commands(redis)
        t = time.perf_counter()
        for _ in range(count):
            quotas.admit(route, "127.0.0.1")
        quota_s.append((time.perf_counter() - t) / count)
        trips.append((commands(redis) - before)["incrby"] * 1000 / count)
        t = time.perf_counter()
        for _ in range(count):
            pipe = redis.pipeline(transaction=False)
            pipe.incr(f"bench:plain:{n}")
            pipe.expire(f"bench:plain:{n}", 120)
            pipe.execute()
        plain_s.append((time.perf_counter() - t) / count)
    redis.flushall()
    return {
        "quota_us": pct(quota_s, 50) * 1e6,
        "plain_us": pct(plain_s, 50) * 1e6,
        "round_trips_per_1000": pct(trips, 50),
    }


# --- 2 and 3: over the sockets -------------------------------------------------------------------


def start_flood(url: str, script: Path, connections: int, seconds: float) -> subprocess.Popen:
    return subprocess.Popen(
        ["wrk", "-t2", f"-c{connections}", f"-d{round(seconds)}s", "--timeout", "10s"]
        + ["-s", str(script)]
        + [url],
        stdout=subprocess.PIPE,
        text=True,
    )


def flood_result(proc: subprocess.Popen) -> dict:
    out, _ = proc.communicate(timeout=120)
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "requests": int(re.search(r"(\d+) requests in", out).group(1)),
        "non_2xx": int((re.search(r"Non-2xx or 3xx responses: (\d+)", out) or [0, 0])[1]),
        "socket_errors": (re.search(r"Socket errors: (.*)", out) or [None, ""])[1],
    }


def genuine_posts(
    url: str, first: int, seconds: float, rate: float
) -> list[tuple[int, float, str]]:
    """Signed webhooks one after another at ``rate`` a second for ``seconds``."""
    out = []
    deadline = time.monotonic() + seconds
    i = first
    with requests.Session() as session:
        while time.monotonic() < deadline and not STOP.is_set():
            body = typeform_body(f"bench-genuine-{i}")
            t = time.perf_counter()
            r = session.post(url, data=body, headers=typeform_headers(body, GENUINE_SECRET))
            out.append((r.status_code, time.perf_counter() - t, r.json().get("deliveryId", "")))
            i += 1
            time.sleep(max(0.0, 1 / rate - (time.perf_counter() - t)))
    return out


def delivered(stack: Stack, ids: list[str], timeout: float = 60) -> int:
    deadline = time.monotonic() + timeout
    done = 0
    while time.monotonic() < deadline:
        pipe = stack.redis.pipeline(transaction=False)
        for delivery_id in ids:
            pipe.hget(keys.delivery(delivery_id), "status")
        done = sum(1 for s in pipe.execute() if s == b"delivered")
        if done == len(ids):
            break
        time.sleep(0.2)
    return done


def latencies(posts: list[tuple[int, float, str]]) -> dict:
    seconds = [s for _, s, _ in posts]
    return {
        "count": len(posts),
        "accepted": sum(1 for status, _, _ in posts if status == 202),
        "p50_ms": pct(seconds, 50) * 1000,
        "p95_ms": pct(seconds, 95) * 1000,
        "max_ms": max(seconds) * 1000,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.floods", description=__doc__)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rate", type=float, default=10.0)
    parser.add_argument("--paced", type=int, default=400)
    args = parser.parse_args(argv)
    if not shutil.which("wrk"):
        print("wrk is not installed: apt-get install wrk")
        return 2
    with bench_stack("bench-floods-", keep=False) as stack:
        tmp, redis = stack.tmp, stack.redis
        script = tmp / "forged.lua"
        forged = typeform_body("forged")
        script.write_text(WRK_LUA.replace("BODY", json.dumps(forged.decode())))
        paced_connections = 16
        paced = tmp / "paced.lua"
        paced.write_text(
            script.read_text()
            + WRK_PACE.replace("DELAY", str(round(1000 * paced_connections / args.paced)))
        )
        say("quota cost, in process")
        quota = measure_quota_cost(redis)
        stack.config = write_toml(tmp / "config.toml", config())
        stack.start_sandbox("--general-limit", "1000000")
        stack.start_web()
        flooded = f"{stack.web_url}/hooks/flooded"
        other = f"{stack.web_url}/hooks/typeform"

        say(f"forged flood alone: wrk -c{args.connections}, {args.seconds} s, no worker")
        genuine_posts(other, 0, 1, args.rate)  # warm-up: imports, connections
        before = commands(redis)
        flood_alone = flood_result(start_flood(flooded, script, args.connections, args.seconds))
        seen = commands(redis) - before
        writes = {
            name: n
            for name, n in seen.items()
            if "write" in redis.command().get(name, {}).get("flags", ())
        }

        stack.start_workers(1)
        say(f"the other route, calm: {args.rate:g} signed webhooks a second, {args.seconds} s")
        calm = genuine_posts(other, 1000, args.seconds, args.rate)
        say(f"the other route during a paced flood (about {args.paced}/s)")
        proc = start_flood(flooded, paced, paced_connections, args.seconds)
        time.sleep(1)  # the flood is under way
        during_paced = genuine_posts(other, 2000, args.seconds - 2, args.rate)
        flood_paced = flood_result(proc)
        say("the other route during the saturating flood")
        proc = start_flood(flooded, script, args.connections, args.seconds)
        time.sleep(1)
        during = genuine_posts(other, 3000, args.seconds - 2, args.rate)
        flood_mixed = flood_result(proc)
        ids = [d for status, _, d in calm + during_paced + during if status == 202]
        done = delivered(stack, ids)
        metrics = requests.get(f"{stack.web_url}/metrics", timeout=5).text
        refused = {
            reason: float(n)
            for reason, n in re.findall(
                r'oliai_bridge_rejected_total\{reason="([^"]+)",route="flooded"\} ([\d.e+]+)',
                metrics,
            )
        }

    calm_l, paced_l, during_l = latencies(calm), latencies(during_paced), latencies(during)
    print()
    print(f"floods benchmark, {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC, {machine()}")
    print(
        f"quota check ({quota['round_trips_per_1000']:.0f} Redis round trips per 1,000 "
        f"requests): {quota['quota_us']:.1f} us a request; a shared counter written per "
        f"request {quota['plain_us']:.1f} us; ratio {quota['quota_us'] / quota['plain_us']:.2f}"
    )
    total_writes = sum(writes.values())
    print(
        f"forged flood alone: {flood_alone['requests']} requests, {flood_alone['rps']:.0f}/s "
        f"answered, non-2xx {flood_alone['non_2xx']}, socket errors "
        f"{flood_alone['socket_errors'] or 'none'}; Redis writes {total_writes} "
        f"({1000 * total_writes / max(1, flood_alone['requests']):.2f} per 1,000) {writes}"
    )
    print(
        f"floods during the other route's traffic: paced {flood_paced['rps']:.0f}/s, "
        f"saturating {flood_mixed['rps']:.0f}/s; the flooded route refused, all runs: {refused}"
    )
    print(
        f"{'other route':<22}{'sent':>6}{'202':>6}{'p50 ms':>9}{'p95 ms':>9}{'max ms':>9}"
        f"{'p50 ratio':>11}{'p95 ratio':>11}"
    )
    rows = (
        ("calm", calm_l),
        (f"paced flood {flood_paced['rps']:.0f}/s", paced_l),
        (f"saturating {flood_mixed['rps']:.0f}/s", during_l),
    )
    for label, row in rows:
        print(
            f"{label:<22}{row['count']:>6}{row['accepted']:>6}{row['p50_ms']:>9.1f}"
            f"{row['p95_ms']:>9.1f}{row['max_ms']:>9.1f}"
            f"{row['p50_ms'] / calm_l['p50_ms']:>11.2f}{row['p95_ms'] / calm_l['p95_ms']:>11.2f}"
        )
    print(f"delivered {done} of the other route's {len(ids)} accepted webhooks")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
