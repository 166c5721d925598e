"""Finding deliveries for the admin page: by phone number (however it is typed), delivery id,
route and status, newest first.

Each search starts from the narrowest index the bridge keeps (one phone number's deliveries, a
route's failed ones, the failed ones, or all received) and reads records from there, so a search
touches at most ``SCAN_LIMIT`` records (``ROUTE_SCAN_LIMIT`` when it picks a route out of all
received ones) however many are stored.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from redis import Redis

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
        return _collect(store, _newest_first(store.redis, key), SCAN_LIMIT, search)
    # All received (the stream, then the zset earlier versions kept): a route's are found by
    # reading the route of each.
    limit = ROUTE_SCAN_LIMIT if search.route else SCAN_LIMIT
    return _collect(store, store.received_newest_first(BATCH), limit, search)


def _walk_phone(store: DeliveryStore, phone: str, search: Search) -> Found:
    """Read the number's deliveries newest first, keeping the records that pass the filters."""
    ids = store.phone_ids([phone], SCAN_LIMIT + 1)[0]
    pages = (ids[start : start + BATCH] for start in range(0, len(ids), BATCH))
    return _collect(store, pages, SCAN_LIMIT, search, understood=f"phone {phone}")


def _collect(
    store: DeliveryStore,
    pages: Iterator[list[str]],
    limit: int,
    search: Search,
    understood: str = "",
) -> Found:
    """The records of the ids in ``pages`` (newest first) that pass the filters, one page of
    results, reading at most ``limit`` ids."""
    found = Found(understood=understood)
    seen = 0
    for page in pages:
        if seen == limit:
            found.truncated = True
            break
        ids, rest = page[: limit - seen], page[limit - seen :]
        seen += len(ids)
        for d in _matching(store, ids, search):
            if len(found.deliveries) == search.limit:
                found.more = True
                return found
            found.deliveries.append(d)
        if rest:
            found.truncated = True
            break
    return found


def _newest_first(redis: Redis, index: str) -> Iterator[list[str]]:
    """The members of the zset ``index``, highest score first, ``BATCH`` at a time."""
    offset = 0
    while ids := redis.zrevrange(index, offset, offset + BATCH - 1):
        yield [i.decode() for i in ids]
        offset += len(ids)


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
