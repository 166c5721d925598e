"""Where a webhook's time goes in the web process: each stage of the bridge's path, in process,
as CPU per webhook and as a multiple of the bare Flask app's whole request, in one run.

    python -m bench.stages [--count 1000] [--rounds 3] [--instructions]

The leads are ``bench.ingest``'s (distinct, ~600 bytes, on the bench route); each stage runs
over all of them before the next starts, on a real embedded Redis:

- verify: the source's signature or token check;
- parse: the body read as leads (``request_events``);
- map: each lead's contact: phone to E.164, name, email, metadata (``map_lead``);
- delivery: the delivery made for it (``delivery_for``);
- record: what storing it writes, recorded before its call (``Ingest._prepare``: the raw
  request deflated, the record, its history, indexes and ticket);
- call, 4 a call: those records stored four at a time, as a web process under load stores them
  (``Ingest._store_prepared``: the admission script's one round trip, answered);
- bridge, whole: the bridge's WSGI app, one webhook a call; bare, whole: the bare app's.

By default the clock is ``time.process_time`` (this process's CPU), best of ``--rounds``: on a
shared machine the stages' shares hold better than their microseconds. ``--instructions``
counts instructions instead, exactly and whatever else runs: the same stages under valgrind's
callgrind (Debian package ``valgrind``), run with no leads and with ``--count`` (at most a few
hundred: it is ~50 times slower), the difference divided by the count. Instructions are not
time (a cache miss or a system call costs more than its count), but a change that removes
some shows here on a noisy machine, where the clock cannot.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench.door import App, expect_accepted, lead_body, lead_environ, serve
from bench.ingest import machine
from bench.stack import REPO, ROUTE, TOKEN, bench_route
from bench.webapps import bare_app
from bridge.processes import write_toml
from bridge.storage import EmbeddedRedis

STAGES = ("verify", "parse", "map", "delivery", "record", "call, 4 a call")
WHOLE = ("bridge, whole", "bare, whole")
#: Leads stored together in a call, as at 16 connections (~4: ``bench/README.md``).
PER_CALL = 4


class Stages:
    """The bridge's stages for a batch of leads, each a callable run after the one before."""

    def __init__(self, redis_url: str, tmp: Path):
        os.environ["REDIS_URL"] = redis_url
        os.environ["BRIDGE_CONFIG"] = str(
            write_toml(tmp / "config.toml", {"routes": [bench_route()]})
        )
        os.environ["LOG_LEVEL"] = "WARNING"
        from bridge.app import create_app
        from bridge.config import load_settings
        from bridge.web import ReadDeadlines

        self.settings = load_settings()
        app = create_app(self.settings)
        self.ingest = app.extensions["oliai_bridge"]["ingest"]
        self.route = self.settings.routes[ROUTE]
        self.apps: dict[str, App] = {
            "bridge, whole": ReadDeadlines(app, self.settings.max_body_bytes),
            "bare, whole": ReadDeadlines(bare_app(), self.settings.max_body_bytes),
        }

    def request(self, n: int, nonce: str):
        from bridge.event import InboundRequest

        body = lead_body(n, nonce).encode()
        headers = {"content-type": "application/json", "host": "bench", "user-agent": "wrk"}
        return InboundRequest(
            "POST", ROUTE, body, headers, {"token": TOKEN}, remote_addr="127.0.0.1"
        )

    def warm_up(self, count: int, nonce: str) -> None:
        """Every stage once over ``count`` leads of their own, before any is measured: imports,
        the script's load, caches."""
        for _, run in self.stages(1, count, nonce):
            run()

    def stages(self, first: int, count: int, nonce: str) -> list[tuple[str, Callable[[], None]]]:
        """The stages over ``count`` fresh leads, in order (each uses what the one before made)."""
        from bridge.event import utcnow_iso
        from bridge.ingest import Received, delivery_for
        from bridge.pipeline import map_lead, request_events
        from bridge.sources import get_source

        ingest, route = self.ingest, self.route
        source = get_source(route.source)
        reqs = [self.request(first + i, nonce) for i in range(count)]
        now = utcnow_iso()
        made: dict[str, list] = {}

        def verify():
            for req in reqs:
                source.verify(req, route)

        def parse():
            made["events"] = [request_events(req, route, source, now) for req in reqs]

        def map_():
            made["results"] = [[map_lead(e, route) for e in events] for events in made["events"]]

        def delivery():
            made["deliveries"] = [
                [delivery_for(r, i, len(results), route, source) for i, r in enumerate(results)]
                for results in made["results"]
            ]

        def record():
            made["prepared"] = [
                ingest._prepare([Received(req, source.kept_headers, d, source.dedups_body)])
                for req, d in zip(reqs, made["deliveries"], strict=True)
            ]

        def call():
            prepared = made["prepared"]
            for at in range(0, len(prepared), PER_CALL):
                accepted = ingest._store_prepared(prepared[at : at + PER_CALL])
                if any(a.status != "queued" for a in accepted):
                    raise SystemExit(f"not stored as new: {accepted}")

        environs = {
            name: [lead_environ(first + (n + 1) * 10**7 + i, nonce) for i in range(count)]
            for n, name in enumerate(self.apps)
        }

        def whole(name: str) -> Callable[[], None]:
            return lambda: expect_accepted(serve(self.apps[name], environs[name]))

        steps = [verify, parse, map_, delivery, record, call]
        return [*zip(STAGES, steps, strict=True), *((n, whole(n)) for n in WHOLE)]


def report(per_webhook: dict[str, float], unit: str, header: str) -> None:
    bare = per_webhook["bare, whole"]
    staged = sum(per_webhook[s] for s in STAGES)
    print(header)
    print(f"{'stage':<18}{unit:>16}{'x bare request':>16}")
    for name in (*STAGES, *WHOLE):
        if name == WHOLE[0]:
            print(f"{'stages, summed':<18}{staged:>16,.0f}{staged / bare:>16.2f}")
        print(f"{name:<18}{per_webhook[name]:>16,.0f}{per_webhook[name] / bare:>16.2f}")


def wait_cost(waits: int = 300) -> dict[str, float]:
    """CPU (us) this process spends on one socket round trip to a peer process that answers
    at once, or after 1 ms spent busy (as Redis running a call) or asleep: what waiting costs
    on this machine beyond the work. Blocking and being woken again cost tens or hundreds of us
    on some virtual machines, where on bare hardware they cost a few: a web process that waits
    for Redis pays it on every wait."""
    mine, peer = socket.socketpair()
    pid = os.fork()
    if pid == 0:  # the peer: answers each request as it says ("0", "busy", "asleep")
        mine.close()
        while asked := peer.recv(16):
            if asked == b"busy":
                until = time.perf_counter() + 0.001
                while time.perf_counter() < until:
                    pass
            elif asked == b"asleep":
                time.sleep(0.001)
            peer.send(b"k")
        os._exit(0)
    peer.close()
    spent = {}
    try:
        for how in ("0", "busy", "asleep"):
            started = time.process_time()
            for _ in range(waits):
                mine.send(how.encode())
                mine.recv(1)
            spent[how] = (time.process_time() - started) / waits * 1e6
    finally:
        mine.close()
        os.waitpid(pid, 0)
    return spent


def by_clock(staged: Stages, count: int, rounds: int) -> dict[str, float]:
    best: dict[str, float] = {}
    nonce = f"stages{time.time_ns()}"
    staged.warm_up(200, nonce)
    for round_ in range(rounds):
        for stage, run in staged.stages((round_ + 1) * 10**6, count, nonce):
            started = time.process_time()
            run()
            spent = (time.process_time() - started) / count * 1e6
            best[stage] = min(best.get(stage, spent), spent)
    return best


def child(staged: Stages, count: int) -> None:
    """Under callgrind: warm up, then each stage followed by a dump named after it."""
    nonce = f"stages{time.time_ns()}"
    staged.warm_up(100, nonce)
    steps = staged.stages(10**6, count, nonce)
    dump("start")
    for stage, run in steps:
        run()
        dump(stage)


def label(stage: str) -> str:
    """A stage's name as a dump's description (one word)."""
    return re.sub(r"\W+", "_", stage)


def dump(stage: str) -> None:
    sys.stdout.flush()
    subprocess.run(
        ["callgrind_control", "--dump=" + label(stage), str(os.getpid())],
        stdout=subprocess.DEVNULL,
        check=True,
    )


def by_instructions(redis_url: str, count: int, out: Path) -> dict[str, float]:
    totals = {}
    for n in (0, count):
        prefix = out / f"cg-{n}"
        subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={prefix}.%p",
                sys.executable,
                "-m",
                "bench.stages",
                "--child",
                redis_url,
                "--count",
                str(n),
            ],
            check=True,
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        totals[n] = dumped(out, f"cg-{n}.")
    return {
        stage: (totals[count][label(stage)] - totals[0][label(stage)]) / count
        for stage in (*STAGES, *WHOLE)
    }


def dumped(folder: Path, prefix: str) -> dict[str, int]:
    """Each dump's instruction count by its name."""
    found = {}
    for file in folder.glob(prefix + "*"):
        text = file.read_text(errors="replace")[:20000]
        name = re.search(r"^desc: Trigger: dump (\S+)", text, re.M)
        total = re.search(r"^summary: (\d+)", text, re.M)
        if name and total:
            found[name.group(1)] = int(total.group(1))
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.stages", description=__doc__)
    parser.add_argument("--count", type=int, default=None, help="leads per stage and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--instructions", action="store_true")
    parser.add_argument("--child", metavar="REDIS_URL", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="bench-stages-"))
    try:
        if args.child:
            child(Stages(args.child, tmp), args.count)
            return 0
        if args.instructions and not shutil.which("valgrind"):
            print("valgrind is not installed: apt-get install valgrind")
            return 2
        redis_server = EmbeddedRedis(tmp / "redis")
        redis_server.start()
        try:
            started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
            where = f"{started}, {machine()}"
            if args.instructions:
                count = args.count or 300
                found = by_instructions(redis_server.url, count, tmp)
                header = (
                    f"webhook stages in process, instructions (callgrind), {count} leads, {where}"
                )
                report(found, "instr/webhook", header)
            else:
                count = args.count or 1000
                found = by_clock(Stages(redis_server.url, tmp), count, args.rounds)
                header = (
                    f"webhook stages in process, CPU, {count} leads, best of {args.rounds}, {where}"
                )
                report(found, "CPU us/webhook", header)
                waits = wait_cost()
                print(
                    f"this machine: a socket round trip costs this process {waits['0']:.0f} us "
                    f"of CPU when its peer answers at once, {waits['busy']:.0f} us when it "
                    f"answers after 1 ms busy, {waits['asleep']:.0f} us after 1 ms asleep"
                )
        finally:
            redis_server.stop()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
