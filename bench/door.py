"""The front door in process: CPU time per webhook through each app's WSGI callable, the
bridge's against a bare Flask app answering 202 and the same app doing one Redis ``LPUSH``
(``bench/webapps.py``), in one run.

    python -m bench.door [--count 3000] [--rounds 2] [--profile tottime|cumulative] [--admission]

A quieter companion to ``python -m bench.ingest``: no server, no client, no sockets but the one
to the embedded Redis, and ``time.process_time`` (this process's CPU, not the wall clock), so
another process's load moves the numbers little. The leads are ``bench.ingest``'s: distinct,
~600 bytes, on the bench route. The apps take turns, ``--rounds`` times; each app's best round
is reported. The ratios are throughputs a CPU-bound server would reach, bare = 1.
``--profile`` runs the bridge once more under cProfile (CPU timer) and prints its top lines;
``--admission`` times one webhook's admission script call sent through redis-py's command path
and as ``bridge.admission`` sends it (packed once), in turn.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from werkzeug.test import EnvironBuilder

from bench.ingest import PAD, machine
from bench.stack import ROUTE, TOKEN, bench_route
from bench.webapps import bare_app
from bridge.processes import write_toml
from bridge.storage import EmbeddedRedis
from bridge.web import ReadDeadlines

App = Callable[[dict, Callable], object]


def lead_body(n: int, nonce: str) -> str:
    """``bench.ingest``'s n-th lead: a distinct ~600-byte JSON body."""
    return (
        f'{{"name":"Lead {n}","phone":"+919{n % 10**9:09d}","email":"lead{n}@example.com",'
        f'"city":"Mumbai","utm_source":"bench","run":"{nonce}","note":"{"x" * PAD}"}}'
    )


def lead_environ(n: int, nonce: str) -> dict:
    """The WSGI environ of ``bench.ingest``'s n-th lead."""
    return EnvironBuilder(
        method="POST",
        path=f"/hooks/{ROUTE}",
        query_string=f"token={TOKEN}",
        data=lead_body(n, nonce),
        content_type="application/json",
    ).get_environ()


def serve(app: App, environs: list[dict]) -> list[str]:
    """Each environ through ``app`` in turn, its body read: the status lines answered."""
    statuses: list[str] = []

    def start_response(status, headers, exc_info=None):
        statuses.append(status)

    for environ in environs:
        b"".join(app(environ, start_response))
    return statuses


def expect_accepted(statuses: list[str]) -> None:
    """Stop the benchmark unless every answer was a 202 (a refusal costs less: no figure)."""
    refused = [s for s in statuses if not s.startswith("202")]
    if refused:
        raise SystemExit(f"{len(refused)} answers were not 202, e.g. {refused[0]}")


def cpu_per_webhook(app: App, first: int, count: int, nonce: str) -> float:
    """Microseconds of this process's CPU per webhook, over ``count`` distinct leads (the
    environs are built before the clock starts). Every answer must be a 202."""
    environs = [lead_environ(first + i, nonce) for i in range(count)]
    started = time.process_time()
    statuses = serve(app, environs)
    spent = time.process_time() - started
    expect_accepted(statuses)
    return spent / count * 1e6


def admission_call_ab(app: App, nonce: str, calls: int, rounds: int) -> list[tuple[float, float]]:
    """(redis-py's ``Script`` call, the bridge's own packed call) in microseconds of CPU per
    call, per round: one webhook's admission call, captured, then sent ``calls`` times each way
    in turn (a repeat is answered as a duplicate: the client's side of the call is the same)."""
    from bridge import admission

    captured: list[tuple[admission.Admission, list]] = []
    send = admission.Admission._evalsha

    def capture(self: admission.Admission, args: list) -> object:
        captured.append((self, list(args)))
        return send(self, args)

    admission.Admission._evalsha = capture  # type: ignore[method-assign]
    try:
        b"".join(app(lead_environ(8 * 10**6, nonce), lambda *a: None))
    finally:
        admission.Admission._evalsha = send  # type: ignore[method-assign]
    call, args = captured[-1]
    out = []
    for _ in range(rounds):
        started = time.process_time()
        for _ in range(calls):
            call.script(args=args, client=call.redis)
        through_redis_py = (time.process_time() - started) / calls * 1e6
        started = time.process_time()
        for _ in range(calls):
            send(call, args)
        out.append((through_redis_py, (time.process_time() - started) / calls * 1e6))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.door", description=__doc__)
    parser.add_argument("--count", type=int, default=3000, help="webhooks per app per round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--profile", choices=("tottime", "cumulative"), default=None)
    parser.add_argument("--lines", type=int, default=50, help="profile lines to print")
    parser.add_argument(
        "--admission",
        action="store_true",
        help="also time the admission script call through redis-py and as the bridge sends it",
    )
    args = parser.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="bench-door-"))
    redis_server = EmbeddedRedis(tmp / "redis")
    redis_server.start()
    try:
        # The bridge reads its settings the way ``oliai-bridge web`` does.
        os.environ["REDIS_URL"] = redis_server.url
        os.environ["BRIDGE_CONFIG"] = str(
            write_toml(tmp / "config.toml", {"routes": [bench_route()]})
        )
        os.environ["LOG_LEVEL"] = "WARNING"
        from bridge.app import create_app
        from bridge.config import load_settings

        settings = load_settings()
        apps: dict[str, App] = {
            "bare": ReadDeadlines(bare_app(), settings.max_body_bytes),
            "lpush": ReadDeadlines(bare_app(redis_server.url), settings.max_body_bytes),
            "bridge": ReadDeadlines(create_app(settings), settings.max_body_bytes),
        }
        nonce = f"door{time.time_ns()}"
        for app in apps.values():  # imports, connections, the script's load, caches
            cpu_per_webhook(app, 1, 300, nonce)
        best: dict[str, float] = {}
        for round_ in range(args.rounds):
            for name, app in apps.items():
                spent = cpu_per_webhook(app, (round_ + 1) * 10**6, args.count, nonce)
                best[name] = min(best.get(name, spent), spent)
        print(f"front door in process, {machine()}")
        print(f"{args.count} distinct ~600-byte leads per app and round, best of {args.rounds}")
        print(f"{'app':<8}{'CPU us/webhook':>16}{'ratio':>8}")
        for name, spent in best.items():
            print(f"{name:<8}{spent:>16.0f}{best['bare'] / spent:>8.2f}")
        print(f"bridge / lpush: {best['lpush'] / best['bridge']:.2f}")
        if args.admission:
            for n, (slow, fast) in enumerate(admission_call_ab(apps["bridge"], nonce, 1000, 4)):
                print(
                    f"admission call, round {n + 1}: through redis-py {slow:.0f} us, "
                    f"packed once {fast:.0f} us ({fast / slow:.2f})"
                )
        if args.profile:
            environs = [lead_environ(9 * 10**6 + i, nonce) for i in range(args.count)]
            profile = cProfile.Profile(time.process_time)
            profile.enable()
            for environ in environs:
                b"".join(apps["bridge"](environ, lambda *a: None))
            profile.disable()
            pstats.Stats(profile).sort_stats(args.profile).print_stats(args.lines)
    finally:
        redis_server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
