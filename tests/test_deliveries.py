"""The delivery store (``bridge.deliveries``) over a real Redis: records, history, the indexes
that list failures, retention, and what is kept of a request (nothing secret)."""

from __future__ import annotations

import json
import time
from dataclasses import replace

import pytest

from bridge import keys
from bridge.deliveries import (
    HISTORY_MAX,
    RECEIVED_FIELD,
    Delivery,
    DeliveryStore,
    new_delivery_id,
    phone_shard,
    raw_record,
    request_from_raw,
)
from bridge.event import Event, InboundRequest, utcnow_iso
from bridge.record import id_ms
from bridge.redaction import REDACTED, redact
from bridge.search import Search, find

DAY = 86400


@pytest.fixture
def store(redis) -> DeliveryStore:
    return DeliveryStore(redis, keep_delivered_days=1, keep_failed_days=2)


_last_ms = 0


def next_id() -> str:
    """A delivery id from a later millisecond than the one made before it here.

    Ids order by the millisecond they were made in and, within one, by their random part; the
    tests below that assert an order (newest first) must not depend on that draw.
    """
    global _last_ms
    while int(time.time() * 1000) <= _last_ms:
        time.sleep(0.0005)
    made = new_delivery_id()
    _last_ms = id_ms(made)
    return made


def delivery(**changes) -> Delivery:
    now = utcnow_iso()
    event = Event(
        route="leads",
        source="generic",
        event_id=f"e-{time.monotonic_ns()}",
        received_at=now,
        fields={"name": "Asha", "phone": "+919876543210"},
    )
    d = Delivery(
        id=next_id(),
        route="leads",
        source="generic",
        status="queued",
        event=event,
        received_at=now,
        contact={"name": "Asha", "phoneNumber": "+919876543210", "metadata": {}},
    )
    return replace(d, **changes)


def added(store: DeliveryStore, d: Delivery) -> Delivery:
    pipe = store.redis.pipeline()
    store.add(pipe, d)
    pipe.execute()
    return d


def failed(store: DeliveryStore, d: Delivery, code: str, message: str = "bad") -> Delivery:
    d.status = "failed"
    d.reason_code = code
    d.reason = message
    store.update(d, "failed", message)
    return d


def members(store: DeliveryStore, key: str) -> set[str]:
    return {m.decode() for m in store.redis.zrange(key, 0, -1)}


def received(store: DeliveryStore) -> list[str]:
    """Every received delivery's id as the store lists them, newest first."""
    return [i for batch in store.received_newest_first() for i in batch]


def found(store: DeliveryStore) -> list[str]:
    """The ids the admin page lists when nothing is filtered, newest first."""
    return [d.id for d in find(store, Search(limit=1000), region="IN").deliveries]


def in_stream(store: DeliveryStore) -> list[str]:
    """The delivery ids of the received stream's entries, oldest first."""
    entries = store.redis.xrange(keys.RECEIVED_STREAM)
    return [fields[RECEIVED_FIELD.encode()].decode() for _, fields in entries]


# --- records --------------------------------------------------------------------------------------


def test_a_record_reads_back_as_written(store):
    d = added(
        store,
        delivery(
            raw_id="r1",
            lead_index=3,
            contact_id="ct_1",
            audience_id="aud_1",
            audience_added=True,
            attempts=2,
            failures=1,
            last_api={"status": 500, "message": "boom", "call": "POST /contacts"},
            job_id="dlv_x-2",
            job_seq=2,
        ),
    )
    got = store.get(d.id)
    assert replace(got, updated_at="") == replace(d, updated_at="")
    assert store.exists(d.id) and not store.exists("dlv_nope")
    assert store.get("dlv_nope") is None


def test_ids_are_unguessable_and_sort_by_time():
    first = new_delivery_id()
    time.sleep(0.002)
    ids = {new_delivery_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(i.startswith("dlv_") and i > first for i in ids)


def test_cleared_fields_are_gone_from_the_record(store):
    d = failed(store, added(store, delivery(last_api={"status": 500})), "invalid", "bad")
    d.status, d.reason_code, d.reason, d.last_api = "delivered", None, None, None
    store.update(d, "delivered")
    got = store.get(d.id)
    assert (got.reason_code, got.reason, got.last_api) == (None, None, None)
    fields = store.redis.hkeys(keys.delivery(d.id))
    assert b"reason" not in fields and b"last_api" not in fields


def test_the_summary_shows_no_raw_payload_and_no_event_fields(store):
    d = added(store, delivery(raw_id="r1"))
    summary = d.summary()
    assert summary["deliveryId"] == d.id and summary["phoneNumber"] == "+919876543210"
    assert "raw" not in summary and "event" not in summary and "contact" not in summary
    json.dumps(summary)


def test_history_keeps_the_last_hundred_entries_in_order(store):
    d = added(store, delivery())
    for n in range(HISTORY_MAX + 20):
        store.update(d, "attempt", f"attempt {n}")
    history = store.history(d.id)
    assert len(history) == HISTORY_MAX
    assert history[-1]["detail"] == f"attempt {HISTORY_MAX + 19}"
    assert history[0]["detail"] == "attempt 20"
    assert store.last_history(d.id) == history[-1]
    assert set(history[-1]) == {"at", "what", "detail"}


# --- indexes --------------------------------------------------------------------------------------


def test_a_new_active_delivery_is_listed_as_received_and_active(store):
    d = added(store, delivery())
    assert received(store) == [d.id] and d.id in members(store, keys.ACTIVE)
    assert in_stream(store) == [d.id]  # one stream entry: no zset member (it cost ~130 bytes)
    assert store.redis.exists(keys.RECEIVED) == 0
    assert d.id not in members(store, keys.FAILED)
    assert [h["what"] for h in store.history(d.id)] == ["received"]


def test_a_skipped_delivery_is_listed_as_failed_from_the_start(store):
    d = added(store, delivery(status="skipped", reason_code="unmappable", reason="no phone"))
    assert d.id in members(store, keys.FAILED)
    assert d.id in members(store, keys.failed_by_route("leads"))
    assert d.id in members(store, keys.failed_by_reason("unmappable"))
    assert d.id not in members(store, keys.ACTIVE)


def test_failing_again_for_another_reason_moves_it_between_reason_lists(store):
    d = failed(store, added(store, delivery()), "not_found")
    assert d.id in members(store, keys.failed_by_reason("not_found"))
    d.status = "queued"  # replayed
    store.update(d, "replayed")
    assert d.id not in members(store, keys.FAILED)
    assert d.id not in members(store, keys.failed_by_reason("not_found"))
    failed(store, d, "invalid")
    assert d.id not in members(store, keys.failed_by_reason("not_found"))
    assert d.id in members(store, keys.failed_by_reason("invalid"))
    assert store.failed_ids(reason="not_found") == ([], 0)
    assert store.failed_ids(reason="invalid") == ([d.id], 1)


def test_delivered_after_a_failure_is_off_every_failed_list(store):
    d = failed(store, added(store, delivery()), "not_found")
    d.status, d.reason_code, d.reason = "delivered", None, None
    store.update(d, "delivered")
    for key in (keys.FAILED, keys.failed_by_route("leads"), keys.failed_by_reason("not_found")):
        assert d.id not in members(store, key)
    assert store.failed_ids() == ([], 0)


def test_failed_ids_filter_by_route_reason_and_time_and_page(store):
    a = [failed(store, added(store, delivery()), "invalid") for _ in range(3)]
    b = [failed(store, added(store, delivery(route="other")), "invalid")]
    c = [failed(store, added(store, delivery()), "not_found")]
    assert store.failed_ids()[1] == 5
    assert set(store.failed_ids(route="leads")[0]) == {d.id for d in a + c}
    assert store.failed_ids(route="other") == ([b[0].id], 1)
    assert set(store.failed_ids(reason="invalid")[0]) == {d.id for d in a + b}
    assert set(store.failed_ids(route="leads", reason="invalid")[0]) == {d.id for d in a}
    # an old failure is left out by `since`
    store.redis.zadd(keys.FAILED, {a[0].id: time.time() - 3 * 3600})
    recent, total = store.failed_ids(since=time.time() - 3600)
    assert total == 4 and a[0].id not in recent
    # pages, newest first by default, oldest first on request
    newest = store.failed_ids(limit=2)[0]
    oldest = store.failed_ids(limit=2, newest_first=False)[0]
    assert oldest[0] == a[0].id and newest[0] == c[0].id
    everything = store.failed_ids(limit=2)[0] + store.failed_ids(offset=2, limit=2)[0]
    everything += store.failed_ids(offset=4, limit=2)[0]
    assert sorted(everything) == sorted(d.id for d in a + b + c)


def test_counts(store):
    added(store, delivery())
    failed(store, added(store, delivery()), "invalid")
    assert store.counts() == {"active": 1, "failed": 1, "received": 2}


def test_prune_drops_index_entries_whose_record_expired(store):
    d = failed(store, added(store, delivery()), "invalid")
    alive = failed(store, added(store, delivery()), "invalid")
    store.redis.zadd(keys.RECEIVED, {d.id: time.time()})  # as an earlier version listed it
    store.redis.delete(keys.delivery(d.id))
    store.prune_indexes([d.id, alive.id])
    assert members(store, keys.FAILED) == {alive.id}
    assert d.id not in members(store, keys.RECEIVED)
    # Its stream entry waits for the trim (an XDEL would free nothing); nothing lists it anyway.
    assert found(store) == [alive.id]


def test_trim_drops_entries_older_than_their_records_can_live(store):
    now = time.time()
    # Received 3 days ago (its entry id is its time of receipt), and 1 day ago: the longest
    # retention (failed, 2 days) is over for the first only.
    for days, delivery_id in ((3, "dlv_old"), (1, "dlv_kept")):
        store.redis.xadd(
            keys.RECEIVED_STREAM,
            {RECEIVED_FIELD: delivery_id},
            id=f"{int((now - days * DAY) * 1000)}-0",
        )
    d = failed(store, added(store, delivery()), "invalid")
    store.redis.zadd(keys.RECEIVED, {"dlv_old": now - 3 * DAY})
    store.redis.zadd(keys.FAILED, {"dlv_old": now - 3 * DAY})
    store.redis.zadd(keys.failed_by_reason("invalid"), {"dlv_old": now - 3 * DAY})
    assert store.trim_indexes(now) == 4
    assert members(store, keys.FAILED) == {d.id}
    assert members(store, keys.failed_by_reason("invalid")) == {d.id}
    assert in_stream(store) == ["dlv_kept", d.id]
    assert store.redis.exists(keys.RECEIVED) == 0
    assert store.counts()["received"] == 2


def test_due_active_lists_what_the_reaper_should_look_at(store):
    d = added(store, delivery())
    assert store.due_active() == []  # looked at a minute after it came in
    assert store.due_active(time.time() + 61) == [d.id]
    store.update(d, recheck_in=-1)
    assert store.due_active() == [d.id]


# --- the phone index ------------------------------------------------------------------------------

PHONE = "+919876543210"


def of_number(phone: str, **changes) -> Delivery:
    return delivery(contact={"name": "Asha", "phoneNumber": phone, "metadata": {}}, **changes)


def move_to_earlier_day(store: DeliveryStore, phone: str, days: int = 1) -> None:
    """Make what is indexed for ``phone`` look written ``days`` earlier (its day's zset, moved)."""
    [key] = store.redis.scan_iter(keys.phones("*", phone_shard(phone)))
    day = int(key.decode().split(":")[-2])
    store.redis.rename(key, keys.phones(day - days, phone_shard(phone)))


def test_a_number_is_found_newest_first_across_the_days_its_deliveries_came(store):
    first = failed(store, added(store, of_number(PHONE)), "invalid")
    move_to_earlier_day(store, PHONE)
    second = added(store, of_number(PHONE))
    third = added(store, of_number(PHONE))
    added(store, of_number("+919876543211"))
    assert store.phone_ids([PHONE], 10) == [[third.id, second.id, first.id]]
    assert store.phone_ids([PHONE], 2) == [[third.id, second.id]]
    # what was indexed yesterday is read as long as its record can live (2 days here), no longer
    assert store.phone_ids([PHONE], 10, now=time.time() + DAY) == [[third.id, second.id, first.id]]
    assert store.phone_ids([PHONE], 10, now=time.time() + 2 * DAY) == [[third.id, second.id]]


def test_a_delivery_indexed_again_at_its_final_status_is_listed_once(store):
    d = added(store, of_number(PHONE))
    move_to_earlier_day(store, PHONE)  # came in yesterday, failed today
    failed(store, d, "invalid")
    assert store.phone_ids([PHONE], 10) == [[d.id]]


def test_a_number_that_begins_another_is_not_mixed_up_with_it(store):
    # Two numbers, one the other's beginning, that share a zset: the range of one stops before
    # the other's members.
    short = next(
        p for i in range(10**4) if phone_shard(p := f"+9198765{i:04d}") == phone_shard(p + "7")
    )
    first = added(store, of_number(short))
    longer = added(store, of_number(short + "7"))
    assert store.phone_ids([short, short + "7"], 10) == [[first.id], [longer.id]]


def test_the_day_zsets_expire_a_day_after_the_longest_retention(store):
    added(store, of_number(PHONE))
    [key] = store.redis.scan_iter(keys.phones("*", phone_shard(PHONE)))
    day = int(key.decode().split(":")[-2])
    left = (day + 1) * DAY + 2 * DAY - time.time()
    assert left - 2 <= store.redis.ttl(key) <= left + 1


def test_a_numbers_index_as_an_earlier_version_wrote_it_is_still_read(store):
    old = added(store, of_number(PHONE))
    both = added(store, of_number(PHONE))
    # As an earlier version indexed them: a zset of the number's delivery ids by time.
    store.redis.delete(*store.redis.scan_iter(keys.phones("*", "*")))
    store.redis.zadd(keys.by_phone(PHONE), {old.id: time.time() - 60, both.id: time.time()})
    store.redis.expire(keys.by_phone(PHONE), 2 * DAY)
    failed(store, both, "invalid")  # indexed again, the new way
    new = added(store, of_number(PHONE))
    assert store.phone_ids([PHONE], 10) == [[new.id, both.id, old.id]]
    assert store.phone_ids([PHONE, "+919876543211"], 10) == [[new.id, both.id, old.id], []]


# --- retention ------------------------------------------------------------------------------------


def test_finished_records_expire_by_their_retention_and_active_ones_never(store):
    live = added(store, delivery())
    assert store.redis.ttl(keys.delivery(live.id)) == -1
    gone = failed(store, added(store, delivery()), "invalid")
    assert 2 * DAY - 60 < store.redis.ttl(keys.delivery(gone.id)) <= 2 * DAY
    assert store.history(gone.id)  # its history is in the record: it expires with it


def test_a_history_list_of_an_earlier_version_expires_and_revives_with_its_record(store):
    d = added(store, delivery())
    # As an earlier version wrote it: the whole event in one field, the history in a list.
    store.redis.hset(keys.delivery(d.id), "event", json.dumps(d.event.to_dict()))
    store.redis.hdel(keys.delivery(d.id), "event_id")
    store.redis.rpush(
        keys.history(d.id), json.dumps({"at": "2025-01-01T00:00:00.000Z", "what": "received"})
    )
    d = store.get(d.id)
    gone = failed(store, d, "invalid")
    assert 2 * DAY - 60 < store.redis.ttl(keys.history(gone.id)) <= 2 * DAY
    gone.status = "queued"
    store.update(gone, "replayed")
    assert store.redis.ttl(keys.history(gone.id)) == -1


def test_a_replayed_record_no_longer_expires(store):
    d = failed(store, added(store, delivery()), "invalid")
    d.status = "queued"
    store.update(d, "replayed")
    assert store.redis.ttl(keys.delivery(d.id)) == -1


def test_store_for_settings_keeps_what_the_config_says(redis, make_settings):
    settings = make_settings(delivery={"keep_delivered_days": 3, "keep_failed_days": 9})
    store = DeliveryStore.for_settings(redis, settings)
    assert (store.keep_delivered, store.keep_failed) == (3 * DAY, 9 * DAY)


def test_store_keeps_deliveries_for_the_configured_time(make_client, run_jobs, sandbox):
    client = make_client(delivery={"keep_delivered_days": 1})
    r = client.post("/hooks/leads", json={"name": "Priya", "phone": "098765 43210"})
    assert r.status_code == 202, r.json
    delivery_id = r.json["deliveryId"]
    run_jobs(client.settings)
    ttl = client.redis.ttl(f"oliai-bridge:d:{delivery_id}")
    assert 86000 < ttl <= 86400
    assert DeliveryStore(client.redis).get(delivery_id).status == "delivered"


# --- what is kept of a request --------------------------------------------------------------------

SECRET = "s3cret route/token"


def test_redact_replaces_a_secret_in_every_spelling_at_any_depth():
    value = {
        "url": "https://x.example/hook?token=s3cret%20route%2Ftoken",
        "form": "a=1&token=s3cret+route%2Ftoken",
        "list": ["a", f"key {SECRET}!"],
        SECRET: {"deep": b"bytes " + SECRET.encode()},
        "n": 5,
    }
    text = json.dumps(redact(value, [SECRET]), default=lambda b: b.decode())
    assert "s3cret" not in text and REDACTED in text
    assert redact(value, [SECRET])["n"] == 5


def test_redact_leaves_text_alone_for_short_or_empty_secrets():
    assert redact("id=abc&x=1", ["abc", ""]) == "id=abc&x=1"


def test_raw_record_keeps_only_safe_headers_and_no_token():
    req = InboundRequest(
        method="POST",
        route="leads",
        body=json.dumps({"phone": "+919876543210", "hook": f"https://b/?token={SECRET}"}).encode(),
        headers={
            "content-type": "application/json",
            "idempotency-key": "k-1",
            "authorization": "Basic c2VjcmV0",
            "x-bridge-token": SECRET,
            "x-hub-signature": "sha256=abc",
        },
        query={"token": SECRET, "utm": "fb"},
    )
    raw = raw_record(req, ("idempotency-key",), [SECRET])
    assert raw["headers"] == {"content-type": "application/json", "idempotency-key": "k-1"}
    assert raw["query"] == {"utm": "fb"}
    assert SECRET not in json.dumps(raw)
    again = request_from_raw(raw)
    assert json.loads(again.body)["hook"] == f"https://b/?token={REDACTED}"
    assert (again.method, again.route, again.header("idempotency-key")) == ("POST", "leads", "k-1")


def test_raw_payload_is_shared_and_kept_as_long_as_any_record(store):
    raw = {"method": "POST", "route": "leads", "headers": {}, "query": {}, "body_b64": ""}
    pipe = store.redis.pipeline()
    store.add_raw(pipe, "r1", raw)
    pipe.execute()
    one, two = added(store, delivery(raw_id="r1")), added(store, delivery(raw_id="r1"))
    assert store.raw(one) == store.raw(two) == raw
    assert store.redis.ttl("oliai-bridge:raw:r1") > 2 * DAY - 60
    assert store.raw(delivery(raw_id=None)) is None
    assert store.raw(delivery(raw_id="r-expired")) is None
