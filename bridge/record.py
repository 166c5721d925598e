"""What is stored of a lead: the ``Delivery`` record as a Redis hash, and the raw request.

A delivery is the source of truth for a lead's fate; the RQ job that works on it carries only
its id. Statuses: ``queued`` → ``delivering`` → ``delivered``, or ``retrying`` (a job is
scheduled), or ``failed`` / ``skipped`` with a reason (both replayable). The hash holds one field
per dataclass field, written by the codec its type picks; a field that may be ``None`` is left
out of the hash while it is. Nothing here holds a secret: the raw request keeps only the headers
an adapter declared safe, drops ``?token=`` and has every route secret redacted.

Compact by design (a Redis plan of 25 MB must hold tens of thousands of leads):

- the raw request is stored once, its body deflated (``dump_raw``);
- the lead's fields and its contact repeat what the body says, so they are deflated with the
  body as the dictionary (``Packed``): a 600-byte contact becomes ~40 bytes, and every value of
  the hash stays short enough for Redis's compact hash encoding;
- what the key or other fields already say is not stored again: the id (it is in the key), the
  ticket (``<id>-<seq>``), the event's route, source and time of receipt.

Records written by earlier versions (plain JSON values, every field) still read.
"""

from __future__ import annotations

import base64
import copy
import json
import re
import time
import types
import typing
import zlib
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from functools import lru_cache
from secrets import randbelow, token_hex
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
        self.pack_against(None)
        #: Why the lead's fields and contact could not be read back (None: they were).
        self.unreadable: str | None = None
        #: The record's history fields, oldest first, as read (and added to by the store).
        self.history_fields: list[str] = []
        #: Read from a record an earlier version wrote (its history is a list of its own).
        self.earlier_layout = False
        #: The raw request as ``dump_raw`` stored it, when the record holds it itself (``RAW_MARK``
        #: fields) instead of a ``raw_id`` key: a webhook's only lead, the usual case.
        self.raw_inline: bytes | None = None

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    def to_hash(self, only: Collection[str] | None = None) -> dict[str, str | bytes]:
        """Every field that is not ``None`` and not said elsewhere, as stored (``OPTIONAL_FIELDS``
        may be ``None``); ``only``: just those, for a save that changes a few.

        ``contact`` and ``event`` are deflated against the raw body (``pack_against``) when
        that makes them smaller; ``id`` is the key's, and ``job_id`` is left out while it is the
        usual ``<id>-<job_seq>``.
        """
        out: dict[str, str | bytes] = {}
        only = with_ticket(only)
        for field in HASH_FIELDS:
            name = field.name
            if name == "id" or (only is not None and name not in only):
                continue
            value = getattr(self, name)
            if name == "job_id" and value is None and self.job_seq:
                out["job_id"] = ""  # no ticket, though <id>-<job_seq> would say there is one
                continue
            if value is None:
                continue
            if name == "event":
                out["event_id"] = dump_event_id(value.event_id)
                out["event"] = self._packed_field("event", self._event_rest(value))
            elif name == "contact":
                out["contact"] = self._packed_field("contact", value)
            elif name == "job_id" and value == f"{self.id}-{self.job_seq}":
                continue
            elif name in UNSAID_DEFAULTS and value == UNSAID_DEFAULTS[name]:
                continue  # absent reads as the default
            elif name == "updated_at" and value == self.received_at:
                continue  # a record never saved since it was received
            else:
                out[name] = field.codec.dump(value)
        return out

    @classmethod
    def from_hash(
        cls,
        h: Mapping[bytes, bytes],
        delivery_id: str | None = None,
        base: bytes | None = None,
    ) -> Delivery:
        """The delivery ``to_hash`` wrote (or an earlier version did); a field missing from the
        hash takes its default. ``delivery_id``: the key's id (new records do not repeat it);
        ``base``: the raw body the packed fields were deflated against (``Packed``), when it is
        not in the hash itself (``raw_fields``)."""
        inline = raw_from_fields(h)
        if inline is not None:
            base = stored_body(inline)
        stored = {k.decode(): v for k, v in h.items()}
        values: dict[str, Any] = {}
        for field in HASH_FIELDS:
            value = stored.get(field.name)
            if value is None or field.name in ("event", "contact"):
                continue
            values[field.name] = field.codec.load(value.decode())
        if "id" not in values:
            if delivery_id is None:
                raise ValueError("a record without its id needs the id of its key")
            values["id"] = delivery_id
        unreadable = None
        if packed_fields(h) and not base:
            # Its raw request was deleted or evicted (Redis must not evict: operating.md): the
            # record still reads, without the lead's fields and contact.
            unreadable = "the stored request this lead's fields were kept with is gone"
            stored = {**stored, "event": b'{"fields":{}}'}
            stored.pop("contact", None)
        if "contact" in stored:
            values["contact"] = unpack(stored["contact"], base)
        values["event"] = _event_from(stored, values, base)
        if "job_id" not in stored and values.get("job_seq"):
            values["job_id"] = f"{values['id']}-{values['job_seq']}"
        elif values.get("job_id") == "":
            values["job_id"] = None
        delivery = cls(**values)
        delivery.pack_against(None if unreadable else base)
        delivery.unreadable = unreadable
        delivery.raw_inline = inline
        history = (name for name in stored if name.startswith(HISTORY_MARK.decode()))
        delivery.history_fields = sorted(history, key=history_order(delivery.id))
        delivery.earlier_layout = "event_id" not in stored
        if unreadable:
            return delivery
        if stored.get("contact", b"")[:1] == PACKED:
            delivery._packs["contact"] = (_plain(delivery.contact), stored["contact"])
        if stored.get("event", b"")[:1] == PACKED and "event_id" in stored:
            rest = delivery._event_rest(delivery.event)
            delivery._packs["event"] = (_plain(rest), stored["event"])
        return delivery

    # --- packing -----------------------------------------------------------------------------

    def pack_against(self, base: bytes | None) -> None:
        """Deflate ``contact`` and ``event`` against ``base`` (the stored raw body) from now on;
        the record then needs that body to be read (``from_hash``)."""
        self._base = base or None
        self._packs: dict[str, tuple[str, bytes]] = {}

    def _packed_field(self, name: str, value: Any) -> str | bytes:
        plain = _plain(value)
        known = self._packs.get(name)
        if known is not None and known[0] == plain:
            return known[1]  # unchanged since it was read: the same bytes, not deflated again
        base = self._base
        if base is None:
            return plain
        # Spelled as the body spells its JSON, the value is mostly a copy of it: compact, or
        # as most senders (and Python's json) write it, with a space after ':' and ','.
        packed = pack(json.dumps(value) if _SPACED in base else plain, base)
        if len(packed) >= len(plain):
            return plain
        self._packs[name] = (plain, packed)
        return packed

    def _event_rest(self, event: Event) -> dict[str, Any]:
        """What the event says that the record's own fields do not."""
        rest: dict[str, Any] = {"fields": event.fields}
        if event.hints:
            rest["hints"] = event.hints
        if event.fetch is not None:
            rest["fetch"] = event.fetch
        for name, mine in (
            ("route", self.route),
            ("source", self.source),
            ("received_at", self.received_at),
        ):
            if getattr(event, name) != mine:
                rest[name] = getattr(event, name)
        return rest

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


# --- history entries ---------------------------------------------------------------------------

#: History fields of a record start with this (no other field does).
HISTORY_MARK = b"~"
#: The two digits after an entry's time: per process, they count up within each millisecond
#: from a random start (entries of one process keep their order; two processes writing the same
#: lead in the same millisecond do not overwrite each other's entry).
_SEQS = 36**2
_last_ms, _seqs = 0, iter(())
#: A field name of this length holds the entry's own time (as the first versions wrote all).
_ABSOLUTE = 13


def _base36(n: int, width: int = 1) -> str:
    out = ""
    while n:
        n, digit = divmod(n, 36)
        out = _B36[digit] + out
    return out.rjust(width, "0")


def id_ms(delivery_id: str) -> int | None:
    """When a delivery was received, as its id says (``new_delivery_id``), in epoch ms."""
    try:
        return int(delivery_id[4:-12], 16)
    except ValueError:
        return None


def history_field(at_ms: int, delivery_id: str = "") -> str:
    """The name of a history entry written at ``at_ms``: ``~<ms after the delivery was received,
    base 36><2 digits>`` (``~-...`` when this process's clock is behind the receiver's); the last
    digits tell apart entries of the same millisecond. A few bytes: a delivery has many entries.
    Without a readable id, or years after it, ``~<epoch ms, 9 digits><3 digits>`` as before."""
    at_ms, seq = _next_seq(at_ms)
    base = id_ms(delivery_id)
    if base is not None and abs(at_ms - base) < 36**8:
        sign = "-" if at_ms < base else ""
        return f"~{sign}{_base36(abs(at_ms - base))}{_base36(seq, 2)}"
    return f"~{_base36(at_ms, 9)}{_base36(seq, 3)}"


def _next_seq(at_ms: int) -> tuple[int, int]:
    """(the entry's ms, its digits): a millisecond whose digits ran out lends the next one (so
    an entry may be written a millisecond or so after its time; a clock set back more than a
    second starts over)."""
    global _last_ms, _seqs
    if at_ms > _last_ms or at_ms < _last_ms - 1000:
        _last_ms, _seqs = at_ms, iter(range(randbelow(_SEQS // 2), _SEQS))
    seq = next(_seqs, None)
    if seq is None:
        _last_ms, _seqs = _last_ms + 1, iter(range(randbelow(_SEQS // 2), _SEQS))
        seq = next(_seqs)
    return _last_ms, seq


def history_time(name: str | bytes, delivery_id: str) -> tuple[int, int]:
    """(epoch ms, sequence) of a history field's name (``history_field``)."""
    text = name.decode() if isinstance(name, bytes) else name
    if len(text) == _ABSOLUTE:
        return int(text[1:10], 36), int(text[10:], 36)
    negative = text[1] == "-"
    offset = int(text[1 + negative : -2], 36)
    return (id_ms(delivery_id) or 0) + (-offset if negative else offset), int(text[-2:], 36)


def history_order(delivery_id: str) -> Callable[[str | bytes], tuple[int, int]]:
    """Sort key putting a delivery's history fields in the order they were written."""
    return lambda name: history_time(name, delivery_id)


def entry_from_field(name: bytes, value: bytes, delivery_id: str = "") -> dict[str, Any]:
    """A history field (``history_field``; ``<what>[ <detail>]``) as ``{"at", "what"[,
    "detail"]}``."""
    at = datetime.fromtimestamp(history_time(name, delivery_id)[0] / 1000, UTC)
    what, _, detail = value.decode().partition(" ")
    entry = {"at": at.isoformat(timespec="milliseconds").replace("+00:00", "Z"), "what": what}
    if detail:
        entry["detail"] = detail
    return entry


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

_ISO_MS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def dump_time(iso: str) -> str:
    """A time of the bridge's own (``utcnow_iso``) as epoch milliseconds: Redis keeps a number
    of 13 digits in 8 bytes, the text in 24. Any other spelling (or no such time, or one before
    1970) is kept as it is."""
    if not _ISO_MS.fullmatch(iso):
        return iso
    day = _day_ms(iso[:10])
    hours, minutes, seconds = int(iso[11:13]), int(iso[14:16]), int(iso[17:19])
    if day is None or hours > 23 or minutes > 59 or seconds > 59:
        return iso
    return str(day + ((hours * 60 + minutes) * 60 + seconds) * 1000 + int(iso[20:23]))


@lru_cache(maxsize=16)
def _day_ms(date: str) -> int | None:
    """Epoch milliseconds at the start of a ``YYYY-MM-DD`` day (UTC); None for no such day, or
    one before 1970."""
    try:
        start = datetime.fromisoformat(date).replace(tzinfo=UTC).timestamp()
    except ValueError:
        return None
    return int(start) * 1000 if start >= 0 else None


def load_time(text: str) -> str:
    """What ``dump_time`` stored (or the text earlier versions did), as ISO 8601 text."""
    if not text.isdigit():
        return text
    at = datetime.fromtimestamp(int(text) / 1000, UTC)
    return at.isoformat(timespec="milliseconds").replace("+00:00", "Z")


TIME = Codec(dump=dump_time, load=load_time)
#: Codecs chosen by a field's name rather than its type.
NAMED_CODECS: dict[str, Codec] = {"received_at": TIME, "updated_at": TIME}

#: The first byte of an event id kept as the bytes its hex digits spell (a body hash: 32 bytes
#: instead of 64), and of a text id that happens to start with one of these two bytes.
EVENT_ID_HEX, EVENT_ID_TEXT = b"\x03", b"\x04"
_HEX = re.compile(r"(?:[0-9a-f]{2}){8,}")


def dump_event_id(event_id: str) -> str | bytes:
    """An event id as stored: lowercase hex (a body hash, most often) as its bytes."""
    if _HEX.fullmatch(event_id):
        return EVENT_ID_HEX + bytes.fromhex(event_id)
    if event_id[:1] in ("\x03", "\x04"):
        return "\x04" + event_id
    return event_id


def load_event_id(stored: bytes) -> str:
    if stored[:1] == EVENT_ID_HEX:
        return stored[1:].hex()
    if stored[:1] == EVENT_ID_TEXT:
        return stored[1:].decode()
    return stored.decode()


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
        codec = NAMED_CODECS.get(f.name) or CODECS.get(typing.get_origin(kind) or kind)
        if codec is None:
            raise TypeError(f"{cls.__name__}.{f.name}: no codec stores a {kind}")
        out.append(HashField(f.name, codec, optional))
    return tuple(out)


HASH_FIELDS = hash_fields(Delivery)


# --- packed values ------------------------------------------------------------------------------

#: The first byte of a packed value (JSON never starts with it).
PACKED = b"\x00"


class RecordUnreadable(Exception):
    """A packed value whose raw body is gone (it cannot be inflated without it)."""


#: A value as packed: compact, other than ASCII as it is. (``json.dumps`` given options builds
#: an encoder for every call; these are built once.)
_plain = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
#: What a body spelled with spaces has (``json.dumps``'s default separators).
_SPACED = b'": '
#: The head of a raw request (``dump_raw``).
_compact = json.JSONEncoder(separators=(",", ":")).encode


def pack(plain: str, base: bytes) -> bytes:
    """``plain`` deflated with ``base`` as the dictionary: what it shares with the body costs
    a few bytes."""
    data = plain.encode()
    squeeze = _deflater(len(base) + len(data), len(data), zdict=base)
    return PACKED + squeeze.compress(data) + squeeze.flush()


#: Deflate cannot match further back than its window less this (zlib's ``MIN_LOOKAHEAD``).
_LOOKAHEAD = 262


#: zlib's own default: on a lead's few hundred bytes its output is within a byte or two of
#: level 9's (``python -m bench.memory``: the same bytes per lead), for three quarters of the
#: CPU.
DEFLATE_LEVEL = 6


def _deflater(reach: int, length: int, zdict: bytes = b"") -> Any:
    """A raw deflater (``DEFLATE_LEVEL``) for ``length`` bytes that may match anything up to
    ``reach`` bytes back (the dictionary and the data together), sized to them.

    Deflate's largest sizes (a 32 KB window, memory level 9) make zlib allocate and clear
    ~400 KB for every value, which cost more than deflating a lead's few hundred bytes. A
    window that still reaches back over all of it, a symbol buffer that still holds all of it
    in one block and a hash table as large as what it reaches over (below level 9, a search
    gives up after fewer tries) deflate to the same bytes; an inflater with the full window
    (``unpack``, ``_unframe``) reads them like any other.
    """
    wbits = min(15, max(9, (reach + _LOOKAHEAD).bit_length()))
    # 2 ** (level + 6) symbols, 2 ** (level + 7) hash heads; reach >= length
    mem_level = min(9, max(1, (reach + 1).bit_length() - 6))
    return zlib.compressobj(
        DEFLATE_LEVEL, zlib.DEFLATED, -wbits, mem_level, zlib.Z_DEFAULT_STRATEGY, zdict
    )


def unpack(stored: bytes, base: bytes | None) -> Any:
    """A value ``to_hash`` stored: JSON text, or packed against ``base``."""
    if stored[:1] != PACKED:
        return json.loads(stored.decode())
    if not base:
        raise RecordUnreadable("the raw request this record was packed against is gone")
    inflate = zlib.decompressobj(-15, zdict=base)
    return json.loads(inflate.decompress(stored[1:]) + inflate.flush())


def packed_fields(h: Mapping[bytes, bytes]) -> bool:
    """Whether reading the hash needs the raw body of a ``raw_id`` key."""
    return any(h.get(name, b"")[:1] == PACKED for name in (b"event", b"contact"))


def _event_from(
    stored: Mapping[str, bytes], values: Mapping[str, Any], base: bytes | None
) -> Event:
    text = stored.get("event")
    if text is None:
        raise ValueError("a record without its event")
    data = unpack(text, base)
    if "event_id" in stored:  # the current layout: the record's fields say the rest
        data = {
            "route": values.get("route", ""),
            "source": values.get("source", ""),
            "received_at": values.get("received_at", ""),
            "event_id": load_event_id(stored["event_id"]),
            **data,
        }
    return Event.from_dict(data)


def with_ticket(only: Collection[str] | None) -> set[str] | None:
    """``only`` (the fields a save writes; None: all) with ``job_id`` and ``job_seq`` together:
    the ticket is said by the pair."""
    if only is None:
        return None
    return {*only, "job_id", "job_seq"} if {"job_id", "job_seq"} & set(only) else set(only)


#: Fields absent from the hash while ``None``: a save removes them (``HDEL``).
OPTIONAL_FIELDS = tuple(f.name for f in HASH_FIELDS if f.optional)
#: Fields absent from the hash while they hold their default (a missing field reads as it).
UNSAID_DEFAULTS: dict[str, Any] = {
    "lead_index": 0,
    "attempts": 0,
    "failures": 0,
    "audience_added": False,
    "job_seq": 0,
    "lane": "live",
}
#: Every field a save may have to remove: ``None``, a default, or said by other fields.
UNSAID_FIELDS = (*OPTIONAL_FIELDS, *UNSAID_DEFAULTS, "updated_at")


# --- the raw request ----------------------------------------------------------------------------

#: Fields holding a raw request inside its record start with this, then one base-36 digit: the
#: stored bytes in pieces of ``RAW_PIECE``, each short enough for Redis's compact hash encoding
#: (``hash-max-listpack-value``, 64 by default), so the record stays one small listpack instead
#: of a record and a key of its own (~150 bytes of Redis saved per lead).
RAW_MARK = "^"
RAW_PIECE = 64
#: A raw request longer than this as stored gets a key of its own (``raw_id``).
RAW_INLINE_MAX = 36 * RAW_PIECE


def raw_fields(stored: bytes) -> dict[str, bytes]:
    """``stored`` (``dump_raw``, at most ``RAW_INLINE_MAX`` bytes) as record fields."""
    return {
        f"{RAW_MARK}{_B36[n]}": stored[at : at + RAW_PIECE]
        for n, at in enumerate(range(0, len(stored), RAW_PIECE))
    }


def raw_from_fields(h: Mapping[bytes, bytes]) -> bytes | None:
    """The raw request a record holds itself (``raw_fields``), or None."""
    mark = RAW_MARK.encode()
    pieces = sorted((name, value) for name, value in h.items() if name[:1] == mark)
    return b"".join(value for _, value in pieces) or None


_B36 = "0123456789abcdefghijklmnopqrstuvwxyz"


def raw_record(
    req: InboundRequest, kept_headers: tuple[str, ...], secrets: list[str] | None = None
) -> dict[str, Any]:
    """The request as stored for replay --remap: body, content type, safe headers, query.

    Route secrets are redacted even from the body: some senders echo the hook URL, token and
    all, inside the payload (Jotform's ``webhookURL``).
    """
    head, body = raw_parts(req, kept_headers, secrets)
    return {**head, "body_b64": base64.b64encode(body).decode()}


def raw_parts(
    req: InboundRequest, kept_headers: tuple[str, ...], secrets: list[str] | None = None
) -> tuple[dict[str, Any], bytes]:
    """``raw_record``'s (head, body), the body as bytes (``dump_raw_parts`` stores them)."""
    headers = {"content-type": req.header("content-type") or ""}
    for name in kept_headers:
        value = req.header(name)
        if value is not None:
            headers[name] = value
    query = {k: v for k, v in req.query.items() if k != "token"}
    head = {"method": req.method, "route": req.route, "headers": headers, "query": query}
    return head, redact(req.body, secrets or [])


#: The first byte of a raw request in the compact layout (earlier versions stored JSON): zlib.
RAW_DEFLATED = b"\x01"
#: ... of one too small for deflating to pay: head, newline, body as they are.
RAW_PLAIN = b"\x02"
#: ... and of one deflated without zlib's header and checksum (6 bytes a lead; the record's
#: own packed fields need the body exact, and a damaged stream fails to inflate or parse).
RAW_DEFLATED_BARE = b"\x03"
#: Parts of a raw request left out while they say the usual.
RAW_DEFAULTS: dict[str, Any] = {
    "method": "POST",
    "query": {},
    "headers": {"content-type": "application/json"},
}


def dump_raw(raw: dict[str, Any]) -> bytes:
    """The raw request as stored: its head as JSON, a newline, the body; deflated when that
    makes it smaller."""
    head = {k: v for k, v in raw.items() if k != "body_b64"}
    return dump_raw_parts(head, base64.b64decode(raw.get("body_b64", "")))


def dump_raw_parts(head: dict[str, Any], body: bytes) -> bytes:
    """``dump_raw`` of a raw request's head (all but its body) and body."""
    head = {k: v for k, v in head.items() if RAW_DEFAULTS.get(k) != v}
    plain = _compact(head).encode() + b"\n" + body
    squeeze = _deflater(len(plain), len(plain))
    deflated = squeeze.compress(plain) + squeeze.flush()
    return RAW_DEFLATED_BARE + deflated if len(deflated) < len(plain) else RAW_PLAIN + plain


def load_raw(stored: bytes) -> dict[str, Any]:
    """What ``dump_raw`` stored (or the JSON earlier versions did), as ``raw_record`` made it."""
    head, body = _unframe(stored)
    if body is None:
        return head
    return {**copy.deepcopy(RAW_DEFAULTS), **head, "body_b64": base64.b64encode(body).decode()}


def stored_body(stored: bytes) -> bytes:
    """The body of a raw request as ``dump_raw`` (or an earlier version) stored it: what packed
    record fields were deflated against."""
    head, body = _unframe(stored)
    return body if body is not None else base64.b64decode(head.get("body_b64", ""))


def _unframe(stored: bytes) -> tuple[dict[str, Any], bytes | None]:
    """(head, body) of the current layout; (the whole JSON, None) of an earlier version's."""
    if stored[:1] == RAW_DEFLATED:
        stored = RAW_PLAIN + zlib.decompress(stored[1:])
    elif stored[:1] == RAW_DEFLATED_BARE:
        stored = RAW_PLAIN + zlib.decompress(stored[1:], -15)
    if stored[:1] != RAW_PLAIN:
        return json.loads(stored), None
    head, _, body = stored[1:].partition(b"\n")
    return json.loads(head), body


def request_from_raw(raw: dict[str, Any]) -> InboundRequest:
    return InboundRequest(
        method=raw.get("method", "POST"),
        route=raw.get("route", ""),
        body=base64.b64decode(raw.get("body_b64", "")),
        headers=dict(raw.get("headers") or {}),
        query=dict(raw.get("query") or {}),
    )
