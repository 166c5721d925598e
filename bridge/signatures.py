"""Who may post to a route: signature schemes as data, one check for them, the token and HTTP
Basic checks, constant-time comparison and the timestamp window.

A provider that signs its webhooks is described by a ``Scheme`` (which header, what is signed,
how the digest is written, where the timestamp is and how far from now it may be);
``check_scheme`` checks every scheme in the same order, each step with its own refusal reason
(the metric label):

1. the signature header (and the timestamp and id headers the scheme names) are present
   — ``missing_header``;
2. the timestamp is found and is a whole number of seconds / milliseconds — ``bad_timestamp``;
3. some signature in the header matches the request signed with one of the route's secrets
   — ``bad_signature``;
4. the timestamp is no further from now than the tolerance, either way — ``stale_timestamp``
   ("timestamp in the future" when it is ahead). This comes after the signature, so a genuine
   request sent again late (or from a sender whose clock is off) is told apart from a forgery.

Every check takes several valid values at once: a route lists ``secret = ["${OLD}", "${NEW}"]``
(or ``token``, ``basic_auth``) while the credential is rotated, and any of them is accepted.
Schemes that cannot be said as data (HubSpot's v1/v2/v3, Meta's GET handshake) keep their own
code in their adapter and use the helpers below. Nothing here ever puts a secret in a message.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import string
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bridge.event import InboundRequest
from bridge.exceptions import SignatureInvalid

if TYPE_CHECKING:
    from bridge.settings import Route

TOKEN_HEADER = "x-bridge-token"
TOKEN_QUERY = "token"

#: What ``Scheme.signed`` may name: the raw body, the timestamp and the message id as sent.
SIGNED_PARTS = ("body", "timestamp", "id")
#: Seconds in one unit of a scheme's timestamp.
TIMESTAMP_UNITS = {"s": 1.0, "ms": 1000.0}
TIMESTAMP_UNIT_NAMES = {"s": "seconds", "ms": "milliseconds"}
#: At most this many entry labels are named when a header has no usable signature.
MAX_LABELS_SHOWN = 8


def text_key(secret: str) -> bytes | None:
    """The HMAC key of a plain secret: its UTF-8 bytes."""
    return secret.encode()


@dataclass(frozen=True)
class Scheme:
    """How one provider signs a request: an HMAC of some of its parts with the shared secret."""

    #: The header carrying the signature (lower case).
    header: str
    #: What is signed: ``{body}`` (the raw bytes), ``{timestamp}`` and ``{id}`` (as sent),
    #: joined by literal separators: ``"{body}"``, ``"{timestamp}.{body}"``,
    #: ``"{id}.{timestamp}.{body}"``.
    signed: str = "{body}"
    #: The HMAC's hash (a ``hashlib`` name).
    digest: str = "sha256"
    #: How the signature is written: ``hex`` (any case) or ``base64``.
    encoding: str = "hex"
    #: What comes before the signature in the header or its entry: ``"sha256="``, ``"v1,"``.
    prefix: str = ""
    #: When the header lists several entries: what separates them (``","``; ``" "`` is any
    #: whitespace). Only the entries starting with ``prefix`` are signatures.
    separator: str | None = None
    #: Where the timestamp is: its own header, or the entry of the signature header starting
    #: with ``timestamp_prefix`` (Calendly's ``t=``). Neither: the scheme signs no timestamp.
    timestamp_header: str | None = None
    timestamp_prefix: str | None = None
    #: ``s`` or ``ms`` since the epoch.
    timestamp_unit: str = "s"
    #: Seconds the timestamp may be away from now, either way.
    tolerance: float = 300
    #: The header whose value is signed as ``{id}``.
    id_header: str | None = None
    #: How a route's secret becomes the HMAC key (None: the secret is unusable for this scheme).
    key: Callable[[str], bytes | None] = text_key
    #: Where to look when the signature does not match, for the refusal message.
    hint: str = "that the route's secret is the provider's signing secret"

    def __post_init__(self) -> None:
        names = {name for _, name, _, _ in string.Formatter().parse(self.signed) if name}
        unknown = names - set(SIGNED_PARTS)
        has_timestamp = bool(self.timestamp_header or self.timestamp_prefix)
        if (
            unknown
            or "body" not in names
            or ("timestamp" in names) != has_timestamp
            or ("id" in names) != bool(self.id_header)
            or self.encoding not in ("hex", "base64")
            or self.timestamp_unit not in TIMESTAMP_UNITS
            or (self.timestamp_prefix is not None and self.separator is None)
        ):
            raise ValueError(f"inconsistent signature scheme for {self.header}")

    @property
    def timestamped(self) -> bool:
        return bool(self.timestamp_header or self.timestamp_prefix)

    def message(self, req: InboundRequest, timestamp: str | None, msg_id: str | None) -> bytes:
        """The bytes the provider signed for ``req``."""
        parts = {"body": req.body, "timestamp": (timestamp or "").encode()}
        parts["id"] = (msg_id or "").encode()
        out = bytearray()
        for literal, name, _, _ in string.Formatter().parse(self.signed):
            out += literal.encode()
            if name:
                out += parts[name]
        return bytes(out)


# --- the one check -------------------------------------------------------------------------------


def check_signed(
    req: InboundRequest, route: Route, check: Callable[[InboundRequest, tuple[str, ...]], None]
) -> None:
    """``verify`` of a source that signs: ``check(req, secrets)`` with every secret of the route.

    A route without one must have a ``token`` or ``basic_auth`` instead (a hook made where the
    provider offers no signing, such as Webflow's dashboard); those are checked too, whichever
    are configured."""
    secrets = route.values_of("secret")
    if secrets:
        check(req, secrets)
    elif not (route.token or route.basic_auth):
        raise SignatureInvalid("this route has no signing secret configured", reason="no_secret")
    check_shared_credentials(req, route)


def check_schemes(
    req: InboundRequest,
    schemes: Sequence[Scheme],
    secrets: str | Sequence[str],
    now: float | None = None,
) -> None:
    """Accept ``req`` when a scheme whose signature header it carries passes ``check_scheme``.

    Several schemes are alternatives a provider may send side by side or instead of each other
    (Meta's SHA-256 and legacy SHA-1 headers; the ``webhook-`` and ``svix-`` header families);
    without any of their headers the request is refused as missing the first one."""
    present = [s for s in schemes if req.header(s.header)]
    if not present:
        raise SignatureInvalid(f"missing {schemes[0].header} header", reason="missing_header")
    failures = []
    for scheme in present:
        try:
            check_scheme(req, scheme, secrets, now)
            return
        except SignatureInvalid as exc:
            failures.append(exc)
    raise failures[0]


def check_scheme(
    req: InboundRequest, scheme: Scheme, secrets: str | Sequence[str], now: float | None = None
) -> None:
    """Raise ``SignatureInvalid`` unless ``req`` is signed by ``scheme`` with one of ``secrets``,
    checked in the order the module docstring gives."""
    secrets = (secrets,) if isinstance(secrets, str) else tuple(secrets)
    keys = [scheme.key(secret) for secret in secrets]
    if not keys or any(key is None for key in keys):
        raise SignatureInvalid(
            f"this route's secret is not usable for {scheme.header} signatures", reason="no_secret"
        )

    # 1. headers
    value = require_header(req, scheme.header)
    timestamp = require_header(req, scheme.timestamp_header) if scheme.timestamp_header else None
    msg_id = require_header(req, scheme.id_header) if scheme.id_header else None
    entries = _entries(value, scheme.separator)

    # 2. timestamp
    seconds = None
    if scheme.timestamp_prefix:
        timestamp = _after_prefix(entries, scheme.timestamp_prefix)
        if not timestamp:
            raise SignatureInvalid(
                f"{scheme.header} has no {scheme.timestamp_prefix} timestamp",
                reason="bad_timestamp",
            )
    if timestamp is not None:
        where = scheme.timestamp_header or f"{scheme.header} {scheme.timestamp_prefix}"
        seconds = read_timestamp(timestamp, scheme.timestamp_unit, where)

    # 3. signature
    given = [s for s in (_after_prefix([e], scheme.prefix) for e in entries) if s]
    if not given:
        raise SignatureInvalid(_no_signature(scheme, entries), reason="bad_signature")
    message = scheme.message(req, timestamp, msg_id)
    expected = [hmac.new(key, message, scheme.digest).digest() for key in keys if key]
    if not any(equal_any(decode(g, scheme.encoding), expected) for g in given):
        raise SignatureInvalid(
            f"{scheme.header} does not match the request signed with this route's secret "
            f"(check {scheme.hint})",
            reason="bad_signature",
        )

    # 4. window: after the signature, so a late genuine request is not counted as a forgery
    if seconds is not None:
        check_window(seconds, scheme.tolerance, now)


def _entries(value: str, separator: str | None) -> list[str]:
    if separator is None:
        parts = [value]
    elif separator.isspace():
        parts = value.split()
    else:
        parts = value.split(separator)
    return [p.strip() for p in parts if p.strip()]


def _after_prefix(entries: list[str], prefix: str) -> str | None:
    """The text after ``prefix`` (any case) of the first entry starting with it."""
    for entry in entries:
        if entry[: len(prefix)].lower() == prefix.lower():
            return entry[len(prefix) :].strip()
    return None


def _no_signature(scheme: Scheme, entries: list[str]) -> str:
    form = f"{scheme.prefix}<{scheme.encoding} digest>"
    if scheme.separator is None:
        return f"{scheme.header} is not of the form {form}"
    mark = scheme.prefix[-1:] or "="
    labels = [e.partition(mark)[0][:20] for e in entries][:MAX_LABELS_SHOWN]
    found = f" (it has {', '.join(labels)})" if labels else ""
    return f"{scheme.header} has no {form} entry{found}"


# --- shared pieces -------------------------------------------------------------------------------


def require_header(req: InboundRequest, name: str) -> str:
    value = req.header(name)
    if not value or not value.strip():
        raise SignatureInvalid(f"missing {name} header", reason="missing_header")
    return value.strip()


def hmac_digest(secret: str | bytes, message: bytes, algorithm: str = "sha256") -> bytes:
    key = secret.encode() if isinstance(secret, str) else secret
    return hmac.new(key, message, getattr(hashlib, algorithm)).digest()


def decode(signature: str, encoding: str) -> bytes | None:
    """A signature as written (hex in any case, or base64) as bytes; None when unreadable."""
    try:
        if encoding == "hex":
            return bytes.fromhex(signature)
        return base64.b64decode(signature, validate=True)
    except (binascii.Error, ValueError):
        return None


def equal(given: str | bytes, expected: str | bytes) -> bool:
    """Constant-time comparison of two strings or byte strings."""
    a = given.encode() if isinstance(given, str) else given
    b = expected.encode() if isinstance(expected, str) else expected
    return hmac.compare_digest(a, b)


def equal_any(given: str | bytes | None, candidates: Sequence[str | bytes]) -> bool:
    """Whether ``given`` equals one of ``candidates``, each compared in constant time."""
    if given is None:
        return False
    return any([equal(given, c) for c in candidates])  # a list: no early exit


def read_timestamp(value: str | int | float, unit: str, where: str = "timestamp") -> float:
    """Seconds since the epoch from a whole number of ``unit`` (``s`` or ``ms``); anything else
    is ``bad_timestamp``."""
    text = str(value).strip()
    if not (text.isascii() and text.isdigit()):
        raise SignatureInvalid(
            f"{where} is not a Unix time in {TIMESTAMP_UNIT_NAMES[unit]}: {text[:40]!r}",
            reason="bad_timestamp",
        )
    return int(text) / TIMESTAMP_UNITS[unit]


def check_window(seconds: float, tolerance: float, now: float | None = None) -> None:
    """Raise ``SignatureInvalid`` (reason ``stale_timestamp``) when ``seconds`` is further than
    ``tolerance`` from now: in the past (a late or re-sent request) or in the future."""
    now = time.time() if now is None else now
    if seconds - now > tolerance:
        raise SignatureInvalid(
            f"timestamp in the future: {int(seconds - now)} s ahead of this server's clock "
            f"(tolerance {int(tolerance)} s)",
            reason="stale_timestamp",
        )
    if now - seconds > tolerance:
        raise SignatureInvalid(
            f"timestamp is {int(now - seconds)} s old (tolerance {int(tolerance)} s): a late or "
            "re-sent request",
            reason="stale_timestamp",
        )


# --- shared credentials: a token or HTTP Basic ---------------------------------------------------


def check_shared_credentials(req: InboundRequest, route: Route) -> None:
    """The route's ``token`` (header or query) and ``basic_auth``, whichever are configured."""
    if route.token:
        check_token(req, route.values_of("token"))
    if route.basic_auth:
        check_basic_auth(req, route.values_of("basic_auth"))


def check_token(req: InboundRequest, expected: str | Sequence[str]) -> None:
    given = req.header(TOKEN_HEADER) or req.query.get(TOKEN_QUERY)
    if not given:
        raise SignatureInvalid(
            "missing token: send it as the X-Bridge-Token header or the ?token= query parameter",
            reason="missing_token",
        )
    check_token_value(given, expected)


def check_token_value(given: str, expected: str | Sequence[str]) -> None:
    """``given`` (found wherever the source looks for it) against the route's tokens."""
    if not equal_any(given, _values(expected)):
        raise SignatureInvalid("token does not match this route's token", reason="bad_token")


def check_basic_auth(req: InboundRequest, expected: str | Sequence[str]) -> None:
    header = req.header("authorization") or ""
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic" or not value:
        raise SignatureInvalid("missing HTTP Basic credentials", reason="missing_header")
    try:
        given = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        raise SignatureInvalid("unreadable HTTP Basic credentials", reason="bad_token") from None
    if not equal_any(given, _values(expected)):
        raise SignatureInvalid("HTTP Basic credentials do not match", reason="bad_token")


def _values(expected: str | Sequence[str]) -> tuple[str, ...]:
    return (expected,) if isinstance(expected, str) else tuple(expected)
