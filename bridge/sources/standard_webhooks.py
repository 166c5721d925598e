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
from bridge.exceptions import MalformedBody
from bridge.settings import Route
from bridge.signatures import Scheme, hmac_digest
from bridge.sources.base import MAX_EVENT_ID_CHARS, Source

SECRET_PREFIX = "whsec_"
# The spec's header names, then Svix's (the reference producer) for producers that still send
# the branded ones; each request uses one family for all three headers.
HEADER_PREFIXES = ("webhook-", "svix-")


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


def scheme(prefix: str) -> Scheme:
    """``<prefix>signature: v1,<base64 HMAC-SHA256 of "<id>.<timestamp>.<raw body>">`` (entries
    separated by spaces), ``<prefix>timestamp`` in seconds, ``<prefix>id``."""
    return Scheme(
        header=f"{prefix}signature",
        signed="{id}.{timestamp}.{body}",
        encoding="base64",
        separator=" ",
        prefix="v1,",
        timestamp_header=f"{prefix}timestamp",
        timestamp_unit="s",
        # The spec's recommended tolerance (and the reference libraries'): five minutes.
        tolerance=300,
        id_header=f"{prefix}id",
        key=signing_key,
        hint="the route's whsec_ secret",
    )


SCHEMES = tuple(scheme(prefix) for prefix in HEADER_PREFIXES)


class StandardWebhooksSource(Source):
    name = "standard_webhooks"
    signs = True
    # Producers retry every non-2xx on their own schedule (up to days) and nobody reads the
    # answer: a payload without a usable phone is recorded as skipped and acknowledged.
    unmappable = "accept"
    kept_headers = ("webhook-id", "svix-id")
    schemes = SCHEMES

    def check_route(self, route: Route) -> list[str]:
        problems = []
        secrets = route.values_of("secret")
        for index, secret in enumerate(secrets):
            if signing_key(secret) is None:
                where = "secret" if isinstance(route.secret, str) else f"secret[{index}]"
                problems.append(
                    f"{where}: must be the producer's whsec_... secret (base64 after the prefix)"
                )
        types = route.options.get("event_types")
        if types is not None and (
            not isinstance(types, list) or not all(isinstance(t, str) for t in types)
        ):
            problems.append(
                'event_types: must be a list of event type strings, e.g. ["lead.created"]'
            )
        return problems

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


def sign(key: bytes, msg_id: str, timestamp: str, body: bytes) -> bytes:
    """The v1 signature (raw bytes) of one message."""
    return hmac_digest(key, f"{msg_id}.{timestamp}.".encode() + body)


def message_id(req: InboundRequest) -> str | None:
    for prefix in HEADER_PREFIXES:
        value = (req.header(prefix + "id") or "").strip()
        if value:
            return value[:MAX_EVENT_ID_CHARS]
    return None


SOURCE = StandardWebhooksSource()
