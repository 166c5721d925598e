"""Deliveries in Redis: the records, their history, and the indexes that list them.

``DeliveryStore`` reads and writes ``bridge.record.Delivery`` records under the keys of
``bridge.keys``; every multi-key change is one MULTI/EXEC transaction.
"""

from __future__ import annotations

import json
import secrets
import time
import zlib
from collections.abc import Collection, Iterator
from typing import TYPE_CHECKING, Any

from redis import Redis
from redis.client import Pipeline

from bridge import defaults, keys
from bridge.event import utcnow_iso
from bridge.record import (
    HISTORY_MARK,
    UNSAID_FIELDS,
    Delivery,
    dump_raw,
    entry_from_field,
    history_field,
    history_order,
    load_raw,
    new_delivery_id,
    packed_fields,
    raw_fields,
    raw_record,
    request_from_raw,
    stored_body,
    with_ticket,
)

if TYPE_CHECKING:
    from bridge.settings import Settings

# The record and its helpers lived here first; code elsewhere still imports them from here.
__all__ = [
    "Delivery",
    "DeliveryStore",
    "entry_from_field",
    "history_field",
    "new_delivery_id",
    "raw_record",
    "request_from_raw",
]

HISTORY_MAX = 100
#: The one field of an entry of ``keys.RECEIVED_STREAM``: the delivery id. An entry with the
#: fields of its node's first entry stores no field name of its own: the name costs nothing.
RECEIVED_FIELD = "d"

#: The phone index spreads the numbers of a day over this many zsets (``keys.phones``), so
#: that each keeps to Redis's compact encoding (up to 128 members by default) until ~12,000
#: leads a day: ~50 bytes a lead, where one zset a day costs ~140 and a key per number ~200.
#: Part of the layout: a different count would not find what is indexed.
PHONE_SHARDS = 128
#: Numbers looked up per run of ``PHONE_IDS`` (each blocks Redis for ~30 ms at most).
PHONE_READ_CHUNK = 500

# ARGV: the prefix of a number's own index as earlier versions wrote it, how many days, the
# prefix of each day's zsets (newest day first), how many ids per number, then per number its
# E.164 and its shard. Returns per number the ids found: the newest ``limit`` of its earlier
# index, then the newest ``limit`` of each day (a delivery indexed on two days comes twice).
# Keys are built from ARGV: the bridge runs on one Redis, never a cluster.
PHONE_IDS = """
local earlier, days = ARGV[1], tonumber(ARGV[2])
local limit = tonumber(ARGV[days + 3])
local out = {}
for i = days + 4, #ARGV, 2 do
  local phone, shard = ARGV[i], ARGV[i + 1]
  local ids = redis.call('ZREVRANGE', earlier .. phone, 0, limit - 1)
  local low = '[' .. phone .. ' '
  for day = 3, days + 2 do
    local key = ARGV[day] .. shard
    local found = redis.call('ZREVRANGEBYLEX', key, low .. '\\255', low, 'LIMIT', 0, limit)
    for _, member in ipairs(found) do
      table.insert(ids, string.sub(member, #low))
    end
  end
  table.insert(out, ids)
end
return out
"""


def phone_shard(phone: str) -> str:
    """Which of the day's ``PHONE_SHARDS`` zsets indexes ``phone``."""
    return f"{zlib.crc32(phone.encode()) % PHONE_SHARDS:02x}"


def new_history_entry(delivery_id: str, what: str, detail: str | None) -> tuple[str, str]:
    """A history entry of a delivery written now: its field's name and its text."""
    text = f"{what} {detail}" if detail else what
    return history_field(int(time.time() * 1000), delivery_id), text


class DeliveryStore:
    """Reads and writes deliveries; every multi-key change is one MULTI/EXEC transaction."""

    def __init__(
        self,
        redis: Redis,
        *,
        keep_delivered_days: float = defaults.KEEP_DELIVERED_DAYS,
        keep_failed_days: float = defaults.KEEP_FAILED_DAYS,
    ):
        self.redis = redis
        self.keep_delivered = int(keep_delivered_days * 86400)
        self.keep_failed = int(keep_failed_days * 86400)
        #: The longest a record lives: what its raw request (its packed fields need it) and the
        #: index entries that point at it are kept for.
        self.keep_longest = max(self.keep_delivered, self.keep_failed)
        self._phone_ids = redis.register_script(PHONE_IDS)

    @classmethod
    def for_settings(cls, redis: Redis, settings: Settings) -> DeliveryStore:
        """The store with the retention the config asks for."""
        return cls(
            redis,
            keep_delivered_days=settings.delivery.keep_delivered_days,
            keep_failed_days=settings.delivery.keep_failed_days,
        )

    # --- writing -----------------------------------------------------------------------------

    def add_raw(self, pipe: Pipeline, raw_id: str, raw: dict[str, Any] | bytes) -> None:
        """Store a raw request (``raw_record``, or as ``dump_raw`` made it) under a key of its
        own, for the leads of a webhook that has several (one lead holds its own)."""
        stored = raw if isinstance(raw, bytes) else dump_raw(raw)
        pipe.set(keys.raw(raw_id), stored, ex=self.keep_longest)

    def add(
        self,
        pipe: Pipeline,
        delivery: Delivery,
        then: tuple[str, str | None] | None = None,
        route_seen: bool = True,
    ) -> None:
        """Queue the writes that store a new delivery on ``pipe`` (the caller executes it): its
        record with the history entry ``received`` and, when given, the entry ``then`` (what,
        detail) that follows, in one HSET. ``route_seen=False``: the caller writes the route's
        time of last receipt itself (``received_on``), once for the leads it stores together."""
        now = time.time()
        if delivery.terminal:
            self._index_terminal(pipe, delivery, now)
        else:
            pipe.zadd(keys.ACTIVE, {delivery.id: now + 60})
        stored = delivery.to_hash()
        if delivery.raw_inline:
            stored.update(raw_fields(delivery.raw_inline))
        for what, detail in (("received", None), *((then,) if then else ())):
            name, stored[name] = new_history_entry(delivery.id, what, detail)
            delivery.history_fields.append(name)
        pipe.hset(keys.delivery(delivery.id), mapping=stored)
        # Redis picks the entry id (its clock, in ms): no score of our own to store.
        pipe.xadd(keys.RECEIVED_STREAM, {RECEIVED_FIELD: delivery.id})
        if route_seen:
            self.received_on(pipe, delivery.route, now)
        self._index_phone(pipe, delivery, now)
        if delivery.terminal:
            self._expire(pipe, delivery)

    def received_on(self, pipe: Pipeline, route: str, now: float) -> None:
        """The route's time of last receipt (the admin page's routes)."""
        pipe.hset(keys.route_state(route), "last_received", now)

    def get(self, delivery_id: str) -> Delivery | None:
        return self.read([delivery_id])[0]

    def read(self, delivery_ids: list[str]) -> list[Delivery | None]:
        """The records of ``delivery_ids`` (None where there is none), in two round trips at
        most: the hashes, then the raw bodies their packed fields need."""
        if not delivery_ids:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for delivery_id in delivery_ids:
            pipe.hgetall(keys.delivery(delivery_id))
        hashes = pipe.execute()
        return self.from_hashes(list(zip(delivery_ids, hashes, strict=True)))

    def from_hashes(self, pairs: list[tuple[str, dict[bytes, bytes]]]) -> list[Delivery | None]:
        """Records from hashes already read (``(id, hash)``; an empty hash is None)."""
        wanted = sorted(
            {h[b"raw_id"].decode() for _, h in pairs if h and b"raw_id" in h and packed_fields(h)}
        )
        bodies: dict[str, bytes | None] = {}
        if wanted:
            pipe = self.redis.pipeline(transaction=False)
            for raw_id in wanted:
                pipe.get(keys.raw(raw_id))
            for raw_id, data in zip(wanted, pipe.execute(), strict=True):
                bodies[raw_id] = stored_body(data) if data else None
        out: list[Delivery | None] = []
        for delivery_id, h in pairs:
            if not h or b"status" not in h:  # none, or history logged after it expired
                out.append(None)
                continue
            raw_id = (h.get(b"raw_id") or b"").decode()
            out.append(Delivery.from_hash(h, delivery_id, bodies.get(raw_id)))
        return out

    def exists(self, delivery_id: str) -> bool:
        return bool(self.redis.exists(keys.delivery(delivery_id)))

    def raw(self, delivery: Delivery) -> dict[str, Any] | None:
        """The delivery's raw request (``raw_record``), None when there is none any more."""
        if delivery.raw_inline:
            return load_raw(delivery.raw_inline)
        if not delivery.raw_id:
            return None
        data = self.redis.get(keys.raw(delivery.raw_id))
        return load_raw(data) if data else None

    def update(
        self,
        delivery: Delivery,
        what: str | None = None,
        detail: str | None = None,
        *,
        pipe: Pipeline | None = None,
        recheck_in: float = 60.0,
        only: Collection[str] | None = None,
    ) -> None:
        """Save ``delivery`` (all fields, or ``only`` those and its status) and log ``what`` in
        its history."""
        own = pipe is None
        pipe = pipe or self.redis.pipeline(transaction=True)
        now = time.time()
        delivery.updated_at = utcnow_iso()
        key = keys.delivery(delivery.id)
        if delivery.terminal:
            self._index_terminal(pipe, delivery, now)
            self._index_phone(pipe, delivery, now)  # a fetched or remapped lead's phone too
        else:
            if delivery.failed_index is not None:  # replayed: alive again, keep it
                self._unindex_failed(pipe, delivery)
                pipe.persist(key)
                if delivery.earlier_layout:
                    pipe.persist(keys.history(delivery.id))
                if delivery.raw_id:
                    pipe.persist(keys.raw(delivery.raw_id))
            pipe.zadd(keys.ACTIVE, {delivery.id: now + recheck_in})
        if only is not None:
            only = with_ticket({*only, "status", "updated_at"})
        stored = delivery.to_hash(only)
        pipe.hset(key, mapping=stored)
        unset = [
            name for name in UNSAID_FIELDS if name not in stored and (only is None or name in only)
        ]
        if unset:
            pipe.hdel(key, *unset)
        if what:
            delivery.history_fields.append(self.log_on(pipe, delivery.id, what, detail))
            if len(delivery.history_fields) > HISTORY_MAX:  # the oldest go
                oldest = delivery.history_fields[:-HISTORY_MAX]
                del delivery.history_fields[:-HISTORY_MAX]
                pipe.hdel(key, *oldest)
        if delivery.terminal:
            self._expire(pipe, delivery)
        if own:
            pipe.execute()

    def last_history(self, delivery_id: str) -> dict[str, Any]:
        history = self.history(delivery_id)
        return history[-1] if history else {}

    def history(self, delivery_id: str) -> list[dict[str, Any]]:
        return self.histories([delivery_id])[0]

    def histories(self, delivery_ids: list[str]) -> list[list[dict[str, Any]]]:
        """Each delivery's history entries, oldest first (``{"at", "what"[, "detail"]}``)."""
        pipe = self.redis.pipeline(transaction=False)
        for delivery_id in delivery_ids:
            pipe.hgetall(keys.delivery(delivery_id))
            pipe.lrange(keys.history(delivery_id), 0, -1)  # as earlier versions kept it
        answers = pipe.execute()
        out = []
        for delivery_id, h, earlier in zip(delivery_ids, answers[::2], answers[1::2], strict=True):
            entries = [history_entry(line) for line in earlier]
            mine = sorted((n for n in h if n[:1] == HISTORY_MARK), key=history_order(delivery_id))
            entries += [entry_from_field(name, h[name], delivery_id) for name in mine]
            out.append(entries)
        return out

    def log_on(self, pipe: Pipeline, delivery_id: str, what: str, detail: str | None) -> str:
        """Queue one history entry on ``pipe``: a field of the record named by its time, so
        a lead's history costs no key of its own. Returns the field's name."""
        name, entry = new_history_entry(delivery_id, what, detail)
        pipe.hset(keys.delivery(delivery_id), name, entry)
        return name

    def _index_terminal(self, pipe: Pipeline, delivery: Delivery, now: float) -> None:
        pipe.zrem(keys.ACTIVE, delivery.id)
        if delivery.status == "delivered":
            pipe.hset(keys.route_state(delivery.route), "last_delivered", now)
            if delivery.failed_index is not None:
                self._unindex_failed(pipe, delivery)
            return
        if delivery.failed_index is not None and delivery.failed_index != (
            delivery.reason_code or ""
        ):
            self._unindex_failed(pipe, delivery)  # failed again, for another reason
        delivery.failed_index = delivery.reason_code or ""
        pipe.zadd(keys.FAILED, {delivery.id: now})
        pipe.zadd(keys.failed_by_route(delivery.route), {delivery.id: now})
        if delivery.failed_index:
            pipe.zadd(keys.failed_by_reason(delivery.failed_index), {delivery.id: now})

    def _index_phone(self, pipe: Pipeline, delivery: Delivery, now: float) -> None:
        """Index the delivery under its number: a member ``<e164> <delivery id>`` of today's
        zset of the number's shard (a delivery that ends on a later day than it came is in
        both days' zsets). The day's zset lives as long as a record indexed that day can."""
        phone = (delivery.contact or {}).get("phoneNumber")
        if phone:
            day = int(now // 86400)
            key = keys.phones(day, phone_shard(phone))
            pipe.zadd(key, {f"{phone} {delivery.id}": 0})
            pipe.expireat(key, (day + 1) * 86400 + self.keep_longest)

    def _expire(self, pipe: Pipeline, delivery: Delivery) -> None:
        ttl = self.keep_delivered if delivery.status == "delivered" else self.keep_failed
        pipe.expire(keys.delivery(delivery.id), ttl)
        if delivery.earlier_layout:  # its history began in a list of its own
            pipe.expire(keys.history(delivery.id), ttl)
        if delivery.raw_id:  # the record's packed fields need it as long as the record lives
            pipe.expire(keys.raw(delivery.raw_id), self.keep_longest)

    def _unindex_failed(self, pipe: Pipeline, delivery: Delivery) -> None:
        """Take the delivery off the failed lists it is on (by the reason it was listed under)."""
        pipe.zrem(keys.FAILED, delivery.id)
        pipe.zrem(keys.failed_by_route(delivery.route), delivery.id)
        if delivery.failed_index:
            pipe.zrem(keys.failed_by_reason(delivery.failed_index), delivery.id)
        delivery.failed_index = None

    # --- listing -----------------------------------------------------------------------------

    def failed_ids(
        self,
        *,
        route: str | None = None,
        reason: str | None = None,
        since: float | None = None,
        offset: int = 0,
        limit: int = 50,
        newest_first: bool = True,
    ) -> tuple[list[str], int]:
        """Ids of failed/skipped deliveries, filtered, one page at a time, and the total."""
        key = keys.FAILED
        if route and reason:
            key = keys.failed_by_route_and_reason(secrets.token_hex(4))
            self.redis.zinterstore(
                key, [keys.failed_by_route(route), keys.failed_by_reason(reason)], aggregate="MAX"
            )
            self.redis.expire(key, 60)
        elif route:
            key = keys.failed_by_route(route)
        elif reason:
            key = keys.failed_by_reason(reason)
        low = since if since is not None else "-inf"
        total = self.redis.zcount(key, low, "+inf")
        if newest_first:
            ids = self.redis.zrevrangebyscore(key, "+inf", low, start=offset, num=limit)
        else:
            ids = self.redis.zrangebyscore(key, low, "+inf", start=offset, num=limit)
        return [i.decode() for i in ids], total

    def received_newest_first(self, batch: int = 200) -> Iterator[list[str]]:
        """The ids of every received delivery, newest first, ``batch`` at a time (one round trip
        each): the stream's, then those an earlier version listed in its zset."""
        end = "+"
        while entries := self.redis.xrevrange(keys.RECEIVED_STREAM, end, "-", count=batch):
            yield [fields[RECEIVED_FIELD.encode()].decode() for _, fields in entries]
            end = "(" + entries[-1][0].decode()  # the next page starts after the last entry
        offset = 0
        while ids := self.redis.zrevrange(keys.RECEIVED, offset, offset + batch - 1):
            yield [i.decode() for i in ids]
            offset += len(ids)

    def phone_ids(self, phones: list[str], limit: int, now: float | None = None) -> list[list[str]]:
        """The ids of each number's newest ``limit`` deliveries, newest first (ids sort by when
        they were made): from the days the retention covers, and from the number's own index
        as earlier versions wrote it until that expires."""
        now = time.time() if now is None else now
        first = int((now - self.keep_longest) // 86400)
        days = [keys.phones(day, "") for day in range(int(now // 86400), first - 1, -1)]
        head = [keys.by_phone(""), len(days), *days]
        out = []
        for start in range(0, len(phones), PHONE_READ_CHUNK):
            chunk = phones[start : start + PHONE_READ_CHUNK]
            args = [*head, limit, *(a for p in chunk for a in (p, phone_shard(p)))]
            for found in self._phone_ids(args=args):
                out.append(sorted({i.decode() for i in found}, reverse=True)[:limit])
        return out

    def prune_indexes(self, ids: list[str]) -> None:
        """Drop index entries whose delivery has expired.

        The received stream keeps them until ``trim_indexes``: deleting a stream entry needs its
        entry id, which only reading the stream would find, and frees no memory until every
        entry of its node is gone (which the trim does); readers skip ids whose record is gone.
        """
        pipe = self.redis.pipeline()
        for delivery_id in ids:
            pipe.exists(keys.delivery(delivery_id))
        gone = [i for i, alive in zip(ids, pipe.execute(), strict=True) if not alive]
        if gone:
            self.redis.zrem(keys.FAILED, *gone)
            self.redis.zrem(keys.RECEIVED, *gone)
            self.redis.zrem(keys.ACTIVE, *gone)

    def trim_indexes(self, now: float | None = None) -> int:
        """Drop index entries older than the records they point at can live (records expire by
        TTL; their index entries would otherwise stay for ever). Returns how many went."""
        now = time.time() if now is None else now
        oldest = now - self.keep_longest
        # A stream entry's id is its time of receipt (ms): the entries below the cutoff go.
        removed = self.redis.xtrim(
            keys.RECEIVED_STREAM, minid=int(oldest * 1000), approximate=False
        )
        removed += self.redis.zremrangebyscore(keys.RECEIVED, "-inf", oldest)
        for key in [keys.FAILED, *self.redis.scan_iter(keys.FAILED_NARROWED_PATTERN, count=1000)]:
            removed += self.redis.zremrangebyscore(key, "-inf", now - self.keep_failed)
        for key in self.redis.scan_iter(keys.received_by_route("*"), count=1000):
            removed += self.redis.zremrangebyscore(key, "-inf", oldest)
        return removed

    def due_active(self, now: float | None = None, limit: int = 500) -> list[str]:
        now = time.time() if now is None else now
        return [i.decode() for i in self.redis.zrangebyscore(keys.ACTIVE, "-inf", now, 0, limit)]

    def counts(self) -> dict[str, int]:
        pipe = self.redis.pipeline(transaction=False)
        pipe.zcard(keys.ACTIVE)
        pipe.zcard(keys.FAILED)
        pipe.xlen(keys.RECEIVED_STREAM)
        pipe.zcard(keys.RECEIVED)  # listed by an earlier version, not yet trimmed
        active, failed, received, received_before = pipe.execute()
        return {"active": active, "failed": failed, "received": received + received_before}


# --- history entries ---------------------------------------------------------------------------


def history_entry(stored: bytes | str) -> dict[str, Any]:
    """An entry of the history list earlier versions kept (JSON) as ``{"at", "what"[,
    "detail"]}``."""
    text = stored.decode() if isinstance(stored, bytes) else stored
    entry = json.loads(text)
    if not entry.get("detail"):
        entry.pop("detail", None)
    return entry
