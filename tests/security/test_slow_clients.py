"""Slow and stalled connections against ``oliai-bridge web`` as shipped (gunicorn, two processes):
they must not keep a real sender from being answered, and they are closed at their deadline.
"""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest
import requests

from bridge import defaults
from tests.bridge_fixtures import route_dict
from tests.sources import test_typeform

pytestmark = pytest.mark.e2e

STALLED = 100
TRICKLING = 100


def stack_config():
    return {
        "oliai": {"rate_window_seconds": 2, "general_per_minute": 1000},
        "routes": [
            route_dict(name="open", token="open-token"),
            route_dict(
                name="typeform",
                source="typeform",
                secret=test_typeform.SECRET,
                audience_name="Typeform leads",
            ),
        ],
    }


def connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    return sock


def stalled(url: str) -> socket.socket:
    """A request line and one header, then nothing."""
    sock = connect(url)
    sock.sendall(b"POST /hooks/open HTTP/1.1\r\nHost: bridge\r\n")
    return sock


def trickle(sockets: list[socket.socket], stop: threading.Event) -> None:
    """Complete headers with a large declared body, then one byte every 0.2 s per connection."""
    while not stop.is_set():
        for sock in sockets:
            try:
                sock.send(b"x")
            except OSError:  # closed by the bridge: its deadline passed
                pass
        stop.wait(0.2)


def signed_typeform_post(url: str) -> requests.Response:
    req = test_typeform.signed()
    return requests.post(
        f"{url}/hooks/typeform",
        data=req.body,
        headers={k: v for k, v in req.headers.items()},
        timeout=10,
    )


def closed_by_peer(sock: socket.socket) -> bool:
    sock.settimeout(0.2)
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False
    except OSError:
        return True


def test_stalled_and_trickling_connections_leave_real_senders_answered(make_stack, sandbox):
    stack = make_stack(stack_config())
    hold = [stalled(stack.url) for _ in range(STALLED)]
    tricklers = []
    for _ in range(TRICKLING):
        sock = connect(stack.url)
        sock.sendall(
            b"POST /hooks/open?token=open-token HTTP/1.1\r\nHost: bridge\r\n"
            b"Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n{"
        )
        tricklers.append(sock)
    stop = threading.Event()
    pump = threading.Thread(target=trickle, args=(tricklers, stop), daemon=True)
    pump.start()
    try:
        time.sleep(0.5)  # every slow connection is accepted and waiting on its reads
        answers = []
        for _ in range(5):
            started = time.monotonic()
            answer = signed_typeform_post(stack.url)
            answers.append((answer.status_code, time.monotonic() - started))
        # a signed webhook on another route is answered, and at once: 1 s is the promise
        # (a gunicorn thread pool held by the slow clients left it waiting 30 s)
        assert all(status in (200, 202) for status, _ in answers), answers
        assert max(seconds for _, seconds in answers) < 1.0, answers
        lead = stack.wait_for(signed_typeform_post(stack.url).json()["deliveryId"])
        assert lead["status"] == "delivered"

        # the stalled ones are shut once their header allowance is over; the tricklers once
        # their body allowance (5 s + 100 KB at 64 KB/s) is
        time.sleep(defaults.HEADER_TIMEOUT_SECONDS + 0.5)
        assert all(closed_by_peer(sock) for sock in hold)
        time.sleep(defaults.BODY_TIMEOUT_SECONDS + 100_000 / defaults.BODY_MIN_BYTES_PER_SECOND)
        assert all(closed_by_peer(sock) for sock in tricklers)
    finally:
        stop.set()
        pump.join(5)
        for sock in hold + tricklers:
            sock.close()
    # nothing of theirs was stored: the partial bodies never became deliveries
    assert stack.store.counts().get("received", 0) <= 6
    assert "Traceback" not in stack.log_text()


def test_a_slow_but_honest_sender_within_the_allowance_is_served(make_stack, sandbox):
    stack = make_stack(stack_config())
    body = json.dumps({"name": "Asha Rao", "phone": "+91 98765 43210"}).encode()
    sock = connect(stack.url)
    head = (
        b"POST /hooks/open?token=open-token HTTP/1.1\r\nHost: bridge\r\nConnection: close\r\n"
        b"Content-Type: application/json\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n"
    )
    for piece in (head[:20], head[20:], body[:10], body[10:]):
        sock.sendall(piece)
        time.sleep(0.5)  # 2 s in all: slow, but well inside the allowances
    answer = b""
    while chunk := sock.recv(4096):
        answer += chunk
    sock.close()
    assert answer.startswith(b"HTTP/1.1 202"), answer[:200]
