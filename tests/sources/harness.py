"""What every source test module does the same way, with the source under test passed in.

Each test module keeps its own builder of one valid request (signed, or carrying the route's
token, as the provider sends it) and breaks one thing of it per test, as standard-webhooks'
tests do. This module does the rest: routes, requests, the adapter's pure path (verify, parse,
normalize, map), the Flask app's round trip and a stand-in for a provider's HTTP API.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest

from bridge.config import Route, build_settings
from bridge.event import Event, InboundRequest, Lead
from bridge.exceptions import SignatureInvalid
from bridge.mapping import map_event
from bridge.sources.base import Source

#: ``received_at`` of every event a test stores.
RECEIVED_AT = "2026-01-01T00:00:00.000Z"

# --- routes and requests -------------------------------------------------------------------


def route_data(base: Mapping[str, Any], **changes: Any) -> dict[str, Any]:
    """A route table: ``base`` with ``changes``, where None leaves a key out."""
    return {k: v for k, v in {**base, **changes}.items() if v is not None}


def make_route(base: Mapping[str, Any], **changes: Any) -> Route:
    """The route of ``route_data(base, **changes)``, checked as the configuration checks it."""
    data = route_data(base, **changes)
    return build_settings({"routes": [data]}, env={}).routes[data["name"]]


def with_headers(base: Mapping[str, str], **overrides: str | None) -> dict[str, str]:
    """``base`` headers with ``overrides`` (``x_bridge_token=`` sets ``x-bridge-token``); None
    removes a header."""
    headers = dict(base)
    for name, value in overrides.items():
        name = name.replace("_", "-")
        if value is None:
            headers.pop(name, None)
        else:
            headers[name] = value
    return headers


def request(
    body: bytes,
    headers: Mapping[str, str],
    query: Mapping[str, str] | None = None,
    *,
    route: str = "r",
    url: str = "",
) -> InboundRequest:
    """A POST to the route's hook, as the app hands it to the adapter."""
    return InboundRequest(
        method="POST", route=route, body=body, headers=headers, query=query or {}, url=url
    )


# --- the adapter's pure path ---------------------------------------------------------------


def leads_of(source: Source, req: InboundRequest, route: Route) -> list[Lead]:
    """What the app makes of a request before storing it: verify, parse, normalize."""
    source.verify(req, route)
    return source.normalize(req, source.parse(req), route)


def event_of(source: Source, lead: Lead, route: Route) -> Event:
    """The lead as stored (``"hash"`` standing for the body hash of a lead without an id)."""
    return Event.from_lead(
        lead,
        route=route.name,
        source=source.name,
        event_id=lead.event_id or "hash",
        received_at=RECEIVED_AT,
    )


def contact_of(source: Source, lead: Lead, route: Route) -> dict[str, Any]:
    """The contact the route maps the stored lead to."""
    return map_event(event_of(source, lead, route), route)


def refusal(source: Source, req: InboundRequest, route: Route) -> SignatureInvalid:
    """The ``SignatureInvalid`` the source refuses the request with (the test fails without)."""
    with pytest.raises(SignatureInvalid) as info:
        source.verify(req, route)
    return info.value


def reason_of(source: Source, req: InboundRequest, route: Route) -> str:
    """The reason (the metric label) the source refuses the request for."""
    return refusal(source, req, route).reason


# --- through the real Flask app and Redis --------------------------------------------------


def post(client: Any, req: InboundRequest, url: str | None = None) -> Any:
    """``req`` through the app: its body and headers to its route's hook (with its query), or
    to ``url``."""
    if url is None:
        url = f"/hooks/{req.route}" + (f"?{urlencode(req.query)}" if req.query else "")
    return client.post(url, data=req.body, headers=dict(req.headers))


def post_twice(
    client: Any, req: InboundRequest, *, status: int = 202, repeat: InboundRequest | None = None
) -> tuple[Any, Any]:
    """Post ``req``, then ``repeat`` (by default ``req`` itself, as a provider's retry): the first
    is answered ``status``, the repeat 200 as a duplicate. Both answers, for further checks."""
    first = post(client, req)
    assert first.status_code == status, first.get_json()
    again = post(client, req if repeat is None else repeat)
    assert again.status_code == 200
    assert again.get_json()["duplicate"] is True
    return first, again


# --- a provider's HTTP API on a local port -------------------------------------------------


class FakeApi:
    """Canned answers by path (JSON, or raw text / bytes), each after an optional delay, and
    every request seen as ``{"path", "query", "headers"}``. ``prefix`` (an API version such as
    ``/v23.0``) is part of ``url`` and of every answered path."""

    def __init__(
        self,
        answers: Mapping[str, tuple[int, Any]] | None = None,
        *,
        missing: tuple[int, Any] = (404, {}),
        prefix: str = "",
    ):
        self.answers: dict[str, tuple[int, Any, float]] = {}
        self.seen: list[dict[str, Any]] = []
        self.prefix = prefix
        for path, (status, body) in (answers or {}).items():
            self.answer(path, status, body)
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's naming)
                url = urlsplit(self.path)
                api.seen.append(
                    {"path": url.path, "query": parse_qs(url.query), "headers": dict(self.headers)}
                )
                status, body, delay = api.answers.get(url.path, (*missing, 0.0))
                time.sleep(delay)
                if isinstance(body, str):
                    body = body.encode()
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:
                    pass  # the client gave up (timeout tests)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}{prefix}"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def answer(self, path: str, status: int, body: Any, delay: float = 0.0) -> None:
        self.answers[f"{self.prefix}/{path.lstrip('/')}"] = (status, body, delay)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def unused_url() -> str:
    """An http URL on a local port nothing listens on (connection refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"
