"""The web side over a real Redis: what a sender is answered, and what is stored before it."""

import json

import pytest
from redis import Redis
from rq import Queue

from bridge.app import create_app
from bridge.storage import free_port
from tests.bridge_fixtures import route_dict

LEAD = {"name": "Priya Sharma", "phone": "098765 43210", "city": "Mumbai"}


@pytest.fixture
def client(make_client):
    return make_client(routes=[route_dict(), route_dict(name="locked", token="s3cret-token")])


def queued_job_ids(client):
    return Queue(client.settings.queue_name, connection=client.redis).get_job_ids()


def test_accepted_lead_is_stored_and_queued_before_the_202(client):
    r = client.post("/hooks/leads", json=LEAD)
    assert r.status_code == 202
    assert r.json["status"] == "queued"
    delivery_id = r.json["deliveryId"]
    d = client.store.get(delivery_id)
    assert d.status == "queued"
    assert d.contact == {
        "name": "Priya Sharma",
        "phoneNumber": "+919876543210",
        "metadata": {"city": "Mumbai"},
    }
    # the job is in RQ's queue and carries only the delivery id
    assert queued_job_ids(client) == [d.job_id]
    job = Queue(client.settings.queue_name, connection=client.redis).fetch_job(d.job_id)
    assert job.args == (delivery_id,)
    status = client.get(f"/deliveries/{delivery_id}").json
    assert status["status"] == "queued"
    assert [h["what"] for h in status["history"]] == ["received", "queued"]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"data": {"first_name": "Ravi", "last_name": "Kumar", "mobile": "+91-98765-43210"}},
        {
            "data": {"first_name": "Ravi", "last_name": "Kumar", "mobile": "+91-98765-43210"},
            "content_type": "multipart/form-data",
        },
        {
            "data": json.dumps(
                [{"first_name": "Ravi", "last_name": "Kumar", "mobile": "+91-98765-43210"}]
            ),
            "content_type": "application/json",
        },
    ],
    ids=["form-urlencoded", "multipart", "one-element-array"],
)
def test_forms_multipart_and_arrays(client, kwargs):
    r = client.post("/hooks/leads", **kwargs)
    assert r.status_code == 202, r.json
    contact = client.store.get(r.json["deliveryId"]).contact
    assert contact["name"] == "Ravi Kumar"
    assert contact["phoneNumber"] == "+919876543210"


def test_repeat_by_body_is_a_duplicate_and_makes_no_job(client):
    first = client.post("/hooks/leads", json=LEAD)
    again = client.post("/hooks/leads", json=LEAD)
    assert again.status_code == 200
    assert again.json == {
        "deliveryId": first.json["deliveryId"],
        "status": "duplicate",
        "duplicate": True,
    }
    assert len(queued_job_ids(client)) == 1


def test_idempotency_key_decides_repeats(client):
    a = client.post("/hooks/leads", json=LEAD, headers={"Idempotency-Key": "k1"})
    b = client.post(
        "/hooks/leads", json={**LEAD, "city": "Pune"}, headers={"Idempotency-Key": "k1"}
    )
    c = client.post("/hooks/leads", json=LEAD, headers={"Idempotency-Key": "k2"})
    assert b.status_code == 200 and b.json["deliveryId"] == a.json["deliveryId"]
    assert c.status_code == 202 and c.json["deliveryId"] != a.json["deliveryId"]


def test_dedup_is_per_route(client):
    a = client.post("/hooks/leads", json=LEAD)
    b = client.post("/hooks/locked", json=LEAD, headers={"X-Bridge-Token": "s3cret-token"})
    assert a.status_code == 202 and b.status_code == 202


def test_dedup_expires_after_its_ttl(make_client):
    client = make_client(bridge={"dedup_ttl_seconds": 1})
    client.post("/hooks/leads", json=LEAD)
    key = next(iter(client.redis.scan_iter("oliai-bridge:dedup:*")))
    assert 0 < client.redis.ttl(key) <= 1


def test_token_in_header_or_query(client):
    assert client.post("/hooks/locked", json=LEAD).status_code == 401
    wrong = client.post("/hooks/locked", json=LEAD, headers={"X-Bridge-Token": "nope"})
    assert wrong.status_code == 401
    assert wrong.json == {
        "error": "unauthorized",
        "message": "token does not match this route's token",
    }
    assert "s3cret-token" not in wrong.get_data(as_text=True)
    ok = client.post("/hooks/locked?token=s3cret-token", json=LEAD)
    assert ok.status_code == 202
    # the stored raw request keeps no token
    raw = client.store.raw(client.store.get(ok.json["deliveryId"]))
    assert "token" not in raw["query"]
    assert "s3cret-token" not in json.dumps(raw)


def test_malformed_json_names_the_problem(client):
    r = client.post("/hooks/leads", data=b'{"name": "x", phone}', content_type="application/json")
    assert r.status_code == 400
    assert r.json["error"] == "malformed_body"
    assert "not valid JSON" in r.json["message"] and "line 1" in r.json["message"]


@pytest.mark.parametrize(
    "body, message",
    [
        (b"[1, 2]", "exactly one lead"),
        (b'"text"', "expected a JSON object"),
        (b"", "empty"),
        (b"\xff\xfe{}", "UTF-8"),
    ],
)
def test_bodies_that_are_not_one_lead(client, body, message):
    r = client.post("/hooks/leads", data=body, content_type="application/json")
    assert r.status_code == 400
    assert message in r.json["message"]


def test_unknown_route_and_unknown_path(client):
    r = client.post("/hooks/nope", json=LEAD)
    assert r.status_code == 404
    assert r.json == {"error": "unknown_route", "message": "no route named 'nope' is configured"}
    r = client.get("/nothing/here")
    assert r.status_code == 404 and r.json["error"] == "not_found"


def test_get_on_a_hook_without_handshake_is_405(client):
    r = client.get("/hooks/leads")
    assert r.status_code == 405
    assert r.json["error"] == "method_not_allowed"


def test_oversize_body_is_413(make_client):
    client = make_client(bridge={"max_body_bytes": 2048})
    r = client.post("/hooks/leads", json={**LEAD, "notes": "x" * 4000})
    assert r.status_code == 413
    assert r.json == {"error": "body_too_large", "message": "the body is larger than 2048 bytes"}
    assert queued_job_ids(client) == []


def test_unmappable_is_422_naming_the_field_and_stores_nothing(client):
    r = client.post("/hooks/leads", json={"name": "Priya", "city": "Mumbai"})
    assert r.status_code == 422
    assert r.json["error"] == "unmappable"
    assert r.json["field"] == "phoneNumber"
    assert queued_job_ids(client) == []
    r = client.post("/hooks/leads", json={"name": "Priya", "phone": "12345"})
    assert r.status_code == 422
    assert "'12345' is not a valid phone number" in r.json["message"]


def test_unsupported_media_type(client):
    r = client.post("/hooks/leads", data=b"\x00\x01binary", content_type="image/png")
    assert r.status_code == 415
    assert r.json["error"] == "unsupported_media_type"


def test_redis_down_is_503_with_retry_after_never_2xx(make_settings):
    settings = make_settings()
    dead = Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=0.2)
    client = create_app(settings, redis=dead).test_client()
    r = client.post("/hooks/leads", json=LEAD)
    assert r.status_code == 503
    assert r.headers["Retry-After"]
    assert r.json["error"] == "storage_unavailable"
    assert client.get("/readyz").status_code == 503
    assert client.get("/healthz").status_code == 200


def test_health_ready_and_metrics(client):
    assert client.get("/healthz").json == {"status": "ok"}
    assert client.get("/readyz").json == {"status": "ready", "redis": "ok"}
    client.post("/hooks/leads", json=LEAD)
    client.post("/hooks/leads", json=LEAD)
    client.post("/hooks/locked", json=LEAD)
    text = client.get("/metrics").get_data(as_text=True)
    assert 'oliai_bridge_queued_total{route="leads"} 1.0' in text
    assert 'oliai_bridge_duplicate_total{route="leads"} 1.0' in text
    assert 'oliai_bridge_rejected_total{reason="missing_token",route="locked"} 1.0' in text
    assert 'oliai_bridge_queue_depth{state="queued"} 1.0' in text


def test_unknown_delivery_is_404(client):
    r = client.get("/deliveries/dlv_nope")
    assert r.status_code == 404 and r.json["error"] == "unknown_delivery"


def test_a_batch_stores_one_delivery_per_dedup_key(client):
    """``Ingest.store_leads`` (the path a webhook and ``oliai-bridge import`` share): a lead
    seen before and a lead repeated within the batch are duplicates of their first copy."""
    from bridge.event import InboundRequest
    from bridge.ingest import Ingest, Received, delivery_for
    from bridge.pipeline import map_request
    from bridge.sources import get_source

    earlier = client.post("/hooks/leads", json=LEAD, headers={"Idempotency-Key": "k1"})
    route, source = client.settings.routes["leads"], get_source("generic")

    def received(body: dict, key: str | None = None) -> Received:
        headers = {"content-type": "application/json"} | ({"idempotency-key": key} if key else {})
        req = InboundRequest("POST", "leads", json.dumps(body).encode(), headers)
        [result] = map_request(req, route, source, "2026-01-01T00:00:00.000Z")
        return Received(req, source.kept_headers, [delivery_for(result, 0, 1, route, source)])

    other = {"name": "Asha", "phone": "9876543211"}
    batch = [received(LEAD, key="k1"), received(other), received(other)]
    ingest = Ingest(
        client.settings, client.redis, Queue(client.settings.queue_name, connection=client.redis)
    )
    accepted = ingest.store_leads(batch)
    assert [a.status for a in accepted] == ["duplicate", "queued", "duplicate"]
    assert accepted[0].delivery_id == earlier.json["deliveryId"]
    assert accepted[2].delivery_id == accepted[1].delivery_id == batch[1].deliveries[0].id
    assert not client.store.exists(batch[2].deliveries[0].id)
    assert len(queued_job_ids(client)) == 2
