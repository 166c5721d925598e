"""Redis bytes per lead: queued (accepted, waiting for a worker) and delivered (kept for history).

    .venv/bin/python -m bench.memory [--leads 1000]

Everything runs in this process except Redis: an embedded ``redis-server`` (temp dir), the OliAI
sandbox on a loopback port in a thread (limits far above what the run needs), ``Ingest.handle``
for each webhook (the exact path a gunicorn worker runs) and an RQ ``SimpleWorker`` in burst mode
for the deliveries. Each webhook body is about 600 bytes of JSON, a typical form submission.
A warm-up of a few leads first creates what exists once (audience cache, counters, registries),
so the figures are what each further lead costs. ``used_memory`` from ``INFO memory``.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from redis import Redis  # noqa: E402

from bridge import keys  # noqa: E402
from bridge.config import build_settings  # noqa: E402
from bridge.event import InboundRequest  # noqa: E402
from bridge.storage import EmbeddedRedis  # noqa: E402

API_KEY = "sk_live_" + "memorybench".ljust(32, "8")
TOKEN = "memory-bench-token-0123456789"
ROUTE = "mem"
#: The size the issue's memory target is stated for.
BODY_BYTES = 600
#: What a lead's free-text message is made of (about as compressible as a short English note).
WORDS = (
    "please call me about the offer we are a team of twelve looking for pricing on your annual "
    "plan and a demo next week before friday my manager wants to compare two vendors so send the "
    "brochure too best time after six in the evening or saturday morning thanks budget approved "
    "quarter delivery installation support warranty discount bulk order urgent callback hindi "
    "english preferred regards"
).split()


def lead_body(n: int) -> bytes:
    """About ``BODY_BYTES`` of form submission: contact fields, consent, UTM tags, a note."""
    body = {
        "full_name": f"Memory Lead {n}",
        "phone": f"+9197{n:08d}",
        "email": f"memory.lead.{n}@example.com",
        "city": "Pune",
        "company": "Example Traders Pvt Ltd",
        "consent": "yes",
        "utm_source": "google",
        "utm_medium": "cpc",
        "utm_campaign": "spring-sale-2026",
        "page": "https://example.com/landing/spring-sale?variant=b",
        "message": "",
    }
    filler = BODY_BYTES - len(json.dumps(body).encode())
    # Words drawn at random per lead, not one sentence repeated: the raw body is stored
    # deflated, and a repeated filler would flatter it.
    pick = random.Random(n)
    words = " ".join(pick.choice(WORDS) for _ in range(120))
    body["message"] = words[: max(0, filler)]
    return json.dumps(body).encode()


def start_sandbox() -> tuple[str, object]:
    from werkzeug.serving import make_server

    from sandbox.options import Options
    from sandbox.server import create_app

    options = Options(keys=[API_KEY], general_limit=10**7, bulk_limit=10**7, quiet=True)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = make_server("127.0.0.1", 0, create_app(options), threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_port}/v1", server


def used_memory(redis: Redis) -> int:
    return int(redis.info("memory")["used_memory"])


def by_family(redis: Redis) -> dict[str, int]:
    """``MEMORY USAGE`` summed by key family (``d``, ``d:log``, ``raw``, ``dedup``, ``idx``...)."""
    out: dict[str, int] = {}
    for key in redis.scan_iter(count=1000):
        name = key.decode()
        parts = name.split(":")
        family = parts[0] if parts[0] == "rq" else parts[1] if len(parts) > 1 else name
        if family == "d" and name.endswith(":log"):
            family = "d:log"
        out[family] = out.get(family, 0) + int(redis.memory_usage(key, samples=0) or 0)
    return out


def measure_memory(leads: int = 1000, warmup: int = 20) -> dict:
    """Bytes per queued and per delivered lead; starts and stops its own Redis and sandbox."""
    from rq import SimpleWorker

    from bridge.ingest import Ingest
    from bridge.queue import make_queue
    from jobs.context import configure

    tmp = Path(tempfile.mkdtemp(prefix="oliai-memory-"))
    server = EmbeddedRedis(tmp / "redis", fsync="everysec")
    server.start()
    base_url, sandbox = start_sandbox()
    try:
        redis = Redis.from_url(server.url)
        settings = build_settings(
            {
                "bridge": {"max_requests_per_minute": 1_000_000},  # our own flood, not a sender's
                "oliai": {
                    "base_url": base_url,
                    "api_key": API_KEY,
                    "general_per_minute": 100_000,
                    "bulk_per_minute": 10_000,
                },
                "routes": [
                    {
                        "name": ROUTE,
                        "source": "generic",
                        "token": TOKEN,
                        "audience_name": "Memory leads",
                    }
                ],
            },
            env={},
        )
        queue = make_queue(redis, settings.queue_name)
        ingest = Ingest(settings, redis, queue)
        configure(settings, redis)

        def post(n: int) -> str:
            req = InboundRequest(
                method="POST",
                route=ROUTE,
                body=lead_body(n),
                headers={"content-type": "application/json", "x-bridge-token": TOKEN},
            )
            reply = ingest.handle(req)
            if reply.status != 202:
                raise RuntimeError(f"webhook {n} answered {reply.status}: {reply.body_bytes()!r}")
            return json.loads(reply.body_bytes())["deliveryId"]

        def deliver(ids: list[str], timeout: float) -> None:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                SimpleWorker([queue], connection=redis).work(burst=True, logging_level="WARNING")
                pipe = redis.pipeline(transaction=False)
                for i in ids:
                    pipe.hget(keys.delivery(i), "status")
                if all(s == b"delivered" for s in pipe.execute()):
                    return
                time.sleep(0.2)
            raise RuntimeError("deliveries did not finish in time")

        warm = [post(n) for n in range(warmup)]
        deliver(warm, 60)
        time.sleep(0.2)
        before, families0 = used_memory(redis), by_family(redis)
        started = time.monotonic()
        ids = [post(n) for n in range(warmup, warmup + leads)]
        ingest_seconds = time.monotonic() - started
        queued, families1 = used_memory(redis), by_family(redis)
        deliver(ids, 600)
        delivered, families2 = used_memory(redis), by_family(redis)

        def per_lead(families: dict[str, int]) -> dict[str, float]:
            rows = {k: (v - families0.get(k, 0)) / leads for k, v in families.items()}
            return {k: v for k, v in sorted(rows.items(), key=lambda kv: -kv[1]) if v >= 1}

        return {
            "leads": leads,
            "body_bytes": len(lead_body(warmup)),
            "queued_bytes_per_lead": (queued - before) / leads,
            "delivered_bytes_per_lead": (delivered - before) / leads,
            "ingest_seconds": ingest_seconds,
            "queued_by_family": per_lead(families1),
            "delivered_by_family": per_lead(families2),
        }
    finally:
        sandbox.shutdown()
        server.stop()


def report(res: dict) -> str:
    def families(rows: dict[str, float]) -> str:
        return ", ".join(f"{k} {v:.0f}" for k, v in rows.items())

    return (
        f"redis memory: {res['leads']} webhooks of {res['body_bytes']} bytes (INFO memory "
        f"used_memory)\n"
        f"   per queued lead     {res['queued_bytes_per_lead']:7.0f} bytes   (target <= 2048)\n"
        f"   per delivered lead  {res['delivered_bytes_per_lead']:7.0f} bytes   (target <= 1536, "
        "kept for history)\n"
        f"   queued, by key family (MEMORY USAGE): {families(res['queued_by_family'])}\n"
        f"   delivered, by key family:             {families(res['delivered_by_family'])}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--leads", type=int, default=1000)
    args = parser.parse_args(argv)
    print(report(measure_memory(args.leads)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
