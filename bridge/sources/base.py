"""What a source adapter is: the ``Source`` base class and the answers it gives.

An adapter is a ``Source`` subclass instance: a few class attributes that describe the source
(its signature schemes, what to do with an unmappable submission, which headers identify an
event) and small pure methods (verify, parse, normalize, reply). ``bridge.ingest`` does the
rest: size limit, dedup, storage, enqueueing, metrics. Signature, token and HTTP Basic checks
are in ``bridge.signatures``; reading a lead from a provider's API in
``bridge.sources.fetching``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bridge.event import InboundRequest, Lead
from bridge.exceptions import IngestError
from bridge.parsing import parse_body
from bridge.signatures import Scheme, check_schemes, check_shared_credentials, check_signed
from bridge.values import country_code, squash, text

if TYPE_CHECKING:
    import requests

    from bridge.event import Event
    from bridge.settings import Route

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
    #: How the provider signs, as data (``bridge.signatures.Scheme``): alternatives the provider
    #: sends side by side or instead of each other. A source whose scheme cannot be said as data
    #: (HubSpot) overrides ``verify`` instead.
    schemes: tuple[Scheme, ...] = ()
    #: "reject": an unmappable submission gets a 422 (the sender shows it to its user);
    #: "accept": it is recorded as a ``skipped`` delivery and acknowledged, for providers that
    #: disable a hook after 4xx answers.
    unmappable = "reject"
    #: Request headers kept with the stored raw payload (needed to normalize it again on replay).
    #: Never list a header that carries a secret or a signature.
    kept_headers: tuple[str, ...] = ()
    #: True for providers that count any status but 200 as a failed delivery: every 2xx answer
    #: is sent as 200.
    answers_200 = False
    #: True when the event id comes from a header the signature does not cover: a body already
    #: accepted is then a duplicate whatever id it comes with, so a captured request re-sent
    #: under a new id is not delivered twice.
    dedups_body = False
    #: True when the adapter reads the URL the request was posted to (``InboundRequest.url``,
    #: for a signature that covers it): the web side works it out only for such sources.
    reads_url = False

    # --- configuration ---------------------------------------------------------------------

    def check_route(self, route: Route) -> list[str]:
        """Problems with this route's keys for this source, as ``key: message`` strings."""
        return []

    # --- request handling (web side, pure) --------------------------------------------------

    def handshake(self, req: InboundRequest, route: Route) -> Reply | None:
        """Answer a GET/HEAD verification request; None means the method is not allowed."""
        return None

    def verify(self, req: InboundRequest, route: Route) -> None:
        """Raise ``SignatureInvalid`` unless the request comes from the route's sender: signed
        with one of the route's secrets (when the source signs), carrying its token or HTTP
        Basic credentials (whichever the route sets)."""
        if self.signs:
            check_signed(req, route, self.check_signature)
        else:
            check_shared_credentials(req, route)

    def check_signature(
        self, req: InboundRequest, secrets: str | Sequence[str], now: float | None = None
    ) -> None:
        """Raise ``SignatureInvalid`` unless ``req`` is signed with one of ``secrets``."""
        check_schemes(req, self.schemes, secrets, now)

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
