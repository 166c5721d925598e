"""Any producer that signs the Standard Webhooks way (spec v1.0.0, standardwebhooks.com).

Signed content is ``"<webhook-id>.<webhook-timestamp>.<raw body>"``, HMAC-SHA256 with the
base64 key after the ``whsec_`` prefix; ``webhook-signature`` lists ``v1,<base64>`` entries
separated by spaces (several during a key rotation: any valid one is enough). The lead is the
envelope's ``data`` (the whole body when there is no envelope); ``webhook-id`` is the event id.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from bridge.event import InboundRequest, Lead
from bridge.exceptions import MalformedBody, SignatureInvalid
from bridge.settings import Route
from bridge.sources.base import (
    MAX_EVENT_ID_CHARS,
    Source,
    check_signed,
    check_timestamp,
    equal,
    hmac_digest,
)

SECRET_PREFIX = "whsec_"
# The spec's header names, then Svix's (the reference producer) for producers that still send
# the branded ones; each request uses one family for all three headers.
HEADER_PREFIXES = ("webhook-", "svix-")


class StandardWebhooksSource(Source):
    name = "standard_webhooks"
    signs = True
    # Producers retry every non-2xx on their own schedule (up to days) and nobody reads the
    # answer: a payload without a usable phone is recorded as skipped and acknowledged.
    unmappable = "accept"
    kept_headers = ("webhook-id", "svix-id")
    #: The spec's recommended tolerance (and the reference libraries'): five minutes.
    timestamp_tolerance = 300

    def check_route(self, route: Route) -> list[str]:
        problems = []
        if route.secret is not None and signing_key(route.secret) is None:
            problems.append(
                "secret: must be the producer's whsec_... secret (base64 after the prefix)"
            )
        types = route.options.get("event_types")
        if types is not None and (
            not isinstance(types, list) or not all(isinstance(t, str) for t in types)
        ):
            problems.append(
                'event_types: must be a list of event type strings, e.g. ["lead.created"]'
            )
        return problems

    def verify(self, req: InboundRequest, route: Route) -> None:
        check_signed(req, route, self.check_signature)

    def check_signature(self, req: InboundRequest, secret: str, now: float | None = None) -> None:
        key = signing_key(secret)
        if key is None:
            raise SignatureInvalid(
                "this route's secret is not a whsec_ base64 secret", reason="no_secret"
            )
        msg_id, timestamp, header = message_headers(req)
        try:
            int(timestamp)
        except ValueError:
            raise SignatureInvalid(
                f"webhook-timestamp is not integer seconds: {timestamp[:40]!r}",
                reason="bad_timestamp",
            ) from None
        expected = sign(key, msg_id, timestamp, req.body)
        versions = set()
        for entry in header.split():
            version, _, value = entry.partition(",")
            versions.add(version)
            if version != "v1":
                continue  # v1a (ed25519) and unknown versions: another entry may be v1
            try:
                given = base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                continue
            if equal(given, expected):
                # After the signature, so a replayed genuine message is told apart from a forgery.
                check_timestamp(timestamp, self.timestamp_tolerance, now=now)
                return
        if versions and "v1" not in versions:
            message = (
                f"webhook-signature has no v1 (HMAC) entry, only {', '.join(sorted(versions))}: "
                "ask the producer for a whsec_ signing secret"
            )
        else:
            message = "webhook-signature does not match (check the route's whsec_ secret)"
        raise SignatureInvalid(message, reason="bad_signature")

    def normalize(self, req: InboundRequest, payload: Any, route: Route) -> list[Lead]:
        if not isinstance(payload, dict):
            raise MalformedBody("expected a JSON object (the spec's {type, timestamp, data})")
        kind = payload.get("type")
        wanted = route.options.get("event_types")
        if isinstance(wanted, list) and wanted and kind not in wanted:
            return []  # an event type this route does not turn into contacts
        msg_id = message_id(req)
        data = payload.get("data", payload) if "type" in payload else payload
        if isinstance(data, dict):
            return [Lead(fields=data, event_id=msg_id)]
        if isinstance(data, list):
            leads = []
            for i, item in enumerate(data):
                if not isinstance(item, dict):
                    raise MalformedBody(f"data[{i}] must be an object")
                # One message id for several records: each gets its own id.
                leads.append(Lead(fields=item, event_id=f"{msg_id}:{i}" if msg_id else None))
            return leads
        raise MalformedBody("'data' must be an object (or an array of objects)")


def signing_key(secret: str) -> bytes | None:
    """The HMAC key of a ``whsec_`` secret; None when it is not base64."""
    text = secret.strip()
    if text.startswith(SECRET_PREFIX):
        text = text[len(SECRET_PREFIX) :]
    text += "=" * (-len(text) % 4)  # producers show the secret with or without padding
    try:
        key = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None
    return key or None


def sign(key: bytes, msg_id: str, timestamp: str, body: bytes) -> bytes:
    """The v1 signature (raw bytes) of one message."""
    return hmac_digest(key, f"{msg_id}.{timestamp}.".encode() + body)


def message_headers(req: InboundRequest) -> tuple[str, str, str]:
    """(id, timestamp, signature) from the first header family the request uses."""
    for prefix in HEADER_PREFIXES:
        values = [req.header(prefix + n) for n in ("id", "timestamp", "signature")]
        if any(values):
            for name, value in zip(("id", "timestamp", "signature"), values, strict=True):
                if not value or not value.strip():
                    raise SignatureInvalid(
                        f"missing {prefix}{name} header", reason="missing_header"
                    )
            return values[0].strip(), values[1].strip(), values[2].strip()
    raise SignatureInvalid("missing webhook-signature header", reason="missing_header")


def message_id(req: InboundRequest) -> str | None:
    for prefix in HEADER_PREFIXES:
        value = (req.header(prefix + "id") or "").strip()
        if value:
            return value[:MAX_EVENT_ID_CHARS]
    return None


SOURCE = StandardWebhooksSource()
