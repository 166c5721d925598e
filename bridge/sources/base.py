"""What a source adapter is, and the verification helpers every adapter shares.

An adapter is a ``Source`` subclass instance: a few class attributes that describe the source
(does it sign, what to do with an unmappable submission, which headers identify an event) and
small pure methods (verify, parse, normalize, reply). ``bridge.ingest`` does the rest: size
limit, dedup, storage, enqueueing, metrics.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bridge.event import InboundRequest, Lead
from bridge.exceptions import (
    IngestError,
    ProviderFetchError,
    SignatureInvalid,
    StorageUnavailable,
)
from bridge.parsing import parse_body

if TYPE_CHECKING:
    import requests

    from bridge.config import Route
    from bridge.event import Event

TOKEN_HEADER = "x-bridge-token"
TOKEN_QUERY = "token"


@dataclass
class Reply:
    """An HTTP answer, independent of Flask."""

    status: int
    body: bytes | str | dict | list = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)

    def body_bytes(self) -> bytes:
        if isinstance(self.body, (dict, list)):
            return json.dumps(self.body).encode()
        if isinstance(self.body, str):
            return self.body.encode()
        return self.body


@dataclass
class Accepted:
    """One lead of a request as the bridge recorded it."""

    delivery_id: str
    status: str  # queued | skipped | duplicate
    reason: str | None = None


@dataclass
class Outcome:
    """What became of a request: the leads recorded, or the error that refused it."""

    accepted: list[Accepted] = field(default_factory=list)
    error: IngestError | None = None
    #: The request answered (a source may answer differently by its kind, e.g. SOAP or JSON).
    request: InboundRequest | None = None


class Source:
    """Base adapter: token / basic-auth check, parse by content type, body-as-fields."""

    #: The ``source`` value in a route.
    name = "base"
    #: True when the provider signs requests with a shared secret (config then requires one).
    signs = False
    #: "reject": an unmappable submission gets a 422 (the sender shows it to its user);
    #: "accept": it is recorded as a ``skipped`` delivery and acknowledged, for providers that
    #: disable a hook after 4xx answers.
    unmappable = "reject"
    #: Request headers kept with the stored raw payload (needed to normalize it again on replay).
    #: Never list a header that carries a secret or a signature.
    kept_headers: tuple[str, ...] = ()
    #: Seconds of clock skew allowed where the signature covers a timestamp.
    timestamp_tolerance = 300

    # --- configuration ---------------------------------------------------------------------

    def check_route(self, route: Route) -> list[str]:
        """Problems with this route's keys for this source, as ``key: message`` strings."""
        return []

    # --- request handling (web side, pure) --------------------------------------------------

    def handshake(self, req: InboundRequest, route: Route) -> Reply | None:
        """Answer a GET/HEAD verification request; None means the method is not allowed."""
        return None

    def verify(self, req: InboundRequest, route: Route) -> None:
        """Raise ``SignatureInvalid`` unless the request comes from the route's sender."""
        check_shared_credentials(req, route)

    def parse(self, req: InboundRequest) -> Any:
        return parse_body(req)

    def normalize(self, req: InboundRequest, payload: Any, route: Route) -> list[Lead]:
        """The leads in this request (several for batch senders)."""
        if not isinstance(payload, dict):
            raise_malformed("expected a JSON object or a form")
        return [Lead(fields=payload)]

    def reply(self, outcome: Outcome) -> Reply:
        return default_reply(outcome)

    # --- worker side -------------------------------------------------------------------------

    def fetch(self, event: Event, route: Route, http: requests.Session, timeout: float) -> Lead:
        """For id-only sources: fetch the lead the event points at (``event.fetch``)."""
        raise NotImplementedError(f"source {self.name!r} does not fetch leads")


def provider_get(
    http: requests.Session,
    url: str,
    *,
    provider: str,
    timeout: float,
    params: dict | None = None,
    headers: dict | None = None,
) -> tuple[requests.Response, Any]:
    """GET a provider's JSON API for ``Source.fetch``: the response and its JSON (None when the
    body is not JSON). Network trouble is a transient ``ProviderFetchError`` that names only
    the provider and the error type: the exception's own text holds the URL, which may hold a
    token."""
    import requests

    try:
        resp = http.get(url, params=params, headers=headers, timeout=timeout)
    except requests.Timeout:
        raise ProviderFetchError(
            f"{provider} did not answer within {timeout:g} s", transient=True
        ) from None
    except requests.RequestException as exc:
        raise ProviderFetchError(
            f"{provider} unreachable ({type(exc).__name__})", transient=True
        ) from None
    try:
        data = resp.json()
    except ValueError:
        data = None
    return resp, data


def default_reply(outcome: Outcome) -> Reply:
    """202 for queued leads, 200 for a pure repeat, the error's own status otherwise."""
    if outcome.error is not None:
        return error_reply(outcome.error)
    items = outcome.accepted
    if not items:
        return Reply(200, {"status": "ignored", "message": "no lead in this request"})
    if all(a.status == "duplicate" for a in items):
        status = 200
    else:
        status = 202
    first = items[0]
    body: dict[str, Any] = {"deliveryId": first.delivery_id, "status": first.status}
    if first.status == "duplicate":
        body["duplicate"] = True
    if first.reason:
        body["reason"] = first.reason
    if len(items) > 1:
        body["deliveries"] = [
            {"deliveryId": a.delivery_id, "status": a.status}
            | ({"reason": a.reason} if a.reason else {})
            for a in items
        ]
    return Reply(status, body)


def error_reply(error: IngestError) -> Reply:
    headers = {}
    if isinstance(error, StorageUnavailable):
        headers["Retry-After"] = str(error.retry_after)
    return Reply(error.status, error.to_dict(), headers=headers)


def raise_malformed(message: str) -> None:
    from bridge.exceptions import MalformedBody

    raise MalformedBody(message)


# --- verification helpers ----------------------------------------------------------------


def check_shared_credentials(req: InboundRequest, route: Route) -> None:
    """The route's ``token`` (header or query) and ``basic_auth``, whichever are configured."""
    if route.token:
        check_token(req, route.token)
    if route.basic_auth:
        check_basic_auth(req, route.basic_auth)


def check_token(req: InboundRequest, expected: str) -> None:
    given = req.header(TOKEN_HEADER) or req.query.get(TOKEN_QUERY)
    if not given:
        raise SignatureInvalid(
            "missing token: send it as the X-Bridge-Token header or the ?token= query parameter",
            reason="missing_token",
        )
    if not equal(given, expected):
        raise SignatureInvalid("token does not match this route's token", reason="bad_token")


def check_basic_auth(req: InboundRequest, expected: str) -> None:
    header = req.header("authorization") or ""
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic" or not value:
        raise SignatureInvalid("missing HTTP Basic credentials", reason="missing_header")
    try:
        given = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        raise SignatureInvalid("unreadable HTTP Basic credentials", reason="bad_token") from None
    if not equal(given, expected):
        raise SignatureInvalid("HTTP Basic credentials do not match", reason="bad_token")


def require_header(req: InboundRequest, name: str) -> str:
    value = req.header(name)
    if not value:
        raise SignatureInvalid(f"missing {name} header", reason="missing_header")
    return value.strip()


def require_secret(route: Route) -> str:
    if not route.secret:
        raise SignatureInvalid("this route has no signing secret configured", reason="no_secret")
    return route.secret


def hmac_digest(secret: str | bytes, message: bytes, algorithm: str = "sha256") -> bytes:
    key = secret.encode() if isinstance(secret, str) else secret
    return hmac.new(key, message, getattr(hashlib, algorithm)).digest()


def equal(given: str | bytes, expected: str | bytes) -> bool:
    """Constant-time comparison of two strings or byte strings."""
    a = given.encode() if isinstance(given, str) else given
    b = expected.encode() if isinstance(expected, str) else expected
    return hmac.compare_digest(a, b)


def check_timestamp(
    timestamp: str | int | float, tolerance: float, now: float | None = None
) -> None:
    """Raise ``SignatureInvalid`` (reason ``stale_timestamp``) outside ``±tolerance`` seconds.

    Accepts seconds or milliseconds since the epoch.
    """
    try:
        value = float(timestamp)
    except (TypeError, ValueError):
        raise SignatureInvalid(
            f"unreadable timestamp {str(timestamp)[:40]!r}", reason="bad_timestamp"
        ) from None
    if not math.isfinite(value):
        raise SignatureInvalid("unreadable timestamp", reason="bad_timestamp")
    if value > 1e11:  # milliseconds
        value /= 1000.0
    now = time.time() if now is None else now
    if abs(now - value) > tolerance:
        raise SignatureInvalid(
            f"timestamp is {int(abs(now - value))} s away from now (tolerance {int(tolerance)} s)",
            reason="stale_timestamp",
        )
