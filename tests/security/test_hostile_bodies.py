"""Hostile bodies over real sockets against ``oliai-bridge web`` as shipped (gunicorn, two
processes): oversize (declared or chunked), deeply nested JSON and XML, entity expansion and
external entities. Each gets its named 4xx in JSON, nothing is stored, and the bridge goes on
serving. (The same inputs through the app alone, for every source: tests/test_properties.py.)
"""

from __future__ import annotations

import json
import socket

import pytest
import requests

from tests.bridge_fixtures import route_dict

pytestmark = pytest.mark.e2e

TOKEN = "hostile-bodies-token-31c7"
MAX_BODY = 64 * 1024


@pytest.fixture
def stack(make_stack):
    return make_stack(
        {
            "bridge": {"max_body_bytes": MAX_BODY},
            "routes": [route_dict(name="form", token=TOKEN)],
        },
        workers=0,
    )


def hook(stack) -> str:
    return f"{stack.hook('form')}?token={TOKEN}"


def raw_exchange(stack, head: bytes, body: bytes) -> bytes:
    """Send ``head`` and ``body`` on a fresh connection and read the answer until it closes."""
    host, port = stack.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(head + body)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def json_answer(raw: bytes) -> tuple[int, dict]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    assert b"content-type: application/json" in head.lower(), head
    return status, json.loads(body)


def post(stack, body: bytes, content_type: str) -> requests.Response:
    return requests.post(hook(stack), data=body, headers={"Content-Type": content_type}, timeout=10)


def nothing_stored_and_still_serving(stack) -> None:
    assert stack.store.counts().get("received", 0) == 0
    assert requests.get(f"{stack.url}/readyz", timeout=5).status_code == 200
    lead = {"name": "Asha Rao", "phone": "+91 98765 43210"}
    assert requests.post(hook(stack), json=lead, timeout=5).status_code == 202
    assert "Traceback" not in stack.log_text()


def test_a_declared_oversize_body_is_413_before_it_is_sent(stack):
    head = (
        b"POST /hooks/form?token=" + TOKEN.encode() + b" HTTP/1.1\r\nHost: bridge\r\n"
        b"Content-Type: application/json\r\nContent-Length: 50000000\r\n\r\n"
    )
    # 50 MB announced, 1 KB sent: the answer comes without the rest
    status, body = json_answer(raw_exchange(stack, head, b"{" + b" " * 1023))
    assert status == 413
    assert body == {
        "error": "body_too_large",
        "message": f"the body is larger than {MAX_BODY} bytes",
    }
    nothing_stored_and_still_serving(stack)


def test_a_chunked_oversize_body_is_413(stack):
    def chunks():
        yield b'{"name": "x", "note": "'
        for _ in range(2 * MAX_BODY // 4096):
            yield b"a" * 4096
        yield b'"}'

    r = requests.post(
        hook(stack), data=chunks(), headers={"Content-Type": "application/json"}, timeout=10
    )
    assert r.status_code == 413, r.text[:200]
    assert r.json()["error"] == "body_too_large"
    nothing_stored_and_still_serving(stack)


def test_a_chunked_body_within_the_limit_is_read_whole(stack):
    lead = json.dumps({"name": "Asha Rao", "phone": "+91 98765 43210", "note": "n" * 30_000})
    r = requests.post(
        hook(stack),
        data=(lead[i : i + 4096].encode() for i in range(0, len(lead), 4096)),
        headers={"Content-Type": "application/json"},
        timeout=10,
    )
    assert r.status_code == 202, r.text[:300]
    assert stack.store.get(r.json()["deliveryId"]).event.fields["note"] == "n" * 30_000


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b'{"phone": "+919876543210", "x": ' + b"[" * 5000 + b"1" + b"]" * 5000 + b"}", "json"),
        (
            b'{"phone": "+919876543210", "x": ' + b'{"a": ' * 5000 + b"1" + b"}" * 5000 + b"}",
            "json",
        ),
        (
            b"<lead><phone>+919876543210</phone>" + b"<x>" * 5000 + b"</x>" * 5000 + b"</lead>",
            "xml",
        ),
    ],
    ids=["json-lists", "json-objects", "xml"],
)
def test_deeply_nested_bodies_are_400_naming_the_nesting(stack, body, content_type):
    r = post(stack, body, "application/json" if content_type == "json" else "text/xml")
    assert r.status_code == 400, r.text[:300]
    assert r.json()["error"] == "malformed_body" and "nested" in r.json()["message"], r.json()
    nothing_stored_and_still_serving(stack)


def test_an_entity_expansion_bomb_is_400_naming_entities(stack):
    laughs = [b'<!ENTITY lol0 "lol">'] + [
        b'<!ENTITY lol%d "%s">' % (i, b"&lol%d;" % (i - 1) * 10) for i in range(1, 10)
    ]
    bomb = (
        b'<?xml version="1.0"?><!DOCTYPE lead [' + b"".join(laughs) + b"]>"
        b"<lead><phone>+919876543210</phone><note>&lol9;</note></lead>"
    )
    r = post(stack, bomb, "application/xml")
    assert r.status_code == 400, r.text[:300]
    assert r.json()["error"] == "malformed_body" and "entities" in r.json()["message"], r.json()
    nothing_stored_and_still_serving(stack)


@pytest.mark.parametrize(
    "entity",
    [b'SYSTEM "file:///etc/hostname"', b'SYSTEM "http://127.0.0.1:1/x"'],
    ids=["file", "url"],
)
def test_an_external_entity_is_400_and_never_read(stack, entity):
    xxe = (
        b'<?xml version="1.0"?><!DOCTYPE lead [<!ENTITY xxe ' + entity + b">]>"
        b"<lead><phone>+919876543210</phone><name>&xxe;</name></lead>"
    )
    r = post(stack, xxe, "text/xml")
    assert r.status_code == 400, r.text[:300]
    assert r.json()["error"] == "malformed_body" and "entities" in r.json()["message"], r.json()
    hostname = open("/etc/hostname").read().strip()
    assert not hostname or hostname not in r.text
    nothing_stored_and_still_serving(stack)
