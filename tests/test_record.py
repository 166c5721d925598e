"""The delivery record as a Redis hash: every field goes in and comes back, an unset optional
field leaves the hash, and hashes written by earlier versions still read (users' Redis holds
them)."""

from __future__ import annotations

import base64
import hashlib
import json
import zlib
from dataclasses import dataclass, fields, replace
from datetime import UTC, datetime

import pytest

from bridge import keys
from bridge.deliveries import Delivery as DeliveryFromTheStoreModule
from bridge.deliveries import DeliveryStore
from bridge.event import Event, InboundRequest
from bridge.record import (
    HASH_FIELDS,
    OPTIONAL_FIELDS,
    Delivery,
    hash_fields,
    raw_record,
    request_from_raw,
)

EVENT = Event(
    route="leads",
    source="typeform",
    event_id="tf:abc",
    received_at="2026-01-01T10:00:00.000Z",
    fields={"name": "Asha", "answers": [1, "two", None], "nested": {"ü": "✓"}},
    hints={"phone": "+919876543210"},
    fetch={"kind": "meta_lead", "id": "444"},
)

#: A value for every field of ``Delivery``, none of them its default.
EVERY_FIELD = {
    "id": "dlv_18c0ffee0123456789ab",
    "route": "leads",
    "source": "typeform",
    "status": "retrying",
    "event": EVENT,
    "received_at": "2026-01-01T10:00:00.000Z",
    "updated_at": "2026-01-01T10:05:00.000Z",
    "raw_id": "r0123456789abcdef",
    "lead_index": 2,
    "contact": {"name": "Asha", "phoneNumber": "+919876543210", "metadata": {"k": "v"}},
    "contact_id": "ct_1",
    "audience_id": "aud_1",
    "audience_added": True,
    "attempts": 3,
    "failures": 2,
    "reason_code": "server_error",
    "reason": "OliAI answered 503",
    "last_api": {"status": 503, "message": "busy", "call": "POST /contacts"},
    "job_id": "dlv_18c0ffee0123456789ab-4",
    "job_seq": 4,
    "failed_index": "server_error",
    "lane": "backfill",
    "batch_id": "b0123456789abcdef",
}


def every_field() -> Delivery:
    return Delivery(**EVERY_FIELD)


def test_the_sample_sets_every_field_away_from_its_default():
    names = {f.name for f in fields(Delivery)}
    assert set(EVERY_FIELD) == names
    bare = Delivery(
        **{k: EVERY_FIELD[k] for k in ("id", "route", "source", "status", "event")},
        received_at="2026-01-01T09:00:00.000Z",
    )
    same = [
        n
        for n in names - {"id", "route", "source", "status", "event"}
        if getattr(bare, n) == EVERY_FIELD[n]
    ]
    assert same == []


def as_redis(stored: dict) -> dict[bytes, bytes]:
    """A ``to_hash`` result as Redis gives it back."""
    return {k.encode(): v if isinstance(v, bytes) else v.encode() for k, v in stored.items()}


def test_every_field_round_trips_through_the_hash():
    d = every_field()
    stored = d.to_hash()
    # The id is the key's and the ticket is <id>-<seq>: neither is stored again; the event's
    # id is a field of its own (its route, source and time are the record's).
    assert set(stored) == set(EVERY_FIELD) - {"id", "job_id"} | {"event_id"}
    assert all(isinstance(v, str) for v in stored.values())
    back = Delivery.from_hash(as_redis(stored), d.id)
    assert back == d
    for name in EVERY_FIELD:
        assert getattr(back, name) == EVERY_FIELD[name], name


def test_a_ticket_that_is_not_the_usual_one_is_stored():
    d = every_field()
    d.job_id = "dlv_18c0ffee0123456789ab-legacy"
    stored = d.to_hash()
    assert stored["job_id"] == "dlv_18c0ffee0123456789ab-legacy"
    assert Delivery.from_hash(as_redis(stored), d.id).job_id == d.job_id


def test_a_record_without_its_id_needs_the_key_s():
    with pytest.raises(ValueError, match="id"):
        Delivery.from_hash(as_redis(every_field().to_hash()))


def test_false_zero_and_empty_values_come_back_as_themselves():
    d = every_field()
    d.audience_added, d.attempts, d.failures, d.lead_index, d.job_seq = False, 0, 0, 0, 0
    d.contact, d.last_api, d.reason, d.failed_index = {}, {}, "", ""
    back = Delivery.from_hash(as_redis(d.to_hash()), d.id)
    assert back == d
    assert back.failed_index == ""  # listed in the failed index without a reason code


def test_optional_fields_are_exactly_those_that_may_be_none():
    assert set(OPTIONAL_FIELDS) == {
        "raw_id",
        "contact",
        "contact_id",
        "audience_id",
        "reason_code",
        "reason",
        "last_api",
        "job_id",
        "failed_index",
        "batch_id",
    }
    assert [f.name for f in HASH_FIELDS] == [f.name for f in fields(Delivery)]


@pytest.mark.parametrize("name", [n for n in OPTIONAL_FIELDS if n != "job_id"])
def test_an_optional_field_set_to_none_leaves_the_hash(name):
    d = every_field()
    setattr(d, name, None)
    stored = d.to_hash()
    assert name not in stored
    back = Delivery.from_hash(as_redis(stored), d.id)
    assert getattr(back, name) is None
    assert back == d


@pytest.mark.parametrize(
    "name", [n for n in OPTIONAL_FIELDS if n not in ("failed_index", "job_id")]
)
def test_saving_a_cleared_field_removes_it_from_redis(redis, name):
    store = DeliveryStore(redis)
    d = every_field()
    d.failed_index = None  # not listed: the store manages this one (next test)
    store.update(d, "attempt")
    assert redis.hexists(keys.delivery(d.id), name)
    setattr(d, name, None)
    store.update(d, "attempt")
    assert not redis.hexists(keys.delivery(d.id), name)
    again = store.get(d.id)
    assert getattr(again, name) is None
    assert again == d


def test_the_ticket_is_said_only_when_it_is_not_the_usual_one(redis):
    store = DeliveryStore(redis)
    d = every_field()
    d.failed_index = None
    d.job_id = "dlv_18c0ffee0123456789ab-old"  # as an earlier version could have left it
    store.update(d, "attempt")
    assert redis.hget(keys.delivery(d.id), "job_id") == b"dlv_18c0ffee0123456789ab-old"
    d.job_seq, d.job_id = 5, "dlv_18c0ffee0123456789ab-5"  # re-queued: the usual ticket
    store.update(d, "queued", only={"job_seq", "job_id"})
    assert not redis.hexists(keys.delivery(d.id), "job_id")  # the stale one is gone
    assert store.get(d.id).job_id == "dlv_18c0ffee0123456789ab-5"
    d.job_id = None  # no ticket at all, with a sequence that would suggest one
    store.update(d, "attempt")
    assert store.get(d.id).job_id is None
    fresh = every_field()
    fresh.job_seq, fresh.job_id = 0, None  # never queued
    assert "job_id" not in fresh.to_hash()
    assert Delivery.from_hash(as_redis(fresh.to_hash()), fresh.id).job_id is None


def test_a_replayed_failure_leaves_the_failed_index_field_and_the_lists(redis):
    store = DeliveryStore(redis)
    d = every_field()
    d.status, d.failed_index = "failed", None
    store.update(d, "failed", "OliAI answered 503")
    assert redis.hget(keys.delivery(d.id), "failed_index") == b"server_error"
    assert redis.zscore(keys.failed_by_reason("server_error"), d.id) is not None
    d.status = "queued"
    store.update(d, "replayed")
    assert not redis.hexists(keys.delivery(d.id), "failed_index")
    assert store.get(d.id).failed_index is None
    assert redis.zscore(keys.failed_by_reason("server_error"), d.id) is None
    assert redis.ttl(keys.delivery(d.id)) == -1  # alive again: no expiry


def test_a_hash_written_by_earlier_versions_reads_and_is_written_back_in_today_s_layout(redis):
    # As the first versions' hand-written ``to_hash`` stored it, field for field.
    event = {
        "route": "leads",
        "source": "generic",
        "event_id": "e1",
        "received_at": "2025-12-31T23:59:59.000Z",
        "fields": {"name": "Asha", "phone": "9876543210"},
        "hints": {},
        "fetch": None,
    }
    earlier = {
        "id": "dlv_18c0ffee0000aabbccddeeff",
        "route": "leads",
        "source": "generic",
        "status": "failed",
        "event": json.dumps(event),
        "received_at": "2025-12-31T23:59:59.000Z",
        "updated_at": "2026-01-01T00:00:03.000Z",
        "lead_index": "0",
        "attempts": "1",
        "failures": "1",
        "job_seq": "1",
        "audience_added": "",
        "raw_id": "r00112233aabbccdd",
        "contact_id": "ct_9",
        "reason_code": "invalid",
        "reason": "phoneNumber is not valid",
        "job_id": "dlv_18c0ffee0000aabbccddeeff-1",
        "failed_index": "invalid",
        "contact": json.dumps({"name": "Asha", "phoneNumber": "+919876543210"}),
        "last_api": json.dumps({"status": 422, "message": "bad phone", "call": "POST /contacts"}),
    }
    redis.hset(keys.delivery(earlier["id"]), mapping=earlier)
    d = DeliveryStore(redis).get(earlier["id"])
    assert d is not None
    assert (d.status, d.attempts, d.failures, d.job_seq) == ("failed", 1, 1, 1)
    assert d.audience_added is False and d.audience_id is None
    assert d.event == Event.from_dict(event)
    assert d.contact == {"name": "Asha", "phoneNumber": "+919876543210"}
    assert d.last_api["status"] == 422
    assert d.failed_index == "invalid"
    assert d.summary()["reasonCode"] == "invalid"
    assert d.lane == "live"  # stored before lanes existed: a webhook's
    # Written back in today's layout: what the key and the other fields say is not repeated
    # (no raw body was read, so nothing is packed); every value reads back the same.
    again = d.to_hash()
    # Not said again: the id and ticket (the key and job_seq say them), and the fields that
    # hold their defaults (a missing field reads as its default).
    unsaid = {"id", "job_id", "lead_index", "audience_added"}
    assert set(again) == set(earlier) - unsaid | {"event_id"}
    rewritten = {"event", "event_id", "contact", "received_at", "updated_at"}
    assert {k: again[k] for k in again if k not in rewritten} == {
        k: v for k, v in earlier.items() if k not in unsaid | rewritten
    }
    # The bridge's own times as epoch milliseconds (8 bytes in Redis instead of 24).
    assert (again["received_at"], again["updated_at"]) == ("1767225599000", "1767225603000")
    assert Delivery.from_hash(as_redis(again), d.id) == d
    store = DeliveryStore(redis)
    store.update(d, "replayed")
    assert store.get(d.id) == d


def test_a_type_without_a_codec_is_refused_when_the_record_is_declared():
    @dataclass
    class Odd:
        id: str
        tags: set[str]

    with pytest.raises(TypeError, match="tags"):
        hash_fields(Odd)


def test_the_record_is_still_importable_from_the_store_module():
    assert DeliveryFromTheStoreModule is Delivery


def test_a_new_delivery_was_updated_when_it_was_received():
    d = Delivery(
        id="dlv_1",
        route="r",
        source="s",
        status="queued",
        event=EVENT,
        received_at="2026-01-01T10:00:00.000Z",
    )
    assert d.updated_at == "2026-01-01T10:00:00.000Z"
    stored = d.to_hash()
    assert "updated_at" not in stored  # the time of receipt says it
    assert Delivery.from_hash(as_redis(stored), d.id).updated_at == "2026-01-01T10:00:00.000Z"


def test_the_raw_request_keeps_safe_headers_drops_the_token_and_redacts_the_body():
    token = "s3cret-route-token"
    req = InboundRequest(
        method="POST",
        route="leads",
        body=f'{{"hook": "https://x/hooks/leads?token={token}"}}'.encode(),
        headers={"content-type": "application/json", "x-sig": "abc", "cookie": "c=1"},
        query={"token": token, "src": "form"},
    )
    raw = raw_record(req, ("x-sig",), [token])
    assert raw["headers"] == {"content-type": "application/json", "x-sig": "abc"}
    assert raw["query"] == {"src": "form"}
    assert token not in json.dumps(raw)
    assert (
        base64.b64decode(raw["body_b64"]) == b'{"hook": "https://x/hooks/leads?token=[redacted]"}'
    )
    again = request_from_raw(json.loads(json.dumps(raw)))
    assert again.body == base64.b64decode(raw["body_b64"])
    assert again.query == {"src": "form"} and again.header("x-sig") == "abc"


# --- compact storage ------------------------------------------------------------------------------

FORM = json.dumps(
    {
        "full_name": "Asha Rao",
        "phone": "+919876543210",
        "email": "asha.rao@example.com",
        "city": "Pune",
        "utm_campaign": "spring-sale-2026",
        "message": "Please call after six; we need twelve seats and a demo before Friday.",
    }
).encode()
FORM_FIELDS = json.loads(FORM)
FORM_RAW = {
    "method": "POST",
    "route": "leads",
    "headers": {},
    "query": {},
    "body_b64": base64.b64encode(FORM).decode(),
}
FORM_CONTACT = {
    "name": "Asha Rao",
    "phoneNumber": "+919876543210",
    "metadata": {k: v for k, v in FORM_FIELDS.items() if k not in ("full_name", "phone")},
}


def form_delivery() -> Delivery:
    event = Event(
        route="leads",
        source="generic",
        event_id="e" * 64,
        received_at="2026-01-01T10:00:00.000Z",
        fields=FORM_FIELDS,
    )
    d = Delivery(
        id="dlv_18c0ffee0123456789ab",
        route="leads",
        source="generic",
        status="queued",
        event=event,
        received_at=event.received_at,
        contact=FORM_CONTACT,
        raw_id="r0123456789abcdef",
    )
    d.pack_against(FORM)
    return d


def stored_form(store: DeliveryStore, job_seq: int = 0) -> Delivery:
    """``form_delivery()`` stored with its raw request, as ingest stores a lead."""
    d = form_delivery()
    if job_seq:
        d.job_seq, d.job_id = job_seq, f"{d.id}-{job_seq}"
    pipe = store.redis.pipeline()
    store.add_raw(pipe, d.raw_id, FORM_RAW)
    store.add(pipe, d)
    pipe.execute()
    return d


def test_what_the_body_already_says_is_stored_in_a_few_bytes():
    d = form_delivery()
    stored = d.to_hash()
    plain = len(json.dumps(FORM_CONTACT)) + len(json.dumps(FORM_FIELDS))
    packed = len(stored["contact"]) + len(stored["event"])
    assert packed * 8 < plain
    # Redis keeps a hash in its compact encoding while every value is at most 64 bytes.
    assert max(len(v) for v in stored.values()) <= 64
    back = Delivery.from_hash(as_redis(stored), d.id, FORM)
    assert back == d and back.contact == FORM_CONTACT and back.event.fields == FORM_FIELDS


@pytest.mark.parametrize("filler", [0, 1_500, 30_000, 70_000])
def test_values_far_back_in_a_long_body_are_packed_as_small_as_deflate_s_largest_window_makes_it(
    filler,
):
    """The deflater is sized to the body and the value; one that reached back less far than
    the body is long would store the lead's fields at the body's start again."""
    from bridge.record import DEFLATE_LEVEL, _plain, dump_raw, load_raw, pack, unpack

    words = " ".join(hashlib.sha256(str(n).encode()).hexdigest()[:9] for n in range(filler // 10))
    body = FORM + words.encode()
    for value in (FORM_CONTACT, FORM_FIELDS):
        plain = _plain(value)
        largest = zlib.compressobj(
            DEFLATE_LEVEL, zlib.DEFLATED, -15, 9, zlib.Z_DEFAULT_STRATEGY, body
        )
        assert pack(plain, body) == b"\x00" + largest.compress(plain.encode()) + largest.flush()
        assert unpack(pack(plain, body), body) == value
    raw = {**FORM_RAW, "body_b64": base64.b64encode(body).decode()}
    largest = zlib.compressobj(DEFLATE_LEVEL, zlib.DEFLATED, -15, 9)
    head = b'{"route":"leads","headers":{}}\n'
    assert dump_raw(raw) == b"\x03" + largest.compress(head + body) + largest.flush()
    assert load_raw(dump_raw(raw)) == {**raw, "query": {}}


def test_a_changed_contact_is_packed_again_and_an_unchanged_one_is_not(redis):
    d = form_delivery()
    first = d.to_hash()
    back = Delivery.from_hash(as_redis(first), d.id, FORM)
    assert back.to_hash()["contact"] == first["contact"]  # the same bytes, not deflated again
    back.contact = {**FORM_CONTACT, "name": "Asha R."}
    changed = back.to_hash()["contact"]
    assert changed != first["contact"]
    assert Delivery.from_hash(as_redis(back.to_hash()), d.id, FORM).contact["name"] == "Asha R."
    # Data the body does not hold (a fetched lead's) reads back as well, however it is kept.
    back.contact = {"name": "Zed", "phoneNumber": "+15550001111", "metadata": {"q": "ü" * 3}}
    again = Delivery.from_hash(as_redis(back.to_hash()), d.id, FORM)
    assert again.contact == back.contact


def test_a_record_whose_raw_request_is_gone_still_reads_without_the_lead_s_data(redis):
    store = DeliveryStore(redis)
    d = stored_form(store)
    assert store.get(d.id).contact == FORM_CONTACT
    redis.delete(keys.raw(d.raw_id))
    gone = store.get(d.id)
    assert (gone.status, gone.event.event_id, gone.contact) == ("queued", "e" * 64, None)
    assert "gone" in gone.unreadable
    assert gone.summary()["deliveryId"] == d.id


def test_a_terminal_record_s_raw_request_lives_at_least_as_long_as_the_record(redis):
    store = DeliveryStore(redis, keep_delivered_days=1, keep_failed_days=30)
    d = stored_form(store)
    redis.expire(keys.raw(d.raw_id), 60)  # as if received long ago
    d.status, d.reason_code, d.reason = "failed", "invalid", "refused"
    store.update(d, "failed", "refused")
    assert redis.ttl(keys.raw(d.raw_id)) >= redis.ttl(keys.delivery(d.id)) > 29 * 86400
    d.status = "queued"
    store.update(d, "replayed")  # alive again: neither expires
    assert redis.ttl(keys.delivery(d.id)) == -1 and redis.ttl(keys.raw(d.raw_id)) == -1


def test_the_raw_request_is_stored_deflated_and_earlier_json_ones_still_read():
    from bridge.record import dump_raw, load_raw

    raw = {
        "method": "POST",
        "route": "leads",
        "headers": {"content-type": "application/json"},
        "query": {},
        "body_b64": base64.b64encode(FORM).decode(),
    }
    stored = dump_raw(raw)
    assert len(stored) < len(json.dumps(raw)) * 0.6  # what earlier versions stored
    big = {**raw, "body_b64": base64.b64encode(FORM * 5).decode()}
    assert len(dump_raw(big)) < len(FORM * 5) / 2  # a body that repeats itself deflates
    assert load_raw(stored) == raw
    put = {**raw, "method": "PUT", "query": {"src": "form"}}
    assert load_raw(dump_raw(put)) == put
    assert load_raw(json.dumps(raw).encode()) == raw  # as earlier versions stored it
    head = b'{"route":"leads","headers":{"content-type":"application/json"}}\n'
    assert load_raw(b"\x01" + zlib.compress(head + FORM)) == raw  # ... and the next ones
    other = {**raw, "headers": {"content-type": "text/plain"}}
    assert load_raw(dump_raw(other)) == other
    load_raw(stored)["headers"]["x-mine"] = "changed"  # what one caller does with its copy
    assert load_raw(stored) == raw


def test_history_entries_are_fields_of_the_record_and_earlier_lists_still_read(redis):
    from bridge.deliveries import entry_from_field, history_field
    from bridge.record import history_order

    # Named by the time since the delivery was received (its id says when): a few bytes.
    received = "dlv_" + format(1767261600000, "x") + "aabbccddeeff"
    behind = history_field(1767261599877, received)  # a clock behind the receiver's
    assert entry_from_field(behind.encode(), b"queued", received)["at"].endswith("59.877Z")
    name = history_field(1767261600123, received)
    assert name.startswith("~") and len(name) == 5
    assert entry_from_field(name.encode(), b"delivered contact ct_1", received) == {
        "at": "2026-01-01T10:00:00.123Z",
        "what": "delivered",
        "detail": "contact ct_1",
    }
    # Days later, and the epoch-ms names earlier versions wrote.
    for at in (1767261600000 + 9 * 86400_000, 1767261600123):
        name = history_field(at, received if at != 1767261600123 else "")
        assert entry_from_field(name.encode(), b"received", received)["at"] == (
            datetime.fromtimestamp(at / 1000, UTC).isoformat(timespec="milliseconds")[:-6] + "Z"
        )
    assert len(history_field(1767261600123)) == 13
    # In one millisecond, entries still sort in the order they were written.
    # (More than a millisecond's digits: the next millisecond is lent.)
    names = [history_field(1767261600123, received) for _ in range(3000)]
    assert len(set(names)) == 3000
    assert sorted(reversed(names), key=history_order(received)) == names
    store = DeliveryStore(redis)
    d = stored_form(store, job_seq=1)
    assert not redis.exists(keys.history(d.id))  # no key of its own
    store.update(d, "attempt", "attempt 1")
    assert [e["what"] for e in store.history(d.id)] == ["received", "attempt"]
    assert store.get(d.id) == d  # history fields are not record fields
    # A record an earlier version wrote keeps its list, read before the newer entries.
    earlier = json.dumps({"at": "2025-12-31T23:59:59.000Z", "what": "failed", "detail": "x y"})
    redis.rpush(keys.history(d.id), earlier)
    store.update(d, "replayed", "backfill lane")
    assert [e["what"] for e in store.history(d.id)] == ["failed", "received", "attempt", "replayed"]
    assert store.last_history(d.id)["detail"] == "backfill lane"


def test_a_queued_form_lead_is_kept_in_redis_s_compact_hash_encoding(redis):
    store = DeliveryStore(redis)
    d = form_delivery()
    pipe = redis.pipeline()
    store.add(pipe, d)
    pipe.execute()
    assert redis.object("encoding", keys.delivery(d.id)) in (b"ziplist", b"listpack")


def test_a_raw_request_too_small_to_deflate_is_kept_as_it_is():
    from bridge.record import dump_raw, load_raw

    raw = {"method": "POST", "route": "r", "headers": {}, "query": {}, "body_b64": "e30="}
    assert dump_raw(raw) == b'\x02{"route":"r","headers":{}}\n{}'
    assert load_raw(dump_raw(raw)) == raw


def test_a_webhook_s_only_lead_holds_its_request_in_its_own_compact_record(make_client):
    """No key of its own for the request: the record holds it in pieces short enough for the
    compact encoding. The admin page shows it, a remap replay reads it, and it goes when the
    record goes; a webhook with several leads shares one key among them (``raw_id``)."""
    client = make_client(
        routes=[{"name": "leads", "source": "zapier", "audience_name": "A"}],
        bridge={"admin_token": "adm1n-t0ken"},
    )
    body = {"name": "Asha", "phone": "+919876543210", "note": "call after six " * 40}
    r = client.post("/hooks/leads", json=body)
    assert r.status_code == 202, r.json
    d = client.store.get(r.json["deliveryId"])
    assert d.raw_id is None and list(client.redis.scan_iter(keys.raw("*"))) == []
    assert json.loads(base64.b64decode(client.store.raw(d)["body_b64"])) == body
    assert d.contact["phoneNumber"] == "+919876543210" and d.event.fields["note"] == body["note"]
    assert client.redis.object("encoding", keys.delivery(d.id)) in (b"ziplist", b"listpack")
    auth = {"Authorization": "Bearer adm1n-t0ken"}
    shown = client.get(f"/admin/deliveries/{d.id}", headers=auth).json
    assert json.loads(shown["raw"]["body"]) == body

    r = client.post("/hooks/leads", json=[{"phone": "+919876543211"}, {"phone": "+919876543212"}])
    one, two = (client.store.get(x["deliveryId"]) for x in r.json["deliveries"])
    assert one.raw_id and one.raw_id == two.raw_id and one.raw_inline is None
    assert client.store.raw(one) == client.store.raw(two)
    assert list(client.redis.scan_iter(keys.raw("*"))) == [keys.raw(one.raw_id).encode()]


@pytest.mark.parametrize(
    "event_id",
    [
        "9593f6d9c6666409f6768fdc351ac15262159c94ea23e040be5680b9c2a004d2",  # a body hash
        "9593F6D9C6666409F6768FDC351AC152",  # upper case: kept as text
        "abc",  # too short to be worth it
        "0123456789abcde",  # odd length
        "62515:1:9:123",
        "\x03not-hex",  # text that starts like the compact form
        "\x04x",
        "tok_ünï",
    ],
)
def test_an_event_id_reads_back_exactly_however_it_is_kept(event_id):
    d = replace(every_field(), event=replace(every_field().event, event_id=event_id))
    stored = d.to_hash()
    if len(event_id) == 64:
        assert len(stored["event_id"]) == 33  # its 32 bytes and a mark
    assert Delivery.from_hash(as_redis(stored), d.id).event.event_id == event_id


@pytest.mark.parametrize(
    "at", ["2026-12-01T16:30:13.841Z", "1970-01-01T00:00:00.000Z", "2026-12-01T16:30:13Z", "x"]
)
def test_a_time_reads_back_exactly_however_it_is_kept(at):
    d = replace(every_field(), received_at=at, updated_at=at)
    stored = d.to_hash()
    back = Delivery.from_hash(as_redis(stored), d.id)
    assert (back.received_at, back.updated_at) == (at, at)
    if at.endswith(".841Z"):
        assert stored["received_at"] == "1796142613841"


def test_a_request_too_long_for_the_record_keeps_a_key_of_its_own(make_client):
    client = make_client(routes=[{"name": "leads", "source": "generic", "audience_name": "A"}])
    words = " ".join(f"word{n}" for n in range(1500))  # deflates to well over 2,304 bytes
    body = {"name": "Asha", "phone": "+919876543210", "note": words}
    r = client.post("/hooks/leads", json=body)
    assert r.status_code == 202, r.json
    d = client.store.get(r.json["deliveryId"])
    assert d.raw_id and d.raw_inline is None
    assert json.loads(base64.b64decode(client.store.raw(d)["body_b64"])) == body
    assert d.event.fields["note"] == words


@pytest.mark.parametrize(
    "iso",
    [
        "1970-01-01T00:00:00.000Z",
        "2024-02-29T23:59:59.999Z",  # a leap day's last millisecond
        "2026-12-31T23:59:59.001Z",
        "2026-01-01T00:00:00.000Z",
        "2099-07-04T12:34:56.789Z",
    ],
)
def test_a_time_of_the_bridge_is_stored_as_its_epoch_milliseconds_and_read_back(iso):
    from bridge.record import dump_time, load_time

    at = datetime.fromisoformat(iso.replace("Z", "+00:00"))
    assert dump_time(iso) == str(round(at.timestamp() * 1000))
    assert load_time(dump_time(iso)) == iso


@pytest.mark.parametrize(
    "text",
    [
        "2026-13-01T00:00:00.000Z",  # no 13th month
        "2026-02-30T00:00:00.000Z",
        "2026-01-01T24:00:00.000Z",
        "2026-01-01T23:60:00.000Z",
        "2026-01-01T23:59:60.000Z",  # a leap second: not a time Python spells
        "1969-12-31T23:59:59.999Z",  # before 1970: epoch ms would be negative
        "2026-01-01T00:00:00Z",
        "2026-01-01T00:00:00.000+00:00",
        "yesterday",
    ],
)
def test_any_other_time_is_stored_as_it_is_spelled(text):
    from bridge.record import dump_time, load_time

    assert dump_time(text) == text
    assert load_time(dump_time(text)) == text
