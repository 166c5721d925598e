"""The traffic: distinct leads, and concurrent keep-alive clients that send a fixed count."""

from __future__ import annotations

import itertools
import json
import threading
import time
from dataclasses import dataclass

import requests

from bench.stack import STOP, TOKEN


class Leads:
    """Distinct valid Indian mobile numbers for the whole run (the sandbox is never reset)."""

    def __init__(self) -> None:
        self.n = itertools.count(1)

    def take(self, count: int) -> list[dict]:
        out = []
        for _ in range(count):
            n = next(self.n)
            out.append({"name": f"Bench Lead {n}", "phone": f"+9198{n:08d}", "city": "Pune"})
        return out


@dataclass
class LoadResult:
    latencies: list[float]  # seconds, every request
    statuses: list[int | None]
    ids: list[str]  # delivery ids of 202s, in request order
    wall: float
    errors: dict[str, int]

    def ok(self, status: int) -> int:
        return sum(1 for s in self.statuses if s == status)


def run_load(url: str, count: int, clients: int, bodies: list[dict] | None) -> LoadResult:
    """``clients`` threads, each a keep-alive ``requests.Session``, share ``count`` requests:
    POST ``bodies[i]`` (or GET when ``bodies`` is None). Bounded: each request once."""
    counter = itertools.count()
    lock = threading.Lock()
    lat: list[float | None] = [None] * count
    st: list[int | None] = [None] * count
    ids: list[str | None] = [None] * count
    errors: dict[str, int] = {}
    start_gate = threading.Barrier(clients + 1)

    def client() -> None:
        s = requests.Session()
        s.headers["X-Bridge-Token"] = TOKEN
        start_gate.wait()
        try:
            while not STOP.is_set():
                with lock:
                    i = next(counter)
                if i >= count:
                    return
                t = time.perf_counter()
                try:
                    if bodies is None:
                        r = s.get(url, timeout=30)
                    else:
                        r = s.post(url, json=bodies[i], timeout=30)
                    status = r.status_code
                    body = r.content
                except requests.RequestException as exc:
                    status, body = None, b""
                    with lock:
                        errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                lat[i] = time.perf_counter() - t
                st[i] = status
                if status == 202:
                    ids[i] = json.loads(body)["deliveryId"]
        finally:
            s.close()

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for th in threads:
        th.start()
    start_gate.wait()
    t0 = time.perf_counter()
    for th in threads:
        th.join()
    wall = time.perf_counter() - t0
    return LoadResult(
        latencies=[x for x in lat if x is not None],
        statuses=st,
        ids=[i for i in ids if i],
        wall=wall,
        errors=errors,
    )
