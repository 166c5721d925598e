"""The data that travels from a webhook request to a delivery job: pure values, no Flask.

``InboundRequest`` is what a source adapter sees of a request; ``Lead`` is what an adapter
makes of one record in it (a batch carries several); ``Event`` is a lead as stored with its
delivery, the thing route mappings (JMESPath) read.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from dataclasses import fields as dataclass_fields
from datetime import UTC, datetime
from typing import Any


@dataclass(frozen=True)
class InboundRequest:
    """A webhook request as received: raw body bytes, lower-cased header names, query args."""

    method: str
    route: str
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)
    query: Mapping[str, str] = field(default_factory=dict)
    url: str = ""
    #: The sender's address: the connection's, or the one trusted proxies put in
    #: ``X-Forwarded-For`` (``bridge.trusted_proxy_count``). None where there is none (``try``).
    remote_addr: str | None = None

    def header(self, name: str, default: str | None = None) -> str | None:
        return self.headers.get(name.lower(), default)

    @property
    def content_type(self) -> str:
        """The media type alone, lower case (``application/json``), without parameters."""
        value = self.header("content-type") or ""
        return value.split(";", 1)[0].strip().lower()

    @property
    def body_hash(self) -> str:
        return hashlib.sha256(self.body).hexdigest()


@dataclass
class Lead:
    """One record an adapter found in a request.

    ``fields``: what the user filled in, keyed by the names the user sees in their tool.
    ``name`` / ``phone`` / ``email`` / ``first_name`` / ``last_name``: values the adapter knows
    from typed fields (a Typeform ``phone_number`` answer, Shopify ``phone``); the mapping uses
    them before guessing from key names. ``country``: an ISO 3166 alpha-2 hint for the phone
    number from the same payload. ``event_id``: the provider's id for this record (None: the
    body hash is used). ``fetch``: for sources that send ids only, what the delivery job must
    fetch before mapping (``{"kind": "meta_lead", "id": "..."}``).
    """

    fields: dict[str, Any] = field(default_factory=dict)
    event_id: str | None = None
    name: str | None = None
    first_name: str | None = None
    last_name: str | None = None
    phone: str | None = None
    email: str | None = None
    country: str | None = None
    fetch: dict[str, Any] | None = None


@dataclass
class Event:
    """A lead as the bridge stores it; the document that ``[routes.fields]`` expressions read."""

    route: str
    source: str
    event_id: str
    received_at: str
    fields: dict[str, Any]
    hints: dict[str, Any] = field(default_factory=dict)
    fetch: dict[str, Any] | None = None

    @classmethod
    def from_lead(
        cls, lead: Lead, *, route: str, source: str, event_id: str, received_at: str
    ) -> Event:
        hints = {
            k: v
            for k, v in {
                "name": lead.name,
                "first_name": lead.first_name,
                "last_name": lead.last_name,
                "phone": lead.phone,
                "email": lead.email,
                "country": lead.country,
            }.items()
            if v not in (None, "")
        }
        return cls(
            route=route,
            source=source,
            event_id=event_id,
            received_at=received_at,
            fields=lead.fields,
            hints=hints,
            fetch=lead.fetch,
        )

    def to_dict(self) -> dict[str, Any]:
        # Shallow: it is only ever serialized, and a deep copy of the fields is most of what a
        # worker spends on bookkeeping when it writes a batch of thousands.
        return {f.name: getattr(self, f.name) for f in dataclass_fields(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Event:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


def utcnow_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
