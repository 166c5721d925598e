"""Replay failed and skipped deliveries, optionally re-mapping the stored raw payload.

``--remap`` runs the source's normalization and the route's mapping again on the raw request
as received, with the *current* config: the fix for "my field mapping was wrong". A delivered
or still-running delivery is left alone, so replaying twice never delivers twice.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

from redis import Redis

from bridge import defaults, keys
from bridge.deliveries import DeliveryStore
from bridge.event import Event
from bridge.exceptions import IngestError
from bridge.pipeline import map_lead, request_events
from bridge.queue import make_queue, transaction
from bridge.record import Delivery, request_from_raw
from bridge.settings import Settings
from bridge.sources import get_source
from jobs.lanes import Kick, lane_kid, requeue


@dataclass
class ReplayResult:
    delivery_id: str
    outcome: (
        str  # requeued | would_requeue | already_delivered | in_progress | unmappable | missing
    )
    detail: str = ""

    def to_dict(self) -> dict:
        return {"deliveryId": self.delivery_id, "outcome": self.outcome, "detail": self.detail}


class Replayer:
    def __init__(self, settings: Settings, redis: Redis, store: DeliveryStore | None = None):
        self.settings = settings
        self.redis = redis
        self.store = store or DeliveryStore.for_settings(redis, settings)
        self.queue = make_queue(redis, settings.queue_name)

    def select(
        self,
        *,
        route: str | None = None,
        reason: str | None = None,
        since: float | None = None,
        page_size: int = 500,
    ) -> Iterable[str]:
        """Every failed/skipped id matching the filters, oldest first, read page by page."""
        offset = 0
        while True:
            ids, _total = self.store.failed_ids(
                route=route,
                reason=reason,
                since=since,
                offset=offset,
                limit=page_size,
                newest_first=False,
            )
            if not ids:
                return
            yield from ids
            # Replayed ids leave the index, so only the ids we kept move the offset.
            offset += sum(1 for i in ids if self._still_failed(i))

    def _still_failed(self, delivery_id: str) -> bool:
        # The index itself, not the record: an expired record left in the index must move the
        # offset too, or the same page would come back for ever.
        return self.redis.zscore(keys.FAILED, delivery_id) is not None

    def replay_many(
        self,
        ids: Iterable[str],
        *,
        remap: bool = False,
        dry_run: bool = False,
        progress: Callable[[ReplayResult], None] | None = None,
    ) -> list[ReplayResult]:
        results = []
        for delivery_id in ids:
            result = self.replay(delivery_id, remap=remap, dry_run=dry_run)
            results.append(result)
            if progress:
                progress(result)
        return results

    def replay(
        self, delivery_id: str, *, remap: bool = False, dry_run: bool = False
    ) -> ReplayResult:
        d = self.store.get(delivery_id)
        if d is None:
            return ReplayResult(delivery_id, "missing", "no such delivery (expired?)")
        if d.status == "delivered":
            return ReplayResult(d.id, "already_delivered", f"contact {d.contact_id}")
        if d.status not in ("failed", "skipped"):
            return ReplayResult(d.id, "in_progress", d.status)
        route = self.settings.routes.get(d.route)
        if route is None:
            return ReplayResult(d.id, "unmappable", f"route {d.route!r} is not configured")
        try:
            contact, event = self.contact_for(d, remap=remap)
        except IngestError as exc:
            if not dry_run:
                d.reason = exc.message
                self.store.update(d, "replay_refused", exc.message)
            return ReplayResult(d.id, "unmappable", exc.message)
        if dry_run:
            phone = contact["phoneNumber"] if contact else "(fetched by the job)"
            return ReplayResult(d.id, "would_requeue", phone)
        if contact and d.contact and contact != d.contact:
            d.contact_id = None  # new data for the contact: create or update it again
            if contact["phoneNumber"] != d.contact.get("phoneNumber"):
                d.audience_added = False  # a different person: a new membership too
        d.contact = contact
        d.event = event
        d.status = "queued"
        d.lane = defaults.BACKFILL_LANE  # a person's second try waits behind leads arriving live
        d.failures = 0
        d.reason_code = d.reason = None
        kid = lane_kid(self.settings, route)
        pipe = transaction(self.redis)
        kick = Kick(self.queue, self.settings.delivery.job_timeout_seconds)
        requeue(pipe, d, kid)
        kick.arm(pipe, kid, d.lane)
        self.store.update(
            d, "replayed", ("remapped; " if remap else "") + f"{d.lane} lane", pipe=pipe
        )
        kick.fire(pipe.execute())
        return ReplayResult(d.id, "requeued", contact["phoneNumber"] if contact else "")

    def contact_for(self, d: Delivery, *, remap: bool) -> tuple[dict | None, Event]:
        """The contact to deliver (None: the job fetches first) and the event it came from."""
        route = self.settings.routes[d.route]
        event = d.event
        if remap:
            event = self.renormalize(d)
        elif d.contact and d.reason_code != "unmappable":
            return d.contact, event
        return map_lead(event, route).contact_or_raise(), event

    def renormalize(self, d: Delivery) -> Event:
        """The delivery's lead read again from the stored request with the current config; its
        id and time of receipt are the ones dedup and the history already know."""
        raw = self.store.raw(d)
        if raw is None:
            raise _Gone("the raw payload has expired: replay without --remap")
        route = self.settings.routes[d.route]
        # The source that read the request at first (an imported row was read as generic JSON).
        events = request_events(
            request_from_raw(raw), route, get_source(d.source), d.event.received_at
        )
        if d.lead_index >= len(events):
            raise _Gone(f"the payload no longer yields lead #{d.lead_index + 1}")
        return replace(events[d.lead_index], event_id=d.event.event_id)


class _Gone(IngestError):
    status = 410
    error = "gone"
