"""Backfill benchmark: a 10,000-row CSV through ``oliai-bridge import`` under the API's limits,
and a live lead posted while it is delivered.

    .venv/bin/python -m bench.backfill                 # 10,000 rows, 2 workers
    .venv/bin/python -m bench.backfill --rows 2000     # quicker

Starts, as ``bench.run`` does: an embedded Redis (AOF, fsync always), the OliAI sandbox with
the published limits (60 general and 10 bulk requests per window) and its window shrunk to
1 s, the web app under gunicorn, and RQ workers, the bridge configured to the same limits and
window. Then it writes a CSV of distinct leads, starts ``python -m bridge import`` on it, posts
one live lead to ``/hooks/bench`` 2 s after the command started, and prints:

- the import command: its run time and rows/s (storing only; the workers deliver);
- from the command's start until every imported contact is in the route's audience (the
  sandbox's own member count, read once the bridge has no unfinished delivery), and the
  delivery rate that makes;
- the live lead: from its 202 until its contact reached the sandbox (the contact's
  ``createdAt`` there: the moment OliAI had it, even when its answer was lost) and until the
  bridge marked it delivered (audience added), against the 3 s target: leads arriving live
  should go ahead of a backfill's thousands;
- 429s from the sandbox, and deliveries that did not end delivered;
- the sandbox's own data, checked lead by lead: every row of the sheet and the live lead is one
  contact (by phone, with its name) and a member of the route's audience exactly once, and no
  other contact exists; contacts written more than once (a re-sent batch or import: allowed,
  since both are upserts, but each is a wasted call) are counted. The exit status is 1 when
  any lead is missing, doubled or stray.

Every wait has a deadline (``--timeout``); child processes are stopped on exit, Ctrl-C and
SIGTERM. Speed is printed, never asserted.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import requests
from redis import Redis

from bench.stack import REPO, ROUTE, STOP, TOKEN, Stack, bench_route, bench_stack, say
from bridge import defaults, keys
from bridge.deliveries import DeliveryStore
from bridge.phone import to_e164

#: The API's published limits (oliai-api.md §4), per window; the window is shrunk to 1 s.
GENERAL_LIMIT = 60
BULK_LIMIT = 10
WINDOW_SECONDS = 1.0
LIVE_AFTER_SECONDS = 2.0
LIVE_TARGET_SECONDS = 3.0
LIVE_PHONE = "+919700000001"
LIVE_NAME = "Live Lead"
#: How often the bridge's unfinished deliveries are counted (one ZCARD) while waiting.
POLL_SECONDS = 0.1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.backfill", description=__doc__)
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--live-after",
        type=float,
        default=LIVE_AFTER_SECONDS,
        help="seconds after the command's start to post the live lead (the target: 2)",
    )
    parser.add_argument(
        "--lost-answers",
        type=float,
        default=0.0,
        help="share of the sandbox's successful writes kept but answered 500 or dropped, to "
        "see exactly-once under lost answers (default 0)",
    )
    parser.add_argument("--timeout", type=float, default=1200.0, help="seconds, for each wait")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, AOF)")
    args = parser.parse_args(argv)

    try:
        with bench_stack("oliai-bench-backfill-", keep=args.keep) as stack:
            stack.start_sandbox(
                "--general-limit",
                str(GENERAL_LIMIT),
                "--bulk-limit",
                str(BULK_LIMIT),
                "--rate-window",
                str(WINDOW_SECONDS),
                "--fail-after-commit-rate",
                str(args.lost_answers),
                "--fail-after-commit-mode",
                "mixed",
            )
            stack.write_config(
                "config.toml",
                {
                    "rate_window_seconds": WINDOW_SECONDS,
                    "general_per_minute": GENERAL_LIMIT,
                    "bulk_per_minute": BULK_LIMIT,
                },
            )
            stack.start_web()
            stack.start_workers(args.workers)
            sheet, leads = write_sheet(stack.tmp / "leads.csv", args.rows)
            say(
                f"{args.rows} rows in {sheet}; {args.workers} workers; limits {GENERAL_LIMIT} "
                f"general / {BULK_LIMIT} bulk per {WINDOW_SECONDS:g} s"
                + (
                    f"; {args.lost_answers:.0%} of writes' answers lost"
                    if args.lost_answers
                    else ""
                )
            )
            result = run(stack, sheet, leads, args.live_after, args.timeout)
    except KeyboardInterrupt:
        return 130
    print()
    print(report(result, args))
    return 0 if result["check"]["exact"] else 1


def write_sheet(path: Path, rows: int) -> tuple[Path, dict[str, str]]:
    """A CSV as a spreadsheet exports it; returns its path and each row's E.164 phone -> name."""
    leads = {}
    with path.open("w", encoding="utf-8-sig", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["Full Name", "Mobile", "City"])
        for n in range(rows):
            name, mobile = f"Backfill Lead {n}", f"98{n:08d}"
            writer.writerow([name, mobile, "Pune"])
            leads[to_e164(mobile, region=defaults.DEFAULT_REGION)] = name
    return path, leads


def run(
    stack: Stack, sheet: Path, leads: dict[str, str], live_after: float, timeout: float
) -> dict:
    rows = len(leads)
    out: dict = {"rows": rows}
    log = (stack.tmp / "logs" / "import.out").open("wb")
    started = time.monotonic()
    started_epoch = time.time()
    command = subprocess.Popen(
        [sys.executable, "-m", "bridge", "import", str(sheet), "--route", ROUTE],
        cwd=REPO,
        env=stack.bridge_env(),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    ended = None
    try:
        while time.monotonic() - started < live_after:
            if ended is None and command.poll() is not None:
                ended = time.monotonic()
            time.sleep(0.01)
        live = post_live_lead(stack)
        out["live_posted_at"] = time.monotonic() - started
        if ended is None:
            command.wait(timeout=timeout)
            ended = time.monotonic()
    finally:
        if command.poll() is None:
            command.kill()
            command.wait()
        log.close()
    out["import_seconds"] = (ended or time.monotonic()) - started
    out["import_exit"] = command.returncode
    out["import_output"] = (stack.tmp / "logs" / "import.out").read_text(errors="replace")
    say(f"import finished in {out['import_seconds']:.1f} s (exit {command.returncode})")

    store = DeliveryStore(stack.redis)
    out.update(wait_live(store, live, timeout))
    members = wait_audience(stack, rows + 1, started, timeout)
    out["all_in_audience_seconds"] = members["seconds"]
    out["audience_members"] = members["count"]
    org = sandbox_org(stack)
    out["check"] = check_org(org, {**leads, LIVE_PHONE: LIVE_NAME})
    out["live_to_sandbox"] = created_at(org, LIVE_PHONE) - live["accepted_at"]
    out["statuses"] = count_statuses(stack.redis, store)
    requests_seen = sandbox_log(stack)
    out["sandbox_429"] = sum(1 for e in requests_seen if e["status"] == 429)
    out["api_calls"] = Counter(endpoint(e) for e in requests_seen)
    out["started_at"] = dt.datetime.fromtimestamp(started_epoch).astimezone().isoformat()
    return out


def post_live_lead(stack: Stack) -> dict:
    body = {"name": LIVE_NAME, "phone": LIVE_PHONE, "city": "Pune"}
    r = requests.post(
        f"{stack.web_url}/hooks/{ROUTE}", json=body, headers={"X-Bridge-Token": TOKEN}, timeout=10
    )
    accepted_at = time.time()
    r.raise_for_status()
    say(f"live lead answered {r.status_code} {r.json().get('deliveryId')}")
    return {"id": r.json()["deliveryId"], "accepted_at": accepted_at}


def wait_live(store: DeliveryStore, live: dict, timeout: float) -> dict:
    """The live lead's final status, and the seconds from its 202 to delivered."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not STOP.is_set():
        d = store.get(live["id"])
        if d is not None and d.terminal:
            break
        time.sleep(0.05)
    at = {entry["what"]: iso_epoch(entry["at"]) for entry in store.history(live["id"])}
    d = store.get(live["id"])
    return {
        "live_status": d.status if d else "missing",
        "live_to_delivered": at.get("delivered", float("nan")) - live["accepted_at"],
    }


def wait_audience(stack: Stack, want: int, started: float, timeout: float) -> dict:
    """Seconds from ``started`` until the route's audience in the sandbox holds ``want``.

    The bridge marks a lead delivered only after OliAI confirmed it (the audience add, or the
    import's status), so the sandbox is read when no delivery is left unfinished: the moment
    is found within ``POLL_SECONDS``, and the sandbox's answer is what is reported. Deliveries
    that end failed leave the audience short; the wait then stops instead of running out.
    """
    deadline = time.monotonic() + timeout
    count = 0
    last_said = 0.0
    while time.monotonic() < deadline and not STOP.is_set():
        now = time.monotonic()
        if stack.redis.zcard(keys.ACTIVE) == 0:
            count = audience_members(stack)
            if count >= want:
                return {"seconds": now - started, "count": count}
            if stack.redis.zcard(keys.ACTIVE) == 0:
                break  # nothing left to deliver: the rest will not arrive
        if now - last_said >= 15:
            say(f"{stack.redis.zcard(keys.ACTIVE)} deliveries unfinished")
            last_said = now
        time.sleep(POLL_SECONDS)
    return {"seconds": float("nan"), "count": count}


def sandbox_org(stack: Stack) -> dict:
    state = requests.get(f"{stack.sandbox_root}/_sandbox/state", timeout=60).json()
    (org,) = state["orgs"].values()  # one API key, one organization
    return org


def route_audience(org: dict) -> dict | None:
    name = bench_route()["audience_name"]
    return next((a for a in org["audiences"] if a["name"] == name), None)


def audience_members(stack: Stack) -> int:
    audience = route_audience(sandbox_org(stack))
    return 0 if audience is None else audience["contactCount"]


def created_at(org: dict, phone: str) -> float:
    """When the sandbox created the contact with ``phone`` (epoch seconds; NaN if none)."""
    contact = next((c for c in org["contacts"] if c["phoneNumber"] == phone), None)
    return float("nan") if contact is None else iso_epoch(contact["createdAt"])


def check_org(org: dict, leads: dict[str, str]) -> dict:
    """Every lead (E.164 phone -> name) as exactly one contact and audience member, nothing else.

    Contacts are unique by phone in OliAI, so a lead sent twice shows as a contact written twice
    (``updatedAt`` after ``createdAt``), not as a second contact; that costs a call but keeps
    exactly-once, and is counted apart.
    """
    contacts = org["contacts"]
    per_phone = Counter(c["phoneNumber"] for c in contacts)
    phone_of = {c["id"]: c["phoneNumber"] for c in contacts}
    audience = route_audience(org)
    members = Counter(phone_of.get(i, i) for i in (audience or {}).get("contactIds", []))
    out = {
        "leads": len(leads),
        "missing": sum(1 for p in leads if members[p] == 0),
        "doubled": sum(1 for p in leads if per_phone[p] > 1 or members[p] > 1),
        "stray": sum(n for p, n in per_phone.items() if p not in leads)
        + sum(n for p, n in members.items() if p not in leads),
        "misnamed": sum(1 for c in contacts if leads.get(c["phoneNumber"], c["name"]) != c["name"]),
        "rewritten": sum(1 for c in contacts if c["updatedAt"] != c["createdAt"]),
        "imports": len(org["imports"]),
        "imports_updated": sum(i["updated"] for i in org["imports"]),
    }
    out["exact"] = not (out["missing"] or out["doubled"] or out["stray"] or out["misnamed"])
    return out


def sandbox_log(stack: Stack) -> list[dict]:
    return requests.get(f"{stack.sandbox_root}/_sandbox/requests", timeout=30).json()


def endpoint(entry: dict) -> str:
    """``POST /imports/api/bulk``, ``GET /imports/:id/status``: a request without its ids."""
    parts = [":id" if p[:4] in ("imp_", "aud_", "ct_") else p for p in entry["path"].split("/")]
    return f"{entry['method']} {'/'.join(parts).removeprefix('/v1')}"


def count_statuses(redis: Redis, store: DeliveryStore) -> dict[str, int]:
    ids = [i for batch in store.received_newest_first() for i in batch]
    pipe = redis.pipeline(transaction=False)
    for delivery_id in ids:
        pipe.hget(keys.delivery(delivery_id), "status")
    counts: dict[str, int] = {}
    for status in pipe.execute():
        key = (status or b"missing").decode()
        counts[key] = counts.get(key, 0) + 1
    return counts


def iso_epoch(value: str) -> float:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def report(r: dict, args) -> str:
    def s(value: float) -> str:
        return "n/a" if value != value else f"{value:.1f} s"

    rows = r["rows"]
    total = r["all_in_audience_seconds"]
    # The command's summary, without its log lines (JSON, one per stored chunk).
    summary = [
        line
        for line in r["import_output"].splitlines()
        if ": " in line and not line.startswith("{")
    ][-6:]
    c = r["check"]
    lines = [
        "== oliai-bridge backfill benchmark ==",
        f"command: {' '.join(['python -m bench.backfill', *sys.argv[1:]])}",
        f"started {r['started_at']}; {rows} rows, {args.workers} workers; API limits "
        f"{GENERAL_LIMIT} general / {BULK_LIMIT} bulk per {WINDOW_SECONDS:g} s window"
        + (f"; {args.lost_answers:.0%} of writes' answers lost" if args.lost_answers else ""),
        "",
        f"import command: {s(r['import_seconds'])} (exit {r['import_exit']}), "
        f"{rows / r['import_seconds']:.0f} rows/s stored",
        *(f"  {line}" for line in summary),
        f"command start -> every contact in its audience: {s(total)} "
        f"({r['audience_members']} members; "
        f"{'n/a' if total != total else f'{rows / total:.1f}'} deliveries/s)",
        f"live lead posted {r['live_posted_at']:.1f} s in: 202 -> contact in the sandbox "
        f"{s(r['live_to_sandbox'])}, -> delivered {s(r['live_to_delivered'])} "
        f"(target {LIVE_TARGET_SECONDS:g} s; status {r['live_status']})",
        f"sandbox 429s: {r['sandbox_429']}; deliveries by status: {r['statuses']}",
        f"API requests: {sum(r['api_calls'].values())}: "
        + ", ".join(f"{name} {n}" for name, n in r["api_calls"].most_common()),
        f"in the sandbox: {'every' if c['exact'] else 'NOT every'} lead of {c['leads']} "
        f"(rows and the live lead) one contact in the audience exactly once: "
        f"missing {c['missing']}, doubled {c['doubled']}, stray {c['stray']}, "
        f"misnamed {c['misnamed']}; contacts written more than once {c['rewritten']} "
        f"({c['imports']} imports, rows updated by them {c['imports_updated']})",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
