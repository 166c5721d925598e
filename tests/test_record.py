"""The delivery record as a Redis hash: every field goes in and comes back, an unset optional
field leaves the hash, and hashes written by earlier versions still read (users' Redis holds
them)."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, fields

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


def test_every_field_round_trips_through_the_hash():
    d = every_field()
    stored = d.to_hash()
    assert set(stored) == set(EVERY_FIELD)
    assert all(isinstance(v, str) for v in stored.values())
    back = Delivery.from_hash({k.encode(): v.encode() for k, v in stored.items()})
    assert back == d
    for name in EVERY_FIELD:
        assert getattr(back, name) == EVERY_FIELD[name], name


def test_false_zero_and_empty_values_come_back_as_themselves():
    d = every_field()
    d.audience_added, d.attempts, d.failures, d.lead_index, d.job_seq = False, 0, 0, 0, 0
    d.contact, d.last_api, d.reason, d.failed_index = {}, {}, "", ""
    back = Delivery.from_hash({k.encode(): v.encode() for k, v in d.to_hash().items()})
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


@pytest.mark.parametrize("name", OPTIONAL_FIELDS)
def test_an_optional_field_set_to_none_leaves_the_hash(name):
    d = every_field()
    setattr(d, name, None)
    stored = d.to_hash()
    assert name not in stored
    back = Delivery.from_hash({k.encode(): v.encode() for k, v in stored.items()})
    assert getattr(back, name) is None
    assert back == d


@pytest.mark.parametrize("name", [n for n in OPTIONAL_FIELDS if n != "failed_index"])
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


def test_a_hash_written_by_earlier_versions_reads_and_is_written_back_field_for_field(redis):
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
    # every field written back as it was; the one field added since says so explicitly
    assert d.to_hash() == {**earlier, "lane": "live"}


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
    assert d.to_hash()["updated_at"] == "2026-01-01T10:00:00.000Z"


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
