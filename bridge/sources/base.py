"""What a source adapter is, and the helpers adapters share (verification, fetching, values).

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
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bridge.event import InboundRequest, Lead
from bridge.exceptions import (
    IngestError,
    ProviderFetchError,
    SignatureInvalid,
)
from bridge.parsing import parse_body
from bridge.values import country_code, id_text, squash, text

if TYPE_CHECKING:
    import requests

    from bridge.event import Event
    from bridge.settings import Route

TOKEN_HEADER = "x-bridge-token"
TOKEN_QUERY = "token"

#: Event ids an adapter takes from a body or a header are cut to this length (as ``bridge.ingest``
#: cuts every event id).
MAX_EVENT_ID_CHARS = 200
#: Error text quoted from a provider's API is cut to this length.
MAX_ERROR_CHARS = 300


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
    #: True for providers that count any status but 200 as a failed delivery: every 2xx answer
    #: is sent as 200.
    answers_200 = False

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
        answer = default_reply(outcome)
        if self.answers_200 and 200 <= answer.status < 300:
            answer.status = 200
        return answer

    # --- worker side -------------------------------------------------------------------------

    def fetch(self, event: Event, route: Route, http: requests.Session, timeout: float) -> Lead:
        """For id-only sources: fetch the lead the event points at (``event.fetch``)."""
        raise NotImplementedError(f"source {self.name!r} does not fetch leads")


# --- fetching from a provider's API (sources whose webhooks carry ids only) --------------


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


def fetch_reference(event: Event, kind: str, what: str) -> str:
    """The id of the record ``event.fetch`` names, when it names a ``kind`` record. Anything else
    is a permanent ``ProviderFetchError``: the stored event will not change on a retry."""
    spec = event.fetch or {}
    record_id = id_text(spec.get("id"))
    if spec.get("kind") != kind or record_id is None:
        raise ProviderFetchError(f"not a {what} reference: {spec!r}", transient=False)
    return record_id


def refused_fetch(provider: str, status: int, what: str, detail: str) -> ProviderFetchError:
    """A provider API's non-200 answer for ``what``: transient for 429 and 5xx (the provider's
    own trouble passes), permanent otherwise (a missing record or a bad token stays so)."""
    return ProviderFetchError(
        f"{provider} answered {status} for {what}: {detail}",
        transient=status == 429 or status >= 500,
        status=status,
    )


def redact(message: str, route: Route, mask: str = "***") -> str:
    """A provider's error text as it may be stored and shown: every secret of the route masked
    (an API may echo the token it was sent) and cut to ``MAX_ERROR_CHARS``."""
    for secret in route.secrets():
        message = message.replace(secret, mask)
    return message[:MAX_ERROR_CHARS]


# --- answers -----------------------------------------------------------------------------


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
    retry_after = getattr(error, "retry_after", None)  # StorageUnavailable, QuotaExceeded
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    return Reply(error.status, error.to_dict(), headers=headers)


def raise_malformed(message: str) -> None:
    from bridge.exceptions import MalformedBody

    raise MalformedBody(message)


# --- verification helpers ----------------------------------------------------------------


def check_signed(
    req: InboundRequest,
    route: Route,
    check_signature: Callable[[InboundRequest, str], None],
) -> None:
    """``verify`` of a source that signs: ``check_signature(req, secret)`` with the route's
    secret. A route without one must have a ``token`` or ``basic_auth`` instead (a hook made
    where the provider offers no signing, such as Webflow's dashboard); then those are checked
    too, whichever are configured."""
    if route.secret:
        check_signature(req, route.secret)
    elif not (route.token or route.basic_auth):
        require_secret(route)
    check_shared_credentials(req, route)


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


# --- flat records: Zapier's contract, shared by WordPress plugins' key/value bodies ------

#: Record keys (``squash``-ed) that carry the sender's event id instead of a field.
EVENT_ID_KEYS = ("eventid",)
#: Record keys (``squash``-ed) whose alpha-2 value is the phone's country hint.
COUNTRY_KEYS = ("country", "countrycode")


def flat_record_lead(record: dict[str, Any], event_id: str | None = None) -> Lead:
    """A flat (or "unflattened") record of mapped fields as a lead.

    ``event_id`` in the record wins over the one given; the country hint is read from a top-level
    or ``contact.`` key named ``country`` / ``country_code`` holding an ISO alpha-2 code.
    """
    fields: dict[str, Any] = {}
    for key, value in record.items():
        if squash(str(key)) in EVENT_ID_KEYS:
            event_id = text(value)[:MAX_EVENT_ID_CHARS] or event_id
            continue
        fields[str(key)] = value
    lead = Lead(fields=fields, event_id=event_id)
    for scope in (fields, fields.get("contact")):
        if not isinstance(scope, dict):
            continue
        for key, value in scope.items():
            code = country_code(text(value))
            if squash(str(key)) in COUNTRY_KEYS and code:
                lead.country = code
                return lead
    return lead
