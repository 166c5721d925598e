"""The front door: webhooks per second the bridge answers, as a ratio to a bare Flask app under
the same gunicorn settings, measured with ``wrk`` (Debian package) posting distinct ~600-byte
leads at 16 and 64 connections, in one run. Each run also says the CPU the app's processes
spent per request (from /proc): unlike requests a second, that hardly moves when other work
shares the machine; and how often they blocked per request (voluntary context switches): a web
process that waits for Redis with no other request ready blocks, and on some virtual machines
each block costs far more CPU than on bare hardware (``python -m bench.stages`` measures it).

    python -m bench.ingest [--seconds 10] [--connections 16,64] [--rounds 2] [--server-models]
                           [--fsync always|everysec]

The apps run side by side and take turns, ``--rounds`` times, each app's best round counting: a
busy moment on a shared machine then costs every app a round, not one app its only run. The
last line gives each round's bridge / bare (the two seconds apart) and their median: how much
the best-of ratios owe to the minute. The bridge's every accepted webhook is checked to be
stored.

``--fsync`` sets Redis's ``appendfsync``: ``always``, the embedded server's (a 2xx survives a
power cut), or ``everysec``, what most managed Redis plans use (up to a second of writes can be
lost with the host): the bridge's answer waits for Redis's fsync, the bare app's does not.

``--server-models`` also runs the bridge and the bare app under gunicorn's threaded worker
(2 x 4 threads, the model before the slow-client change) to show what the server model costs.
Nothing is delivered: no worker runs, so this is receive + verify + map + store + enqueue.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from redis import Redis

from bench.measure import group_usage
from bench.report import cpu_model
from bench.stack import REPO, ROUTE, TOKEN, bench_route, say
from bridge import keys
from bridge.processes import Children, wait_for_port, write_toml
from bridge.storage import EmbeddedRedis, free_port

LUA = r"""
local counter = 0
local nthreads = 0
function setup(thread)
  nthreads = nthreads + 1
  thread:set("tid", nthreads)
end
function init(args)
  pad = string.rep("x", tonumber(args[1]))
  nonce = args[2]
end
request = function()
  counter = counter + 1
  local n = tid * 10000000 + counter
  local body = string.format(
    '{"name":"Lead %d","phone":"+919%09d","email":"lead%d@example.com","city":"Mumbai",' ..
    '"utm_source":"bench","run":"%s","note":"%s"}', n, n % 1000000000, n, nonce, pad)
  return wrk.format("POST", "/hooks/ROUTE?token=TOKEN",
                    {["Content-Type"] = "application/json"}, body)
end
"""
PAD = 420  # the rest of the body is ~180 bytes: ~600 in all, a typical form's webhook


def wrk(url: str, script: Path, connections: int, seconds: float, nonce: str) -> dict:
    out = subprocess.run(
        [
            "wrk",
            "-t2",
            f"-c{connections}",
            f"-d{max(1, round(seconds))}s",
            "--timeout",
            "10s",
            "-s",
            str(script),
            url,
            "--",
            str(PAD),
            nonce,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    return {
        "rps": rps,
        "requests": total,
        "non_2xx": int(bad.group(1)) if bad else 0,
        "socket_errors": errors.group(1) if errors else "",
    }


def machine() -> str:
    cpu = cpu_model() or platform.processor() or platform.machine()
    return f"{os.cpu_count()} cores, {cpu}, Python {platform.python_version()}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ingest", description=__doc__)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", default="16,64")
    parser.add_argument("--server-models", action="store_true")
    parser.add_argument("--fsync", choices=("always", "everysec"), default="always")
    parser.add_argument("--rounds", type=int, default=2, help="each app's best round counts")
    args = parser.parse_args(argv)
    if not shutil.which("wrk"):
        print("wrk is not installed: apt-get install wrk")
        return 2
    conns = [int(c) for c in args.connections.split(",")]
    runs = [("bare", None), ("lpush", None), ("bridge", None)]
    if args.server_models:
        runs += [("bare", "gthread"), ("bridge", "gthread")]

    tmp = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    (tmp / "logs").mkdir()
    script = tmp / "leads.lua"
    script.write_text(LUA.replace("ROUTE", ROUTE).replace("TOKEN", TOKEN))
    config = write_toml(tmp / "config.toml", {"routes": [bench_route()]})
    redis_server = EmbeddedRedis(tmp / "redis", fsync=args.fsync)
    redis_server.start()
    redis = Redis.from_url(redis_server.url)
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "REDIS_URL": redis_server.url,
        "BRIDGE_CONFIG": str(config),
        "LOG_LEVEL": "WARNING",
    }
    children = Children(env=env, cwd=REPO, logdir=tmp / "logs")
    #: Every round's run, by app and connections, in order: each app's best counts, and each
    #: round's bridge goes against the same round's bare app.
    rounds: dict[tuple[str, str | None], dict[int, list[dict]]] = {}
    started = datetime.now(UTC)
    try:
        apps = {}  # every app up at once; they take turns, so a noisy minute hits them all
        for kind, worker_class in runs:
            port = free_port()
            extra = ["--worker-class", worker_class] if worker_class else []
            name = f"{kind}-{worker_class or 'default'}"
            children.spawn(name, "-m", "bench.webapps", kind, "--port", str(port), *extra)
            wait_for_port(port, timeout=30, watch=children)
            url = f"http://127.0.0.1:{port}"
            wrk(url, script, 4, 1, f"warm{time.time_ns()}")  # imports, connections, caches
            # the app's own process group (master and workers), for the CPU it spends
            apps[(kind, worker_class)] = (name, url, children[name].pid)
            rounds[(kind, worker_class)] = {c: [] for c in conns}
        for round_ in range(args.rounds):
            for c in conns:
                for (kind, worker_class), (name, url, pgid) in apps.items():
                    redis.flushall()  # each run starts from an empty Redis
                    cpu, waits = group_usage(pgid)
                    res = wrk(url, script, c, args.seconds, f"n{time.time_ns()}")
                    cpu_after, waits_after = group_usage(pgid)
                    res["cpu_ms"] = (cpu_after - cpu) * 1000 / max(res["requests"], 1)
                    res["waits"] = (waits_after - waits) / max(res["requests"], 1)
                    say(
                        f"round {round_ + 1} {name:<16} c={c:<3} {res['rps']:8.0f} req/s  "
                        f"{res['cpu_ms']:.2f} ms CPU/req  {res['waits']:.2f} waits/req  "
                        f"non-2xx {res['non_2xx']}"
                    )
                    if kind == "bridge":
                        stored = redis.xlen(keys.RECEIVED_STREAM)
                        accepted = res["requests"] - res["non_2xx"]
                        if stored < accepted:
                            raise SystemExit(f"{name}: {stored} stored for {accepted} accepted")
                    rounds[(kind, worker_class)][c].append(res)
    finally:
        children.stop_all()
        redis_server.stop()
    results = {
        app: {c: max(runs, key=lambda res: res["rps"]) for c, runs in per.items()}
        for app, per in rounds.items()
    }
    print()
    print(f"ingest benchmark, {started:%Y-%m-%d %H:%M} UTC, {machine()}")
    print(
        f"wrk -t2, {args.seconds:g} s per run, best of {args.rounds} rounds taken in turn, "
        f"distinct ~600-byte leads, gunicorn 2 processes, Redis appendfsync {args.fsync}"
    )
    print(
        f"{'app':<22}"
        + "".join(
            f"{f'c={c} req/s':>14}{'ratio':>8}{'CPU ms/req':>12}{'waits/req':>11}" for c in conns
        )
    )
    for (kind, worker_class), per in results.items():
        base = results.get(("bare", worker_class)) or results[("bare", None)]
        label = f"{kind} ({worker_class or 'gevent, guarded'})"
        row = f"{label:<22}"
        for c in conns:
            row += f"{per[c]['rps']:>14.0f}{per[c]['rps'] / base[c]['rps']:>8.2f}"
            row += f"{per[c]['cpu_ms']:>12.2f}{per[c]['waits']:>11.2f}"
        print(row)
    bare, bridge = results[("bare", None)], results[("bridge", None)]
    ratios = ", ".join(f"c={c} {bare[c]['cpu_ms'] / bridge[c]['cpu_ms']:.2f}" for c in conns)
    print(f"by CPU per request, bare / bridge: {ratios}")
    print(f"round by round, bridge / bare of the same round: {paired(rounds, conns)}")
    if args.server_models:
        bridge, threaded = results[("bridge", None)], results[("bridge", "gthread")]
        ratios = ", ".join(f"c={c} {bridge[c]['rps'] / threaded[c]['rps']:.2f}" for c in conns)
        print(f"server model, bridge gevent / bridge gthread: {ratios}")
    return 0


def paired(rounds: dict[tuple[str, str | None], dict[int, list[dict]]], conns: list[int]) -> str:
    """The bridge's req/s over the bare app's in each round, and their median: how much of
    the best-of figures is the machine's minute (the two run seconds apart in a round)."""
    bare, bridge = rounds[("bare", None)], rounds[("bridge", None)]
    out = []
    for c in conns:
        each = [b["rps"] / a["rps"] for a, b in zip(bare[c], bridge[c], strict=True)]
        listed = " ".join(f"{r:.2f}" for r in each)
        out.append(f"c={c} {listed} (median {statistics.median(each):.2f})")
    return "; ".join(out)


if __name__ == "__main__":
    raise SystemExit(main())
