"""The report: one text block with the machine, every section's numbers and the ratios."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

E2E_TARGET_SECONDS = 2.0


def ms(seconds: float) -> str:
    if seconds != seconds:
        return "n/a"
    return f"{seconds * 1000:.2f} ms" if seconds < 0.001 else f"{seconds * 1000:.1f} ms"


def cpu_model() -> str | None:
    """The CPU's model name from /proc/cpuinfo (None where there is none)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def machine() -> str:
    cpu = cpu_model() or "?"
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
