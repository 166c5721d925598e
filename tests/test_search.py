"""Finding deliveries for the admin page (``bridge.search``) over a real Redis: every received
delivery listed once, newest first, however many pages of the index that takes; the deliveries
an earlier version listed in its zset after the newer ones; the scan limits said when reached."""

from __future__ import annotations

import time
from dataclasses import replace

import pytest

from bridge import keys
from bridge.deliveries import RECEIVED_FIELD, Delivery, DeliveryStore, new_delivery_id
from bridge.event import Event, utcnow_iso
from bridge.search import BATCH, ROUTE_SCAN_LIMIT, SCAN_LIMIT, Search, find
from tests.bridge_fixtures import route_dict

DAY = 86400


@pytest.fixture
def store(redis) -> DeliveryStore:
    return DeliveryStore(redis, keep_delivered_days=1, keep_failed_days=2)


def delivery(n: int, route: str = "leads") -> Delivery:
    now = utcnow_iso()
    phone = f"+9198765{n:05d}"
    return Delivery(
        id=new_delivery_id(),
        route=route,
        source="generic",
        status="queued",
        event=Event(
            route=route,
            source="generic",
            event_id=f"e-{n}",
            received_at=now,
            fields={"name": f"Lead {n}", "phone": phone},
        ),
        received_at=now,
        contact={"name": f"Lead {n}", "phoneNumber": phone, "metadata": {}},
    )


def added(store: DeliveryStore, *deliveries: Delivery) -> list[str]:
    pipe = store.redis.pipeline()  # MULTI/EXEC, as replays and the CLI write
    for d in deliveries:
        store.add(pipe, d)
    pipe.execute()
    return [d.id for d in deliveries]


def added_by_earlier_version(store: DeliveryStore, deliveries: list[Delivery], at: float):
    """Records as they are, listed in the zset an earlier version wrote (scored by the time of
    receipt, a second apart) and in no stream."""
    ids = added(store, *deliveries)
    store.redis.delete(keys.RECEIVED_STREAM)
    store.redis.zadd(keys.RECEIVED, {delivery_id: at + i for i, delivery_id in enumerate(ids)})
    return ids


def listed(store: DeliveryStore, **search) -> list[str]:
    return [d.id for d in find(store, Search(**search), region="IN").deliveries]


def test_every_delivery_is_listed_once_newest_first_across_pages_of_the_index(store):
    ids = added(store, *(delivery(n) for n in range(2 * BATCH + 17)))
    newest_first = ids[::-1]

    everything = find(store, Search(limit=1000), region="IN")
    assert [d.id for d in everything.deliveries] == newest_first
    assert not everything.more and not everything.truncated
    # "Show more" asks for a longer page: the first ones again, then the next ones
    first = find(store, Search(limit=BATCH + 10), region="IN")
    assert [d.id for d in first.deliveries] == newest_first[: BATCH + 10] and first.more
    assert listed(store, limit=2 * BATCH) == newest_first[: 2 * BATCH]


def test_a_route_is_picked_out_of_all_received_across_pages(store):
    mixed = [delivery(n, route="other" if n % 3 == 0 else "leads") for n in range(3 * BATCH)]
    added(store, *mixed)
    others = [d.id for d in mixed if d.route == "other"][::-1]
    assert len(others) == BATCH
    assert listed(store, route="other", limit=1000) == others
    assert listed(store, route="other", limit=BATCH - 1) == others[: BATCH - 1]
    assert (
        listed(store, route="leads", status="queued", limit=5)
        == [d.id for d in mixed if d.route == "leads"][::-1][:5]
    )


def test_webhooks_are_listed_through_the_admission_script(make_client):
    """The stream entry is added inside the script that admits the leads (Redis picks its id)."""
    client = make_client(routes=[route_dict(), route_dict(name="zap", source="zapier")])
    first = client.post("/hooks/leads", json={"name": "Asha", "phone": "9876543210"})
    second = client.post("/hooks/zap", json=[{"phone": "9876543211"}, {"phone": "9876543212"}])
    assert first.status_code == 202 and second.status_code == 202
    ids = [first.json["deliveryId"], *(d["deliveryId"] for d in second.json["deliveries"])]
    stream = client.redis.xrange(keys.RECEIVED_STREAM)
    assert [fields[RECEIVED_FIELD.encode()].decode() for _, fields in stream] == ids
    assert listed(client.store) == ids[::-1]
    assert client.store.counts()["received"] == 3


def test_deliveries_an_earlier_version_listed_come_after_the_newer_ones(store):
    now = time.time()
    before = added_by_earlier_version(
        store, [delivery(n) for n in range(BATCH + 50)], at=now - DAY - 1000
    )
    after = added(store, *(delivery(n, route="other") for n in range(BATCH + 30)))
    assert store.redis.zcard(keys.RECEIVED) == BATCH + 50
    assert store.redis.xlen(keys.RECEIVED_STREAM) == BATCH + 30

    expected = after[::-1] + before[::-1]
    assert listed(store, limit=1000) == expected
    # pages that end inside the older index, and a route found only there
    assert listed(store, limit=BATCH + 40) == expected[: BATCH + 40]
    assert listed(store, route="leads", limit=1000) == before[::-1]
    assert store.counts()["received"] == 2 * BATCH + 80

    # The usual trim empties the older index once its entries are past the longest retention
    # (2 days): both lists stay until then.
    assert store.trim_indexes(now) == 0
    assert store.trim_indexes(now + DAY) == BATCH + 50
    assert not store.redis.exists(keys.RECEIVED)
    assert listed(store, limit=1000) == after[::-1]
    assert store.counts()["received"] == BATCH + 30


def test_a_search_stops_at_its_scan_limit_and_says_so(store):
    oldest = added(store, delivery(0, route="other"))[0]
    pipe = store.redis.pipeline(transaction=False)
    for n in range(SCAN_LIMIT):  # newer entries whose records are gone: read, never listed
        pipe.xadd(keys.RECEIVED_STREAM, {RECEIVED_FIELD: f"dlv_gone{n}"})
    pipe.execute()

    everything = find(store, Search(), region="IN")
    assert everything.deliveries == [] and everything.truncated
    # a route is picked among more entries (each costs only its route read)
    by_route = find(store, Search(route="other"), region="IN")
    assert [d.id for d in by_route.deliveries] == [oldest] and not by_route.truncated
    assert SCAN_LIMIT + 1 < ROUTE_SCAN_LIMIT


def test_the_scan_limit_counts_the_older_index_too(store):
    oldest = added_by_earlier_version(store, [delivery(0)], at=time.time() - 60)[0]
    pipe = store.redis.pipeline(transaction=False)
    for n in range(SCAN_LIMIT - 1):
        pipe.xadd(keys.RECEIVED_STREAM, {RECEIVED_FIELD: f"dlv_gone{n}"})
    pipe.execute()
    # the delivery of the older index is the SCAN_LIMIT-th entry: read
    assert listed(store) == [oldest]

    store.redis.xadd(keys.RECEIVED_STREAM, {RECEIVED_FIELD: "dlv_gone_last"})
    beyond = find(store, Search(), region="IN")
    assert beyond.deliveries == [] and beyond.truncated


def test_a_search_of_the_failed_index_pages_it_too(store):
    skipped = [
        replace(delivery(n), status="skipped", reason_code="unmappable", reason="no phone")
        for n in range(BATCH + 5)
    ]
    ids = added(store, *skipped)
    now = time.time()  # one MULTI: give each its own time, as separate requests would have
    store.redis.zadd(keys.FAILED, {delivery_id: now + i for i, delivery_id in enumerate(ids)})
    assert listed(store, status="skipped", limit=1000) == ids[::-1]
    assert listed(store, status="skipped", limit=BATCH + 1) == ids[::-1][: BATCH + 1]
