"""Speed to lead: a burst of leads on one key with ``[routes.campaign]``, with OliAI's documented
limits (60 general and 10 bulk calls a window; the window shrunk to ``--window`` seconds).

    python -m bench.campaigns [--leads 100] [--window 1] [--mode per_lead] [--every-minutes 1]

Reports, from the first accepted webhook: the time until the first campaign is started (the
first call), the time until the last lead is in a started campaign, and the API calls spent
(by kind), read from the sandbox's own request log.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter

import requests

from bench.stack import API_KEY, ROUTE, TOKEN, Stack, bench_route, bench_stack, say
from bridge.processes import write_toml

STARTED = ("IN_PROGRESS", "COMPLETED", "SCHEDULED", "PAUSED")


def sandbox_state(stack: Stack) -> dict:
    state = requests.get(f"{stack.sandbox_root}/_sandbox/state", timeout=10).json()
    return next(iter(state["orgs"].values()))


def kind(entry: dict) -> str:
    path = entry["path"].removeprefix("/v1")
    parts = [p for p in path.split("/") if p]
    shape = "/".join(
        p if p.split("_")[0] not in ("c", "aud", "camp", "flow") else ":id" for p in parts
    )
    return f"{entry['method']} /{shape}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.campaigns", description=__doc__)
    parser.add_argument("--leads", type=int, default=100)
    parser.add_argument("--window", type=float, default=1.0, help="the API's rate window, s")
    parser.add_argument("--mode", choices=("per_lead", "window"), default="per_lead")
    parser.add_argument("--every-minutes", type=int, default=1)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=240.0)
    args = parser.parse_args(argv)

    with bench_stack("bench-campaigns-", keep=False) as stack:
        stack.start_sandbox("--rate-window", str(args.window))
        flows = requests.get(
            f"{stack.sandbox_url}/flows", headers={"x-api-key": API_KEY}, timeout=10
        ).json()["data"]
        route = bench_route()
        route["campaign"] = {
            "mode": args.mode,
            "flow_id": flows[0]["id"],
            "every_minutes": args.every_minutes,
        }
        oliai = {
            "rate_window_seconds": args.window,
            "general_per_minute": 60,
            "bulk_per_minute": 10,
        }
        stack.config = write_toml(stack.tmp / "config.toml", {"oliai": oliai, "routes": [route]})
        stack.start_web()
        stack.start_workers(args.workers)
        session = requests.Session()
        url = f"{stack.web_url}/hooks/{ROUTE}?token={TOKEN}"
        t0 = time.monotonic()
        for i in range(args.leads):
            body = {"name": f"Lead {i}", "phone": f"+9198{i:08d}", "city": "Pune"}
            r = session.post(url, json=body, timeout=10)
            assert r.status_code == 202, r.text
        accepted = time.monotonic() - t0
        say(f"{args.leads} leads accepted in {accepted:.1f} s")
        first = last = None
        while time.monotonic() - t0 < args.timeout:
            org = sandbox_state(stack)
            started = [c for c in org["campaigns"] if c["status"] in STARTED]
            if started and first is None:
                first = time.monotonic() - t0
                say(f"first campaign started after {first:.1f} s")
            called = {cid for c in started for cid in c["snapshotContactIds"]}
            if len(org["contacts"]) >= args.leads and len(called) >= args.leads:
                last = time.monotonic() - t0
                break
            time.sleep(0.2)
        log = requests.get(f"{stack.sandbox_root}/_sandbox/requests", timeout=10).json()
        entries = log["requests"] if isinstance(log, dict) else log
        calls = Counter(kind(e) for e in entries if e["path"].startswith("/v1"))
        throttled = sum(1 for e in entries if e.get("status") == 429)
        org = sandbox_state(stack)
        print()
        print(
            f"campaign bench: {args.leads} leads, mode {args.mode} (every_minutes "
            f"{args.every_minutes}), limits 60 general / 10 bulk per {args.window:g} s window, "
            f"{args.workers} workers"
        )
        print(f"  first call started:            {first:.1f} s after the first webhook")
        if last is None:
            print(f"  last lead in a started campaign: not within {args.timeout:g} s")
        else:
            print(f"  last lead in a started campaign: {last:.1f} s")
        print(f"  campaigns: {len(org['campaigns'])}, audiences: {len(org['audiences'])}")
        spent = sum(calls.values())
        print(f"  API calls: {spent} ({spent / args.leads:.1f} a lead), 429s: {throttled}")
        for name, count in calls.most_common():
            print(f"    {count:>6}  {name}")
        return 0 if last is not None else 1


if __name__ == "__main__":
    raise SystemExit(main())
