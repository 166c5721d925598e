"""How a webhook becomes stored deliveries: verify, parse, normalize, map, dedup, store, enqueue.

``Ingest.handle`` is the whole web-side path for one request, independent of Flask. Parsing,
normalizing and mapping are ``bridge.pipeline``'s, shared with ``try``, replay and the job;
what ingest adds is the route's quota, the handshake, the signature check, dedup, storage and
metrics. A refused request (over a quota, unknown route, bad signature, ...) writes nothing to
Redis of its own: its count joins the process's ``Tally``. A 2xx is
only ever answered after the delivery and its job are in Redis (one MULTI/EXEC); a Redis failure
becomes ``StorageUnavailable`` (503 + Retry-After), never a 2xx.
"""

from __future__ import annotations

import logging
import secrets

from redis import Redis
from redis.exceptions import RedisError
from rq import Queue

from bridge import keys, metrics
from bridge.deliveries import DeliveryStore
from bridge.event import InboundRequest, utcnow_iso
from bridge.exceptions import (
    IngestError,
    MethodNotAllowed,
    QuotaExceeded,
    SignatureInvalid,
    StorageUnavailable,
    UnknownRoute,
)
from bridge.pipeline import LeadResult, map_request
from bridge.queue import enqueue, transaction
from bridge.quotas import ADDRESS_QUOTA, Quotas
from bridge.record import Delivery, new_delivery_id, raw_record
from bridge.redaction import redact
from bridge.settings import Route, Settings
from bridge.sources import get_source
from bridge.sources.base import Accepted, Outcome, Reply, Source, error_reply
from bridge.storage import is_full

log = logging.getLogger(__name__)

#: The ``route`` label of requests to routes that do not exist: their names are the sender's
#: to choose, and one counter each would let a flood of made-up names fill Redis.
UNKNOWN_ROUTE_LABEL = "(unknown)"


class Ingest:
    def __init__(self, settings: Settings, redis: Redis, queue: Queue):
        self.settings = settings
        self.redis = redis
        self.queue = queue
        self.store = DeliveryStore.for_settings(redis, settings)
        self.quotas = Quotas(redis, settings)
        #: Refusals, counted here and written at most once a second (``metrics.Tally``).
        self.refusals = metrics.Tally(redis)

    def handle(self, req: InboundRequest) -> Reply:
        route = self.settings.routes.get(req.route)
        if route is None:
            self.refusals.add("rejected", UNKNOWN_ROUTE_LABEL, "unknown_route")
            return error_reply(UnknownRoute(f"no route named {req.route[:64]!r} is configured"))
        try:
            self.quotas.admit(route, req.remote_addr)
        except QuotaExceeded as over:
            return self.over_quota(route, over)
        source = get_source(route.source)
        try:
            outcome = Outcome(accepted=self._accept(req, route, source), request=req)
        except IngestError as error:
            reason = error.reason if isinstance(error, SignatureInvalid) else error.error
            self.refusals.add("rejected", route.name, reason)
            log.info(
                "route %s: refused %s: %s",
                route.name,
                error.status,
                error.message,
                extra={"event": "webhook.refused", "route": route.name, "status": error.status},
            )
            outcome = Outcome(error=error, request=req)
        except _Handshake as answered:
            return answered.reply
        return source.reply(outcome)

    def over_quota(self, route: Route, over: QuotaExceeded) -> Reply:
        """The answer past a quota, counted. Before the source sees the request: every sender
        gets the same 429, and retries after it."""
        reason = "ip_quota_exceeded" if over.quota == ADDRESS_QUOTA else "quota_exceeded"
        self.refusals.add("rejected", route.name, reason)
        return error_reply(over)

    def _accept(self, req: InboundRequest, route: Route, source: Source) -> list[Accepted]:
        if req.method in ("GET", "HEAD"):
            reply = source.handshake(req, route)
            if reply is None:
                raise MethodNotAllowed(f"{req.method} is not accepted here: POST the webhook")
            raise _Handshake(reply)
        if req.method not in ("POST", "PUT"):
            raise MethodNotAllowed(f"{req.method} is not accepted here: POST the webhook")
        source.verify(req, route)
        results = map_request(req, route, source, utcnow_iso())
        prepared = [
            _delivery_for(result, index, len(results), route, source)
            for index, result in enumerate(results)
        ]
        if not prepared:
            return []
        try:
            return self._store(req, route, source, prepared)
        except RedisError as exc:
            why = "Redis is full (maxmemory reached)" if is_full(exc) else "Redis is unavailable"
            log.error(
                "route %s: %s, answering 503: %s",
                route.name,
                why,
                exc,
                extra={"event": "webhook.not_stored", "route": route.name, "status": 503},
            )
            raise StorageUnavailable(
                "the bridge cannot store this webhook right now (queue unavailable): retry later"
            ) from None

    def _store(
        self, req: InboundRequest, route: Route, source: Source, deliveries: list[Delivery]
    ) -> list[Accepted]:
        ttl = self.settings.dedup_ttl_seconds
        accepted: list[Accepted] = []
        fresh: list[Delivery] = []
        claimed: list[str] = []
        try:
            for delivery in deliveries:
                key = keys.dedup(route.name, delivery.event.event_id)
                if self.redis.set(key, delivery.id, nx=True, ex=ttl):
                    claimed.append(key)
                    fresh.append(delivery)
                    accepted.append(Accepted(delivery.id, delivery.status, delivery.reason))
                    continue
                first_id = (self.redis.get(key) or b"").decode()
                if first_id and self.store.exists(first_id):
                    accepted.append(Accepted(first_id, "duplicate"))
                    metrics.count(self.redis, "duplicate", route.name)
                    continue
                # The first copy was claimed but never stored (a crash in between): take over.
                self.redis.set(key, delivery.id, ex=ttl)
                claimed.append(key)
                fresh.append(delivery)
                accepted.append(Accepted(delivery.id, delivery.status, delivery.reason))
            if fresh and source.dedups_body:
                body_key, earlier = self._claim_body(req, route, fresh[0].id, ttl)
                if earlier:
                    # The same signed body under another event id: a captured request re-sent
                    # with its unsigned id header changed, or one event sent by two hooks.
                    self.redis.delete(*claimed)
                    metrics.count(self.redis, "duplicate", route.name)
                    return [Accepted(earlier, "duplicate") for _ in deliveries]
                claimed.append(body_key)
            if fresh:
                pipe = transaction(self.redis)
                raw_id = f"r{secrets.token_hex(8)}"
                hidden = self.settings.secrets()
                self.store.add_raw(pipe, raw_id, raw_record(req, source.kept_headers, hidden))
                for delivery in fresh:
                    delivery.event.fields = redact(delivery.event.fields, hidden)
                    if delivery.contact is not None:
                        delivery.contact = redact(delivery.contact, hidden)
                    delivery.raw_id = raw_id
                    if delivery.status == "queued":
                        enqueue(
                            self.queue,
                            delivery,
                            pipe=pipe,
                            job_timeout=self.settings.delivery.job_timeout_seconds,
                        )
                    self.store.add(pipe, delivery)
                    detail = delivery.job_id if delivery.status == "queued" else delivery.reason
                    self.store.log_on(pipe, delivery.id, delivery.status, detail)
                    metrics.count_on(pipe, delivery.status, route.name)
                pipe.execute()
                for delivery in fresh:
                    log.info(
                        "route %s: %s %s",
                        route.name,
                        delivery.status,
                        delivery.id,
                        extra={
                            "event": f"webhook.{delivery.status}",
                            "route": route.name,
                            "delivery_id": delivery.id,
                        },
                    )
        except RedisError:
            if claimed:
                try:
                    self.redis.delete(*claimed)
                except RedisError:
                    pass
            raise
        return accepted

    def _claim_body(
        self, req: InboundRequest, route: Route, delivery_id: str, ttl: int
    ) -> tuple[str, str | None]:
        """Claim the request's body hash for ``delivery_id``: (the key, None), or (the key, the
        delivery the same body made before)."""
        key = keys.dedup(route.name, f"body:{req.body_hash}")
        if self.redis.set(key, delivery_id, nx=True, ex=ttl):
            return key, None
        earlier = (self.redis.get(key) or b"").decode()
        if earlier and self.store.exists(earlier):
            return key, earlier
        self.redis.set(key, delivery_id, ex=ttl)  # claimed but never stored (a crash): take over
        return key, None


def _delivery_for(
    result: LeadResult, index: int, count: int, route: Route, source: Source
) -> Delivery:
    """The delivery to store for one lead of a request: queued, or skipped as unmappable
    (refused with a 422 instead when it is the request's only lead and the sender shows
    errors to its user)."""
    delivery = Delivery(
        id=new_delivery_id(),
        route=route.name,
        source=source.name,
        status="queued",
        event=result.event,
        received_at=result.event.received_at,
        lead_index=index,
    )
    if result.unmappable is None:
        delivery.contact = result.contact  # None for a lead the job fetches first
        return delivery
    if source.unmappable == "reject" and count == 1:
        raise result.unmappable
    delivery.status = "skipped"
    delivery.reason_code = "unmappable"
    delivery.reason = result.unmappable.message
    return delivery


class _Handshake(Exception):
    """A GET/HEAD verification the source answered itself."""

    def __init__(self, reply: Reply):
        self.reply = reply
