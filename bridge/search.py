"""Finding deliveries for the admin page: by phone number (however it is typed), delivery id,
route and status, newest first.

Each search starts from the narrowest index the bridge keeps (one phone number's deliveries, a
route's failed ones, the failed ones, or all received) and reads records from there, so a search
touches at most ``SCAN_LIMIT`` records (``ROUTE_SCAN_LIMIT`` when it picks a route out of all
received ones) however many are stored.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bridge import keys
from bridge.deliveries import Delivery, DeliveryStore
from bridge.phone import InvalidPhone, to_e164

STATUSES = ("queued", "delivering", "retrying", "delivered", "failed", "skipped")
#: The most index entries one search reads before it stops and says so.
SCAN_LIMIT = 5000
#: ... when a route is picked among all received deliveries (no index per route: it would cost
#: every lead another ~125 bytes of Redis; reading 200 routes is one round trip).
ROUTE_SCAN_LIMIT = 20000
BATCH = 200


@dataclass
class Search:
    query: str = ""
    route: str = ""
    status: str = ""
    limit: int = 50


@dataclass
class Found:
    deliveries: list[Delivery] = field(default_factory=list)
    #: What the query was understood as, e.g. "phone +919876543210" (shown above the results).
    understood: str = ""
    problem: str = ""
    #: True when the newest SCAN_LIMIT entries were read without filling the page.
    truncated: bool = False
    more: bool = False


def find(store: DeliveryStore, search: Search, *, region: str) -> Found:
    query = search.query.strip()
    if search.status and search.status not in STATUSES:
        return Found(problem=f"unknown status {search.status!r}")
    if query.startswith("dlv_"):
        d = store.get(query)
        found = Found(understood=f"delivery {query}")
        if d is None:
            found.problem = f"no delivery {query} (it may have expired)"
        elif _matches(d.route, d.status, search):
            found.deliveries = [d]
        return found
    if query:
        try:
            phone = to_e164(query, region=region)
        except InvalidPhone:
            return Found(problem=f"{query!r} is neither a delivery id (dlv_...) nor a phone number")
        return _walk_phone(store, phone, search)
    if search.status in ("failed", "skipped"):
        key = keys.failed_by_route(search.route) if search.route else keys.FAILED
    else:
        key = keys.RECEIVED  # a route's deliveries are found by reading the route of each
    return _walk(store, key, search)


def _walk(store: DeliveryStore, index: str, search: Search, understood: str = "") -> Found:
    """Read ``index`` newest first, keeping the records that pass the filters."""
    redis = store.redis
    found = Found(understood=understood)
    offset = 0
    limit = ROUTE_SCAN_LIMIT if search.route and index == keys.RECEIVED else SCAN_LIMIT
    while offset < limit:
        ids = [i.decode() for i in redis.zrevrange(index, offset, offset + BATCH - 1)]
        if not ids:
            return found
        offset += len(ids)
        pipe = redis.pipeline(transaction=False)
        for delivery_id in ids:
            pipe.hmget(keys.delivery(delivery_id), "route", "status")
        keep = [
            delivery_id
            for delivery_id, (route, status) in zip(ids, pipe.execute(), strict=True)
            if route is not None and _matches(route.decode(), (status or b"").decode(), search)
        ]
        for d in store.read(keep):
            if d is None:
                continue  # expired between the two reads
            if len(found.deliveries) == search.limit:
                found.more = True
                return found
            found.deliveries.append(d)
    found.truncated = redis.zcard(index) > limit
    return found


def _walk_phone(store: DeliveryStore, phone: str, search: Search) -> Found:
    """Read the number's deliveries newest first, keeping the records that pass the filters."""
    found = Found(understood=f"phone {phone}")
    ids = store.phone_ids([phone], SCAN_LIMIT + 1)[0]
    for start in range(0, min(len(ids), SCAN_LIMIT), BATCH):
        for d in _matching(store, ids[start : start + BATCH], search):
            if len(found.deliveries) == search.limit:
                found.more = True
                return found
            found.deliveries.append(d)
    found.truncated = len(ids) > SCAN_LIMIT
    return found


def _matching(store: DeliveryStore, ids: list[str], search: Search) -> list[Delivery]:
    """The records of ``ids`` that pass the filters, in order (their route and status read
    first, so that only those are read whole)."""
    pipe = store.redis.pipeline(transaction=False)
    for delivery_id in ids:
        pipe.hmget(keys.delivery(delivery_id), "route", "status")
    keep = [
        delivery_id
        for delivery_id, (route, status) in zip(ids, pipe.execute(), strict=True)
        if route is not None and _matches(route.decode(), (status or b"").decode(), search)
    ]
    return [d for d in store.read(keep) if d is not None]  # None: expired between the reads


def _matches(route: str, status: str, search: Search) -> bool:
    return (not search.route or route == search.route) and (
        not search.status or status == search.status
    )
