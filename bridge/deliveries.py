"""Deliveries in Redis: one record per accepted lead, its history, and the indexes that list them.

A delivery is the source of truth for a lead's fate; the RQ job that works on it carries only
its id. Statuses: ``queued`` → ``delivering`` → ``delivered``, or ``retrying`` (a job is
scheduled), or ``failed`` / ``skipped`` with a reason (both replayable). A delivery's ``lane`` says
where it came from: ``live`` (a webhook) or ``backfill`` (``oliai-bridge import``, a replay),
so that workers can put a lead someone just submitted ahead of a spreadsheet's thousands.
Nothing here holds a
secret: the raw payload keeps only the headers an adapter declared safe and drops ``?token=``.
"""

from __future__ import annotations

import base64
import json
import secrets
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, quote_plus

from redis import Redis
from redis.client import Pipeline

from bridge import defaults
from bridge.event import Event, InboundRequest, utcnow_iso

if TYPE_CHECKING:
    from bridge.settings import Settings

P = defaults.KEY_PREFIX
HISTORY_MAX = 100
TERMINAL = ("delivered", "failed", "skipped")
LANES = ("live", "backfill")
ACTIVE = ("queued", "delivering", "retrying")


def delivery_key(delivery_id: str) -> str:
    return f"{P}d:{delivery_id}"


def history_key(delivery_id: str) -> str:
    return f"{P}d:{delivery_id}:log"


def raw_key(raw_id: str) -> str:
    return f"{P}raw:{raw_id}"


def dedup_key(route: str, event_id: str) -> str:
    return f"{P}dedup:{route}:{event_id}"


IDX_RECEIVED = f"{P}idx:received"
IDX_FAILED = f"{P}idx:failed"  # failed and skipped: everything a person may need to replay
IDX_ACTIVE = f"{P}idx:active"
#: Fields removed from the hash when unset (``to_hash`` leaves them out).
OPTIONAL_FIELDS = (
    "reason_code",
    "reason",
    "contact",
    "last_api",
    "contact_id",
    "audience_id",
    "failed_index",
)  # not terminal; score = when the reaper should look at it


def idx_failed_route(route: str) -> str:
    return f"{P}idx:failed:route:{route}"


def idx_failed_reason(code: str) -> str:
    return f"{P}idx:failed:reason:{code}"


def new_delivery_id() -> str:
    """Sortable by time, unguessable: ``dlv_<ms hex><random>``."""
    return f"dlv_{int(time.time() * 1000):x}{secrets.token_hex(6)}"


@dataclass
class Delivery:
    id: str
    route: str
    source: str
    status: str
    event: Event
    received_at: str
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
    #: The reason code this delivery is listed under in the failed indexes (None: not listed).
    failed_index: str | None = None
    lane: str = "live"

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    def to_hash(self) -> dict[str, str]:
        out = {
            "id": self.id,
            "route": self.route,
            "source": self.source,
            "status": self.status,
            "event": json.dumps(self.event.to_dict()),
            "received_at": self.received_at,
            "updated_at": self.updated_at or self.received_at,
            "lead_index": str(self.lead_index),
            "attempts": str(self.attempts),
            "failures": str(self.failures),
            "job_seq": str(self.job_seq),
            "audience_added": "1" if self.audience_added else "",
            "lane": self.lane,
        }
        for key in (
            "raw_id",
            "contact_id",
            "audience_id",
            "reason_code",
            "reason",
            "job_id",
            "failed_index",
        ):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        if self.contact is not None:
            out["contact"] = json.dumps(self.contact)
        if self.last_api is not None:
            out["last_api"] = json.dumps(self.last_api)
        return out

    @classmethod
    def from_hash(cls, h: dict[bytes, bytes]) -> Delivery:
        d = {k.decode(): v.decode() for k, v in h.items()}

        def loads(key: str) -> Any:
            return json.loads(d[key]) if d.get(key) else None

        return cls(
            id=d["id"],
            route=d["route"],
            source=d["source"],
            status=d["status"],
            event=Event.from_dict(json.loads(d["event"])),
            received_at=d["received_at"],
            updated_at=d.get("updated_at", ""),
            raw_id=d.get("raw_id"),
            lead_index=int(d.get("lead_index") or 0),
            contact=loads("contact"),
            contact_id=d.get("contact_id") or None,
            audience_id=d.get("audience_id") or None,
            audience_added=d.get("audience_added") == "1",
            attempts=int(d.get("attempts") or 0),
            failures=int(d.get("failures") or 0),
            reason_code=d.get("reason_code") or None,
            reason=d.get("reason") or None,
            last_api=loads("last_api"),
            job_id=d.get("job_id") or None,
            job_seq=int(d.get("job_seq") or 0),
            failed_index=d.get("failed_index"),
            lane=d.get("lane") or "live",  # records stored before lanes existed were live
        )

    def summary(self) -> dict[str, Any]:
        """What ``GET /deliveries/<id>`` and ``failed list`` show: no raw payload, no secret."""
        return {
            "deliveryId": self.id,
            "route": self.route,
            "source": self.source,
            "lane": self.lane,
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
        }


#: Shorter "secrets" are not searched for in payloads: they would match ordinary text.
MIN_REDACTED_CHARS = 6
REDACTED = "[redacted]"


def redact(value: Any, secrets: list[str]) -> Any:
    """``value`` with every secret (and its URL-encoded form) replaced, at any depth."""
    secrets = [s for s in secrets if s and len(s) >= MIN_REDACTED_CHARS]
    if not secrets:
        return value
    if isinstance(value, str):
        for secret in secrets:
            for form in {secret, quote(secret, safe=""), quote_plus(secret)}:
                value = value.replace(form, REDACTED)
        return value
    if isinstance(value, bytes):
        for secret in secrets:
            for form in {secret, quote(secret, safe=""), quote_plus(secret)}:
                value = value.replace(form.encode(), REDACTED.encode())
        return value
    if isinstance(value, dict):
        return {redact(k, secrets): redact(v, secrets) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v, secrets) for v in value]
    return value


def raw_record(
    req: InboundRequest, kept_headers: tuple[str, ...], secrets: list[str] | None = None
) -> dict[str, Any]:
    """The request as stored for replay --remap: body, content type, safe headers, query.

    Route secrets are redacted even from the body: some senders echo the hook URL, token and
    all, inside the payload (Jotform's ``webhookURL``).
    """
    req = InboundRequest(
        method=req.method,
        route=req.route,
        body=redact(req.body, secrets or []),
        headers=req.headers,
        query=req.query,
    )
    headers = {"content-type": req.header("content-type") or ""}
    for name in kept_headers:
        value = req.header(name)
        if value is not None:
            headers[name] = value
    query = {k: v for k, v in req.query.items() if k != "token"}
    return {
        "method": req.method,
        "route": req.route,
        "headers": headers,
        "query": query,
        "body_b64": base64.b64encode(req.body).decode(),
    }


def request_from_raw(raw: dict[str, Any]) -> InboundRequest:
    return InboundRequest(
        method=raw.get("method", "POST"),
        route=raw.get("route", ""),
        body=base64.b64decode(raw.get("body_b64", "")),
        headers=dict(raw.get("headers") or {}),
        query=dict(raw.get("query") or {}),
    )


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

    @classmethod
    def for_settings(cls, redis: Redis, settings: Settings) -> DeliveryStore:
        """The store with the retention the config asks for."""
        return cls(
            redis,
            keep_delivered_days=settings.delivery.keep_delivered_days,
            keep_failed_days=settings.delivery.keep_failed_days,
        )

    # --- writing -----------------------------------------------------------------------------

    def add_raw(self, pipe: Pipeline, raw_id: str, raw: dict[str, Any]) -> None:
        pipe.set(raw_key(raw_id), json.dumps(raw), ex=max(self.keep_delivered, self.keep_failed))

    def add(self, pipe: Pipeline, delivery: Delivery, note: str | None = None) -> None:
        """Queue the writes that store a new delivery on ``pipe`` (the caller executes it)."""
        now = time.time()
        if delivery.terminal:
            self._index_terminal(pipe, delivery, now)
        else:
            pipe.zadd(IDX_ACTIVE, {delivery.id: now + 60})
        pipe.hset(delivery_key(delivery.id), mapping=delivery.to_hash())
        pipe.zadd(IDX_RECEIVED, {delivery.id: now})
        self.log_on(pipe, delivery.id, "received", note)
        if delivery.terminal:
            self._expire(pipe, delivery)

    def get(self, delivery_id: str) -> Delivery | None:
        h = self.redis.hgetall(delivery_key(delivery_id))
        return Delivery.from_hash(h) if h else None

    def exists(self, delivery_id: str) -> bool:
        return bool(self.redis.exists(delivery_key(delivery_id)))

    def raw(self, delivery: Delivery) -> dict[str, Any] | None:
        if not delivery.raw_id:
            return None
        data = self.redis.get(raw_key(delivery.raw_id))
        return json.loads(data) if data else None

    def update(
        self,
        delivery: Delivery,
        what: str | None = None,
        detail: str | None = None,
        *,
        pipe: Pipeline | None = None,
        recheck_in: float = 60.0,
    ) -> None:
        """Save ``delivery`` (all fields) and log ``what`` in its history."""
        own = pipe is None
        pipe = pipe or self.redis.pipeline(transaction=True)
        now = time.time()
        delivery.updated_at = utcnow_iso()
        key = delivery_key(delivery.id)
        if delivery.terminal:
            self._index_terminal(pipe, delivery, now)
        else:
            if delivery.failed_index is not None:  # replayed: alive again, keep it
                self._unindex_failed(pipe, delivery)
                pipe.persist(key)
                pipe.persist(history_key(delivery.id))
            pipe.zadd(IDX_ACTIVE, {delivery.id: now + recheck_in})
        pipe.hset(key, mapping=delivery.to_hash())
        unset = [name for name in OPTIONAL_FIELDS if getattr(delivery, name) is None]
        if unset:
            pipe.hdel(key, *unset)
        if what:
            self.log_on(pipe, delivery.id, what, detail)
        if delivery.terminal:
            self._expire(pipe, delivery)
        if own:
            pipe.execute()

    def last_history(self, delivery_id: str) -> dict[str, Any]:
        entry = self.redis.lindex(history_key(delivery_id), -1)
        return json.loads(entry) if entry else {}

    def history(self, delivery_id: str) -> list[dict[str, Any]]:
        return [json.loads(x) for x in self.redis.lrange(history_key(delivery_id), 0, -1)]

    def log_on(self, pipe: Pipeline, delivery_id: str, what: str, detail: str | None) -> None:
        entry = {"at": utcnow_iso(), "what": what}
        if detail:
            entry["detail"] = detail
        pipe.rpush(history_key(delivery_id), json.dumps(entry))
        pipe.ltrim(history_key(delivery_id), -HISTORY_MAX, -1)

    def _index_terminal(self, pipe: Pipeline, delivery: Delivery, now: float) -> None:
        pipe.zrem(IDX_ACTIVE, delivery.id)
        if delivery.status == "delivered":
            if delivery.failed_index is not None:
                self._unindex_failed(pipe, delivery)
            return
        if delivery.failed_index is not None and delivery.failed_index != (
            delivery.reason_code or ""
        ):
            self._unindex_failed(pipe, delivery)  # failed again, for another reason
        delivery.failed_index = delivery.reason_code or ""
        pipe.zadd(IDX_FAILED, {delivery.id: now})
        pipe.zadd(idx_failed_route(delivery.route), {delivery.id: now})
        if delivery.failed_index:
            pipe.zadd(idx_failed_reason(delivery.failed_index), {delivery.id: now})

    def _expire(self, pipe: Pipeline, delivery: Delivery) -> None:
        ttl = self.keep_delivered if delivery.status == "delivered" else self.keep_failed
        pipe.expire(delivery_key(delivery.id), ttl)
        pipe.expire(history_key(delivery.id), ttl)

    def _unindex_failed(self, pipe: Pipeline, delivery: Delivery) -> None:
        """Take the delivery off the failed lists it is on (by the reason it was listed under)."""
        pipe.zrem(IDX_FAILED, delivery.id)
        pipe.zrem(idx_failed_route(delivery.route), delivery.id)
        if delivery.failed_index:
            pipe.zrem(idx_failed_reason(delivery.failed_index), delivery.id)
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
        key = IDX_FAILED
        if route and reason:
            key = f"{P}tmp:failed:{secrets.token_hex(4)}"
            self.redis.zinterstore(
                key, [idx_failed_route(route), idx_failed_reason(reason)], aggregate="MAX"
            )
            self.redis.expire(key, 60)
        elif route:
            key = idx_failed_route(route)
        elif reason:
            key = idx_failed_reason(reason)
        low = since if since is not None else "-inf"
        total = self.redis.zcount(key, low, "+inf")
        if newest_first:
            ids = self.redis.zrevrangebyscore(key, "+inf", low, start=offset, num=limit)
        else:
            ids = self.redis.zrangebyscore(key, low, "+inf", start=offset, num=limit)
        return [i.decode() for i in ids], total

    def prune_indexes(self, ids: list[str]) -> None:
        """Drop index entries whose delivery has expired."""
        pipe = self.redis.pipeline()
        for delivery_id in ids:
            pipe.exists(delivery_key(delivery_id))
        gone = [i for i, alive in zip(ids, pipe.execute(), strict=True) if not alive]
        if gone:
            self.redis.zrem(IDX_FAILED, *gone)
            self.redis.zrem(IDX_RECEIVED, *gone)
            self.redis.zrem(IDX_ACTIVE, *gone)

    def trim_indexes(self, now: float | None = None) -> int:
        """Drop index entries older than the records they point at can live (records expire by
        TTL; their index entries would otherwise stay for ever). Returns how many went."""
        now = time.time() if now is None else now
        removed = self.redis.zremrangebyscore(
            IDX_RECEIVED, "-inf", now - max(self.keep_delivered, self.keep_failed)
        )
        for key in [IDX_FAILED, *self.redis.scan_iter(f"{IDX_FAILED}:*", count=1000)]:
            removed += self.redis.zremrangebyscore(key, "-inf", now - self.keep_failed)
        return removed

    def due_active(self, now: float | None = None, limit: int = 500) -> list[str]:
        now = time.time() if now is None else now
        return [i.decode() for i in self.redis.zrangebyscore(IDX_ACTIVE, "-inf", now, 0, limit)]

    def counts(self) -> dict[str, int]:
        return {
            "active": self.redis.zcard(IDX_ACTIVE),
            "failed": self.redis.zcard(IDX_FAILED),
            "received": self.redis.zcard(IDX_RECEIVED),
        }
