"""What is stored of a lead: the ``Delivery`` record as a Redis hash, and the raw request.

A delivery is the source of truth for a lead's fate; the RQ job that works on it carries only
its id. Statuses: ``queued`` → ``delivering`` → ``delivered``, or ``retrying`` (a job is
scheduled), or ``failed`` / ``skipped`` with a reason (both replayable). The hash holds one field
per dataclass field, written by the codec its type picks; a field that may be ``None`` is left
out of the hash while it is. Nothing here holds a secret: the raw request keeps only the headers
an adapter declared safe, drops ``?token=`` and has every route secret redacted.
"""

from __future__ import annotations

import base64
import json
import time
import types
import typing
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, fields
from secrets import token_hex
from typing import Any

from bridge.event import Event, InboundRequest
from bridge.redaction import redact

TERMINAL = ("delivered", "failed", "skipped")
ACTIVE = ("queued", "delivering", "retrying")
#: Where a delivery came from: a webhook (``live``), or ``oliai-bridge import`` and replays
#: (``backfill``), so that workers can put a lead someone just submitted first.
LANES = ("live", "backfill")


def new_delivery_id() -> str:
    """Sortable by time, unguessable: ``dlv_<ms hex><random>``."""
    return f"dlv_{int(time.time() * 1000):x}{token_hex(6)}"


@dataclass
class Delivery:
    id: str
    route: str
    source: str
    status: str
    event: Event
    received_at: str
    #: Set by the store on every save; a new delivery's is its ``received_at``.
    updated_at: str = ""
    raw_id: str | None = None
    lead_index: int = 0
    contact: dict[str, Any] | None = None
    contact_id: str | None = None
    audience_id: str | None = None
    audience_added: bool = False
    attempts: int = 0
    failures: int = 0
    reason_code: str | None = None
    reason: str | None = None
    last_api: dict[str, Any] | None = None
    job_id: str | None = None
    job_seq: int = 0
    #: The reason code this delivery is listed under in the failed indexes (None: not listed;
    #: ``""``: listed without a reason code).
    failed_index: str | None = None
    #: ``LANES``: records stored before lanes existed read as live.
    lane: str = "live"
    #: The batch a worker claimed it into, while it works on it (``jobs.lanes``).
    batch_id: str | None = None

    def __post_init__(self) -> None:
        if not self.updated_at:
            self.updated_at = self.received_at

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    def to_hash(self, only: Collection[str] | None = None) -> dict[str, str]:
        """Every field that is not ``None``, as text (``OPTIONAL_FIELDS`` are the others);
        ``only``: just those, for a save that changes a few."""
        out = {}
        for field in HASH_FIELDS:
            if only is not None and field.name not in only:
                continue
            value = getattr(self, field.name)
            if value is not None:
                out[field.name] = field.codec.dump(value)
        return out

    @classmethod
    def from_hash(cls, h: Mapping[bytes, bytes]) -> Delivery:
        """The delivery ``to_hash`` wrote; a field missing from the hash takes its default."""
        stored = {k.decode(): v.decode() for k, v in h.items()}
        return cls(
            **{f.name: f.codec.load(stored[f.name]) for f in HASH_FIELDS if f.name in stored}
        )

    def summary(self) -> dict[str, Any]:
        """What ``GET /deliveries/<id>`` and ``failed list`` show: no raw payload, no secret."""
        return {
            "deliveryId": self.id,
            "route": self.route,
            "source": self.source,
            "status": self.status,
            "eventId": self.event.event_id,
            "receivedAt": self.received_at,
            "updatedAt": self.updated_at,
            "attempts": self.attempts,
            "reasonCode": self.reason_code,
            "reason": self.reason,
            "lastApiAnswer": self.last_api,
            "contactId": self.contact_id,
            "audienceId": self.audience_id,
            "phoneNumber": (self.contact or {}).get("phoneNumber"),
            "lane": self.lane,
        }


# --- the hash layout ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Codec:
    """How a field's value becomes the text of its hash field, and back."""

    dump: Callable[[Any], str]
    load: Callable[[str], Any]


TEXT = Codec(dump=str, load=str)
NUMBER = Codec(dump=str, load=int)
FLAG = Codec(dump=lambda value: "1" if value else "", load=lambda text: text == "1")
JSON = Codec(dump=json.dumps, load=json.loads)
EVENT = Codec(
    dump=lambda event: json.dumps(event.to_dict()),
    load=lambda text: Event.from_dict(json.loads(text)),
)
#: A field's codec, by its type (``X | None`` by ``X``; ``dict[...]`` by ``dict``).
CODECS: dict[type, Codec] = {str: TEXT, int: NUMBER, bool: FLAG, dict: JSON, Event: EVENT}


@dataclass(frozen=True)
class HashField:
    name: str
    codec: Codec
    #: ``None`` is a value of the field: it is then absent from the hash (and removed from it).
    optional: bool


def hash_fields(cls: type) -> tuple[HashField, ...]:
    """One ``HashField`` per dataclass field of ``cls``; a type without a codec is an error."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in fields(cls):
        kind = hints[f.name]
        optional = False
        if typing.get_origin(kind) in (typing.Union, types.UnionType):
            members = [m for m in typing.get_args(kind) if m is not type(None)]
            optional = len(members) < len(typing.get_args(kind))
            if len(members) != 1:
                raise TypeError(f"{cls.__name__}.{f.name}: {kind} has no single stored type")
            kind = members[0]
        codec = CODECS.get(typing.get_origin(kind) or kind)
        if codec is None:
            raise TypeError(f"{cls.__name__}.{f.name}: no codec stores a {kind}")
        out.append(HashField(f.name, codec, optional))
    return tuple(out)


HASH_FIELDS = hash_fields(Delivery)
#: Fields absent from the hash while ``None``: a save removes them (``HDEL``).
OPTIONAL_FIELDS = tuple(f.name for f in HASH_FIELDS if f.optional)


# --- the raw request ----------------------------------------------------------------------------


def raw_record(
    req: InboundRequest, kept_headers: tuple[str, ...], secrets: list[str] | None = None
) -> dict[str, Any]:
    """The request as stored for replay --remap: body, content type, safe headers, query.

    Route secrets are redacted even from the body: some senders echo the hook URL, token and
    all, inside the payload (Jotform's ``webhookURL``).
    """
    headers = {"content-type": req.header("content-type") or ""}
    for name in kept_headers:
        value = req.header(name)
        if value is not None:
            headers[name] = value
    query = {k: v for k, v in req.query.items() if k != "token"}
    body = redact(req.body, secrets or [])
    return {
        "method": req.method,
        "route": req.route,
        "headers": headers,
        "query": query,
        "body_b64": base64.b64encode(body).decode(),
    }


def request_from_raw(raw: dict[str, Any]) -> InboundRequest:
    return InboundRequest(
        method=raw.get("method", "POST"),
        route=raw.get("route", ""),
        body=base64.b64decode(raw.get("body_b64", "")),
        headers=dict(raw.get("headers") or {}),
        query=dict(raw.get("query") or {}),
    )
