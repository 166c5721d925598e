"""The web side over a real Redis: what a sender is answered, and what is stored before it."""

import base64
import json
import threading
import time

import pytest
from rq import Queue

from bridge.app import create_app
from bridge.storage import connect, free_port
from jobs.lanes import lane_kid, pending_key
from tests.bridge_fixtures import route_dict
from tests.test_commit import wait_for

LEAD = {"name": "Priya Sharma", "phone": "098765 43210", "city": "Mumbai"}


@pytest.fixture
def client(make_client):
    return make_client(routes=[route_dict(), route_dict(name="locked", token="s3cret-token")])


def lane_tickets(client) -> list[str]:
    """Every ticket waiting in a lane (``jobs.lanes``): one per queued delivery."""
    from jobs.lanes import Lanes

    return [
        t.decode()
        for kid, lane in Lanes(client.redis).lanes()
        for t in client.redis.zrange(pending_key(kid, lane), 0, -1)
    ]


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
    # its ticket waits in the live lane of its API key, and that lane's drain job is in RQ's
    # queue, carrying only the key's hash and the lane (never the key, nor the lead)
    kid = lane_kid(client.settings, client.settings.routes["leads"])
    assert d.lane == "live" and d.job_id == f"{delivery_id}-1"
    pending = client.redis.zrange(pending_key(kid, "live"), 0, -1)
    assert pending == [d.job_id.encode()]
    [job_id] = queued_job_ids(client)
    job = Queue(client.settings.queue_name, connection=client.redis).fetch_job(job_id)
    assert job.func_name == "jobs.batch.drain" and job.args == (kid, "live")
    assert client.settings.oliai.api_key not in repr(job.args)
    status = client.get(f"/deliveries/{delivery_id}").json
    assert status["status"] == "queued"
    assert [h["what"] for h in status["history"]] == ["received", "queued"]


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
    kid = lane_kid(client.settings, client.settings.routes["leads"])
    assert client.redis.zcard(pending_key(kid, "live")) == 1


def test_dedup_is_per_route(client):
    a = client.post("/hooks/leads", json=LEAD)
    b = client.post("/hooks/locked", json=LEAD, headers={"X-Bridge-Token": "s3cret-token"})
    assert a.status_code == 202 and b.status_code == 202


def test_dedup_expires_after_its_ttl(make_client):
    client = make_client(bridge={"dedup_ttl_seconds": 1})
    first = client.post("/hooks/leads", json=LEAD)
    [bucket] = client.redis.scan_iter("oliai-bridge:dedup:*")
    # the day's claims are kept until the last one's window ends: a second after the day
    assert 0 < client.redis.ttl(bucket) <= 24 * 3600 + 1
    assert client.post("/hooks/leads", json=LEAD).status_code == 200  # still a repeat
    # the claim lapses a second after it was made, while its day's bucket is still there
    deadline = time.monotonic() + 10  # a hang guard, not a timing check
    while (again := client.post("/hooks/leads", json=LEAD)).status_code == 200:
        assert again.json["deliveryId"] == first.json["deliveryId"]
        assert time.monotonic() < deadline, "the dedup claim never lapsed"
        time.sleep(0.05)
    assert client.redis.exists(bucket)
    assert again.status_code == 202, again.json
    assert again.json["deliveryId"] != first.json["deliveryId"]
    assert client.store.get(again.json["deliveryId"]).status == "queued"
    kid = lane_kid(client.settings, client.settings.routes["leads"])
    assert client.redis.zcard(pending_key(kid, "live")) == 2  # both wait in the live lane


def test_malformed_json_names_the_problem(client):
    r = client.post("/hooks/leads", data=b'{"name": "x", phone}', content_type="application/json")
    assert r.status_code == 400
    assert r.json["error"] == "malformed_body"
    assert "not valid JSON" in r.json["message"] and "line 1" in r.json["message"]


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
    dead = connect(f"redis://127.0.0.1:{free_port()}")  # as the app connects, to nothing
    client = create_app(settings, redis=dead).test_client()
    r = client.post("/hooks/leads", json=LEAD)
    assert r.status_code == 503
    assert r.headers["Retry-After"]
    assert r.json["error"] == "storage_unavailable"
    assert client.get("/readyz").status_code == 503
    assert client.get("/healthz").status_code == 200


def test_health_and_ready(client):
    assert client.get("/healthz").json == {"status": "ok"}
    assert client.get("/readyz").json == {"status": "ready", "redis": "ok"}


def test_unknown_delivery_is_404(client):
    r = client.get("/deliveries/dlv_nope")
    assert r.status_code == 404 and r.json["error"] == "unknown_delivery"


# --- skipped leads are stored too ----------------------------------------------------------------


def test_an_unmappable_lead_from_a_provider_is_stored_as_skipped(make_client):
    # WordPress plugins disable a hook after 4xx answers: the lead is kept instead, replayable.
    client = make_client(routes=[route_dict(name="wp", source="wordpress", token="wp-token-1")])
    entry = {"name": "Asha Rao", "email": "asha@example.in", "city": "Pune"}
    r = client.post("/hooks/wp", json=entry, headers={"X-Bridge-Token": "wp-token-1"})
    assert r.status_code == 202, r.json
    assert r.json["status"] == "skipped" and "phone" in r.json["reason"]
    delivery_id = r.json["deliveryId"]
    shown = client.get(f"/deliveries/{delivery_id}").json
    assert shown["status"] == "skipped" and shown["reasonCode"] == "unmappable"
    assert [h["what"] for h in shown["history"]] == ["received", "skipped"]
    assert client.store.failed_ids(reason="unmappable") == ([delivery_id], 1)
    assert client.store.failed_ids(route="wp") == ([delivery_id], 1)
    assert queued_job_ids(client) == []  # nothing to deliver until it is fixed and replayed
    d = client.store.get(delivery_id)
    assert d.event.fields == entry and d.contact is None
    raw = client.store.raw(d)
    assert json.loads(base64.b64decode(raw["body_b64"])) == entry  # kept for replay --remap
    again = client.post("/hooks/wp", json=entry, headers={"X-Bridge-Token": "wp-token-1"})
    assert again.status_code == 200 and again.json["deliveryId"] == delivery_id


def test_a_batch_stores_its_unmappable_leads_as_skipped_beside_the_queued(make_client):
    client = make_client(routes=[route_dict(name="zap", source="zapier")])
    r = client.post("/hooks/zap", json=[{"name": "A", "phone": "+919876543210"}, {"name": "B"}])
    assert r.status_code == 202, r.json
    queued, skipped = r.json["deliveries"]
    assert queued["status"] == "queued" and skipped["status"] == "skipped"
    assert "phone" in skipped["reason"]
    assert client.store.get(skipped["deliveryId"]).status == "skipped"
    assert client.store.failed_ids() == ([skipped["deliveryId"]], 1)
    assert lane_tickets(client) == [client.store.get(queued["deliveryId"]).job_id]


# --- at most 1000 leads per request --------------------------------------------------------------

BATCH_ROUTE = route_dict(name="batch", source="standard_webhooks", token="batch-token-1")


def batch_of(n: int) -> dict:
    leads = [{"name": f"Buyer {i}", "phone": f"+9198{i:08d}"} for i in range(n)]
    return {"type": "lead.created", "data": leads}


def post_batch(client, n: int):
    return client.post(
        "/hooks/batch", json=batch_of(n), headers={"X-Bridge-Token": "batch-token-1"}
    )


def test_a_request_of_1000_leads_is_accepted_whole(make_client):
    client = make_client(routes=[BATCH_ROUTE])
    r = post_batch(client, 1000)
    assert r.status_code == 202, r.json
    deliveries = r.json["deliveries"]
    assert len(deliveries) == 1000 and {d["status"] for d in deliveries} == {"queued"}
    assert len(lane_tickets(client)) == 1000 and len(queued_job_ids(client)) == 1  # one drain
    last = client.store.get(deliveries[-1]["deliveryId"])
    assert last.contact["phoneNumber"] == "+919800000999"


def test_a_request_of_1001_leads_is_400_naming_the_count_and_stores_nothing(make_client):
    client = make_client(routes=[BATCH_ROUTE])
    r = post_batch(client, 1001)
    assert r.status_code == 400, r.json
    assert r.json["error"] == "malformed_body"
    assert "1001 leads" in r.json["message"] and "at most 1000" in r.json["message"]
    assert queued_job_ids(client) == []
    assert client.store.counts() == {"active": 0, "failed": 0, "received": 0}
    assert list(client.redis.scan_iter("oliai-bridge:dedup:*")) == []


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
    assert len(lane_tickets(client)) == 2


def test_requests_stored_in_one_call_write_what_they_share_once_and_count_each_lead(client):
    """A busy bridge stores the requests that arrive together in one call (``bridge.commit``):
    the lane's set, the route's time of last receipt, the counters and their hour's time to
    live are written once for all of them, and the counters still count every lead stored
    (not the duplicate)."""
    from bridge import keys, metrics
    from bridge.event import InboundRequest
    from bridge.ingest import Ingest, Received, delivery_for
    from bridge.pipeline import map_request
    from bridge.sources import get_source
    from tests.redis_commands import CommandCount

    earlier = client.post("/hooks/leads", json=LEAD, headers={"Idempotency-Key": "k1"})
    before = metrics.read_counters(client.redis)
    route, source = client.settings.routes["leads"], get_source("generic")

    def received(body: dict, key: str) -> Received:
        headers = {"content-type": "application/json", "idempotency-key": key}
        req = InboundRequest("POST", "leads", json.dumps(body).encode(), headers)
        [result] = map_request(req, route, source, "2026-01-01T00:00:00.000Z")
        return Received(req, source.kept_headers, [delivery_for(result, 0, 1, route, source)])

    batch = [received(LEAD, "k1")]
    batch += [received({"name": f"Lead {n}", "phone": f"98765{n:05d}"}, f"n{n}") for n in range(4)]
    ingest = Ingest(
        client.settings, client.redis, Queue(client.settings.queue_name, connection=client.redis)
    )
    with CommandCount(client.redis) as seen:
        accepted = ingest.store_leads(batch)

    assert [a.status for a in accepted] == ["duplicate"] + ["queued"] * 4
    assert accepted[0].delivery_id == earlier.json["deliveryId"]
    after = metrics.read_counters(client.redis)
    assert after["queued|leads"] - before["queued|leads"] == 4  # the four stored, not five
    hour = keys.stats_hour(int(time.time() // 3600))
    assert 0 < client.redis.ttl(hour) and client.redis.hget(hour, "queued|leads") == b"5"
    assert float(client.redis.hget(keys.route_state("leads"), "last_received")) > time.time() - 60
    for a in accepted[1:]:
        stored = client.store.get(a.delivery_id)
        assert [e["what"] for e in client.store.history(a.delivery_id)] == ["received", "queued"]
        assert stored.status == "queued" and stored.contact["phoneNumber"].startswith("+919876")
    assert len(lane_tickets(client)) == 5
    # once for the call, not once per lead: the lane's SADD, the route's HSET, the two HINCRBYs
    # and the hour's EXPIRE (and the same two and one for the duplicate, counted after the call)
    assert (seen.calls["sadd"], seen.calls["hincrby"], seen.calls["expire"]) == (1, 2 + 2, 1 + 1)
    # a lead's record with its history entries in one HSET; each claim's HSET; the route's
    assert seen.calls["hset"] == 4 + 4 + 1, seen.calls


def test_webhooks_waiting_for_a_call_go_together_in_the_next_each_answered_for_its_own(client):
    """While one webhook's call is in Redis, the webhooks that arrive wait for it, each having
    recorded what it writes, and then go together in one call: each is answered for its own
    lead, a lead sent again among them is a duplicate of its first copy, and every lead stored
    is counted, ticketed and has its history."""
    from bridge import metrics
    from bridge.admission import ADMIT
    from bridge.event import InboundRequest
    from bridge.ingest import Ingest
    from tests.redis_commands import CommandCount

    ingest = Ingest(
        client.settings, client.redis, Queue(client.settings.queue_name, connection=client.redis)
    )
    client.redis.script_load(ADMIT)  # as a running bridge has it: one EVALSHA a call
    before = metrics.read_counters(client.redis)

    def webhook(body: dict, key: str) -> InboundRequest:
        headers = {"content-type": "application/json", "idempotency-key": key}
        return InboundRequest("POST", "leads", json.dumps(body).encode(), headers)

    later = [webhook({"name": f"Lead {n}", "phone": f"98765{n:05d}"}, f"n{n}") for n in range(3)]
    later.append(webhook({"name": "Lead 1, again", "phone": "9876500001"}, "n1"))
    replies: dict[int, object] = {}

    def send(n: int, req: InboundRequest) -> None:
        replies[n] = ingest.handle(req)

    with CommandCount(client.redis) as seen:
        # Redis holds every script until told: the first webhook's call waits there
        client.redis.execute_command("CLIENT", "PAUSE", 20_000, "WRITE")
        try:
            threads = [threading.Thread(target=send, args=(0, webhook(LEAD, "first")))]
            threads[0].start()
            wait_for(lambda: ingest.commit._busy)
            threads += [
                threading.Thread(target=send, args=(n, req)) for n, req in enumerate(later, start=1)
            ]
            for thread in threads[1:]:
                thread.start()
            wait_for(lambda: len(ingest.commit._line) == len(later))  # all wait for the first
        finally:
            client.redis.execute_command("CLIENT", "UNPAUSE")
        for thread in threads:
            thread.join(10)

    answers = {n: (reply.status, json.loads(reply.body_bytes())) for n, reply in replies.items()}
    # the lead sent twice (2 and 4): whichever copy got in line first is stored
    [(stored_copy, (_, body))] = [(n, answers[n]) for n in (2, 4) if answers[n][0] == 202]
    [repeat] = {2, 4} - {stored_copy}
    assert answers[repeat] == (
        200,
        {"deliveryId": body["deliveryId"], "status": "duplicate", "duplicate": True},
    )
    assert [answers[n][0] for n in (0, 1, 3)] == [202, 202, 202], answers
    ids = [answers[n][1]["deliveryId"] for n in (0, 1, stored_copy, 3)]
    assert len(set(ids)) == 4
    assert seen.calls["evalsha"] == 2  # the first alone, then the four together
    after = metrics.read_counters(client.redis)
    assert after["queued|leads"] - before.get("queued|leads", 0) == 4
    assert after["duplicate|leads"] - before.get("duplicate|leads", 0) == 1
    assert len(lane_tickets(client)) == 4
    names = {LEAD["name"], "Lead 0", "Lead 1", "Lead 2", "Lead 1, again"}
    for delivery_id in ids:
        stored = client.store.get(delivery_id)
        assert [e["what"] for e in client.store.history(delivery_id)] == ["received", "queued"]
        assert stored.status == "queued" and stored.event.fields["name"] in names
    assert len({client.store.get(i).event.fields["name"] for i in ids}) == 4
