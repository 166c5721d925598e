"""The delivery job against the sandbox over HTTP, with a real RQ worker and real Redis (and a
local stand-in for a provider's API where the job fetches the lead first)."""

import time
from dataclasses import replace
from datetime import UTC

import pytest
from rq import Queue

from bridge import defaults
from bridge.app import create_app
from bridge.config import build_settings
from bridge.deliveries import DeliveryStore
from jobs.ratelimit import RateLimiter
from jobs.replay import Replayer
from tests.bridge_fixtures import route_dict

LEAD = {"name": "Priya Sharma", "phone": "098765 43210", "city": "Mumbai"}


def post(client, body, route="leads", **kw):
    r = client.post(f"/hooks/{route}", json=body, **kw)
    assert r.status_code == 202, r.json
    return r.json["deliveryId"]


def contacts(sandbox, key=None):
    return sandbox.org_state(key)["contacts"]


def audiences(sandbox, key=None):
    return sandbox.org_state(key)["audiences"]


def history(client, delivery_id):
    return [h["what"] for h in client.store.history(delivery_id)]


def scheduled_at(client, delivery_id) -> float:
    d = client.store.get(delivery_id)
    queue = Queue(client.settings.queue_name, connection=client.redis)
    when = queue.scheduled_job_registry.get_scheduled_time(d.job_id)
    return when.replace(tzinfo=UTC).timestamp() if when.tzinfo is None else when.timestamp()


def test_lead_becomes_one_contact_in_its_audience(make_client, run_jobs, sandbox):
    client = make_client()
    delivery_id = post(client, LEAD)
    run_jobs(client.settings)
    d = client.store.get(delivery_id)
    assert d.status == "delivered"
    [contact] = contacts(sandbox)
    assert contact["phoneNumber"] == "+919876543210"
    assert contact["name"] == "Priya Sharma"
    assert contact["metadata"] == {"city": "Mumbai"}
    [audience] = audiences(sandbox)
    assert audience["name"] == "Test leads"
    assert audience["contactIds"] == [contact["id"]]
    assert d.contact_id == contact["id"] and d.audience_id == audience["id"]
    assert history(client, delivery_id)[-3:] == ["contact_created", "audience_added", "delivered"]


def test_audience_by_name_is_created_once_for_many_leads(make_client, run_jobs, sandbox):
    client = make_client()
    ids = [post(client, {"name": f"Lead {i}", "phone": f"98765432{i:02d}"}) for i in range(6)]
    run_jobs(client.settings)
    assert {client.store.get(i).status for i in ids} == {"delivered"}
    [audience] = audiences(sandbox)
    assert audience["contactCount"] == 6


def test_existing_audience_by_name_is_reused(make_client, run_jobs, sandbox):
    existing = sandbox.client().create_audience("Test leads")
    client = make_client()
    post(client, LEAD)
    run_jobs(client.settings)
    [audience] = audiences(sandbox)
    assert audience["id"] == existing["id"] and audience["contactCount"] == 1


def test_409_update_patches_and_merges_metadata(make_client, run_jobs, sandbox):
    sandbox.client().create_contact("Old Name", "+919876543210", metadata={"tier": "gold"})
    client = make_client()
    delivery_id = post(client, LEAD)
    run_jobs(client.settings)
    [contact] = contacts(sandbox)
    assert contact["name"] == "Priya Sharma"
    assert contact["metadata"] == {"tier": "gold", "city": "Mumbai"}
    assert "contact_updated" in history(client, delivery_id)
    assert client.store.get(delivery_id).status == "delivered"


def test_409_skip_leaves_the_contact_but_adds_it_to_the_audience(make_client, run_jobs, sandbox):
    old = sandbox.client().create_contact("Old Name", "+919876543210")
    client = make_client(routes=[route_dict(on_duplicate="skip")])
    delivery_id = post(client, LEAD)
    run_jobs(client.settings)
    [contact] = contacts(sandbox)
    assert contact["name"] == "Old Name" and contact["metadata"] == {}
    assert "contact_exists" in history(client, delivery_id)
    [audience] = audiences(sandbox)
    assert audience["contactCount"] == 1
    assert client.store.get(delivery_id).contact_id == old["id"]


def test_429_reschedules_at_retry_after_and_pauses_the_key(make_client, run_jobs, sandbox):
    # The API allows fewer calls than our limiter believes: the API's 429 must take over.
    sandbox.configure(general_limit=4)
    client = make_client()
    ids = [post(client, {"name": f"L{i}", "phone": f"98765432{i:02d}"}) for i in range(4)]
    started = time.time()
    run_jobs(client.settings)
    statuses = {i: client.store.get(i).status for i in ids}
    waiting = [i for i, s in statuses.items() if s == "retrying"]
    assert waiting, statuses
    log = sandbox.requests(since=started)
    first_429 = min(e["ts"] for e in log if e["status"] == 429)
    limiter = RateLimiter(client.redis, sandbox.keys[0])
    pause = limiter.paused_for()
    assert pause > 0
    pause_end = time.time() + pause
    for delivery_id in waiting:
        assert "rate_limited" in history(client, delivery_id)
        # rescheduled no earlier than the pause, never slept through in the worker
        assert scheduled_at(client, delivery_id) >= pause_end - 0.1
    # nothing was sent for this key after the 429 (all other jobs saw the pause)
    assert [e for e in log if e["ts"] > first_429] == []
    # once the pause is over the scheduled jobs deliver
    time.sleep(pause + 0.6)
    for _ in range(10):
        run_jobs(client.settings, promote_scheduled=True)
        if all(client.store.get(i).status == "delivered" for i in ids):
            break
        time.sleep(1.0)
    assert {client.store.get(i).status for i in ids} == {"delivered"}
    assert len(contacts(sandbox)) == 4
    after = [e for e in sandbox.requests(since=started) if e["ts"] > first_429]
    assert min(e["ts"] for e in after) >= first_429 + 1.0  # Retry-After is at least 1 s


def test_5xx_is_retried_with_backoff_then_delivered(make_client, run_jobs, sandbox):
    sandbox.configure(fail_rate=1.0)
    client = make_client()
    delivery_id = post(client, LEAD)
    run_jobs(client.settings)
    d = client.store.get(delivery_id)
    assert d.status == "retrying" and d.failures == 1
    assert d.last_api["status"] == 500
    failed_at = max(e["ts"] for e in sandbox.requests() if e["status"] == 500)
    assert scheduled_at(client, delivery_id) >= failed_at + 0.75 * 0.2  # backoff, not at once
    assert contacts(sandbox) == []
    sandbox.configure(fail_rate=0.0)
    run_jobs(client.settings, promote_scheduled=True)
    assert client.store.get(delivery_id).status == "delivered"
    assert len(contacts(sandbox)) == 1


def test_retries_are_bounded_then_failed_with_the_reason(make_client, run_jobs, sandbox):
    sandbox.configure(fail_rate=1.0)
    client = make_client(delivery={"max_attempts": 3})
    delivery_id = post(client, LEAD)
    for _ in range(3):
        run_jobs(client.settings, promote_scheduled=True)
    d = client.store.get(delivery_id)
    assert d.status == "failed"
    assert d.reason_code == "retries_exhausted"
    assert "gave up after 3 failed attempts" in d.reason and "500" in d.reason
    ids, total = client.store.failed_ids()
    assert ids == [delivery_id] and total == 1


def test_backoff_grows_exponentially_with_jitter():
    from jobs.deliver import backoff

    for n, base in ((1, 30), (2, 60), (3, 120), (4, 240)):
        assert 0.75 * base <= backoff(n, 30, 1200) <= 1.25 * base
    assert backoff(20, 30, 1200) <= 1.25 * 1200


def test_default_backoff_stays_within_its_jitter_and_varies():
    from jobs.deliver import backoff

    base, cap = defaults.RETRY_BASE_SECONDS, defaults.RETRY_MAX_SECONDS
    for failures in range(1, defaults.MAX_ATTEMPTS):
        wait = min(cap, base * 2 ** (failures - 1))
        drawn = [backoff(failures, base, cap) for _ in range(200)]
        assert all(0.75 * wait <= x <= 1.25 * wait for x in drawn), failures
        assert min(drawn) < 0.9 * wait and max(drawn) > 1.1 * wait  # jitter, not a fixed wait


def test_the_default_schedule_is_8_attempts_with_growing_waits(
    redis, redis_server, run_jobs, sandbox
):
    settings = build_settings(
        {
            "oliai": {"base_url": sandbox.base_url, "api_key": sandbox.keys[0]},
            "routes": [route_dict()],
        },
        env={"REDIS_URL": redis_server.url},
    )
    assert settings.delivery.max_attempts == 8
    client = create_app(settings, redis=redis).test_client()
    client.settings, client.redis, client.store = (
        settings,
        redis,
        DeliveryStore(redis),
    )  # as make_client
    sandbox.configure(fail_rate=1.0)
    delivery_id = post(client, LEAD)
    waits = []
    for attempt in range(1, 9):
        run_jobs(settings, promote_scheduled=attempt > 1)
        d = client.store.get(delivery_id)
        assert d.failures == attempt and d.attempts == attempt
        if attempt == 8:
            break
        assert d.status == "retrying", (attempt, d.status)
        assert f"(attempt {attempt} of 8;" in client.store.last_history(delivery_id)["detail"]
        failed_at = max(e["ts"] for e in sandbox.requests() if e["status"] == 500)
        waits.append(scheduled_at(client, delivery_id) - failed_at)
    base, cap = defaults.RETRY_BASE_SECONDS, defaults.RETRY_MAX_SECONDS
    for n, wait in enumerate(waits, start=1):
        nominal = min(cap, base * 2 ** (n - 1))
        # jitter of ±25 %; the scheduled registry keeps whole seconds (rounded up)
        assert 0.75 * nominal <= wait <= 1.25 * nominal + 2, (n, wait, nominal)
    assert waits == sorted(waits)  # each wait longer than the last
    d = client.store.get(delivery_id)
    assert d.status == "failed" and d.reason_code == "retries_exhausted"
    assert "gave up after 8 failed attempts" in d.reason
    assert len([e for e in sandbox.requests() if e["status"] == 500]) == 8
    assert contacts(sandbox) == []


def test_permanent_400_fails_at_once_with_the_api_message(make_client, run_jobs, sandbox):
    client = make_client(
        routes=[route_dict(fields={"phoneNumber": "fields.phone", "language": "fields.lang"})]
    )
    # a language the mapping accepts but the API rejects is a permanent 400
    sandbox.configure(fail_rate=0.0)
    delivery_id = post(client, {**LEAD, "lang": "hi-IN"})
    d = client.store.get(delivery_id)
    d.contact["metadata"] = "not an object"  # what an API-side validation failure looks like
    client.store.update(d)
    run_jobs(client.settings)
    d = client.store.get(delivery_id)
    assert d.status == "failed" and d.reason_code == "invalid"
    assert d.attempts == 1
    assert d.last_api["status"] == 400 and "metadata" in d.last_api["message"]
    assert contacts(sandbox) == []


def test_revoked_key_is_a_permanent_401(make_client, run_jobs, sandbox):
    client = make_client(oliai={"api_key": sandbox.revoked_key})
    delivery_id = post(client, LEAD)
    run_jobs(client.settings)
    d = client.store.get(delivery_id)
    assert d.status == "failed" and d.reason_code == "unauthorized"
    assert d.last_api["message"] == "API key has been revoked"
    assert sandbox.revoked_key not in d.reason


def test_unknown_audience_id_is_a_permanent_404(make_client, run_jobs, sandbox):
    client = make_client(routes=[route_dict(audience_name=None, audience_id="aud_missing")])
    delivery_id = post(client, LEAD)
    run_jobs(client.settings)
    d = client.store.get(delivery_id)
    assert d.status == "failed" and d.reason_code == "not_found"
    assert d.contact_id  # the contact step finished and stays recorded for a replay


def test_route_api_key_override_delivers_to_another_org(make_client, run_jobs, sandbox):
    client = make_client(routes=[route_dict(api_key=sandbox.keys[1])])
    post(client, LEAD)
    run_jobs(client.settings)
    assert contacts(sandbox, sandbox.keys[0]) == []
    assert len(contacts(sandbox, sandbox.keys[1])) == 1


def test_resume_after_partial_failure_makes_no_second_contact(make_client, run_jobs, sandbox):
    client = make_client(routes=[route_dict(audience_name=None, audience_id="aud_later")])
    delivery_id = post(client, LEAD)
    run_jobs(client.settings)  # contact created, audience add 404s: failed
    assert client.store.get(delivery_id).status == "failed"
    # the operator creates the audience and points the route at it, then replays
    aud = sandbox.client().create_audience("Later")
    settings = client.settings
    fixed = replace(
        settings, routes={"leads": replace(settings.routes["leads"], audience_id=aud["id"])}
    )
    started = time.time()
    assert Replayer(fixed, client.redis).replay(delivery_id).outcome == "requeued"
    run_jobs(fixed)
    d = client.store.get(delivery_id)
    assert d.status == "delivered"
    posts = [
        e
        for e in sandbox.requests(since=started)
        if e["method"] == "POST"
        and e["path"].endswith("/contacts")
        and "audiences" not in e["path"]
    ]
    assert posts == []  # resumed at the audience step: no second create
    assert len(contacts(sandbox)) == 1


@pytest.mark.parametrize("mode", ["500", "drop"])
def test_fail_after_commit_never_duplicates(make_client, run_jobs, sandbox, mode):
    sandbox.configure(fail_after_commit_rate=1.0, fail_after_commit_mode=mode)
    client = make_client()
    ids = [post(client, {"name": f"L{i}", "phone": f"98765432{i:02d}"}) for i in range(3)]
    run_jobs(client.settings)
    sandbox.configure(fail_after_commit_rate=0.0)
    for _ in range(6):
        run_jobs(client.settings, promote_scheduled=True)
        if all(client.store.get(i).status == "delivered" for i in ids):
            break
    assert {client.store.get(i).status for i in ids} == {"delivered"}
    phones = [c["phoneNumber"] for c in contacts(sandbox)]
    assert sorted(phones) == sorted(set(phones)) and len(phones) == 3
    [audience] = audiences(sandbox)
    assert audience["contactCount"] == 3


def test_stale_job_does_nothing(make_client, run_jobs, sandbox, redis):
    from jobs.context import configure
    from jobs.deliver import Deliverer

    client = make_client()
    delivery_id = post(client, LEAD)
    run_jobs(client.settings)
    ctx = configure(client.settings, redis)
    # a delivered delivery run again (a duplicate trigger) makes no call
    started = time.time()
    assert Deliverer(ctx).run(delivery_id) == "delivered"
    assert sandbox.requests(since=started) == []


def test_a_newly_failed_delivery_is_announced_to_the_alert_webhook(make_client, run_jobs, sandbox):
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    received = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's naming
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/alerts"
        client = make_client(
            oliai={"api_key": sandbox.revoked_key}, delivery={"alert_webhook_url": url}
        )
        delivery_id = post(client, LEAD)
        run_jobs(client.settings)
    finally:
        server.shutdown()
    [alert] = received
    assert alert["event"] == "delivery.failed"
    assert alert["deliveryId"] == delivery_id
    assert alert["reasonCode"] == "unauthorized"
    assert sandbox.revoked_key not in json.dumps(alert)


# --- leads the job fetches from the provider first (HubSpot here) --------------------------------

HS_TOKEN = "hs-route-token-51c0"
HS_ACCESS = "pat-na1-fetch-token-0c2d"
CONTACT_PATH = "/crm/v3/objects/contacts/123"
CONTACT = {"id": "123", "properties": {"firstname": "Priya", "mobilephone": "098200 11223"}}


@pytest.fixture
def hubspot(make_client):
    """(client, api): the bridge with a HubSpot route whose CRM API is a local stand-in."""
    from tests.sources.harness import FakeApi

    api = FakeApi()
    route = route_dict(
        name="hs", source="hubspot", token=HS_TOKEN, access_token=HS_ACCESS, api_base_url=api.url
    )
    yield make_client(routes=[route], delivery={"max_attempts": 3}), api
    api.close()


def contact_created(client) -> str:
    """A HubSpot Webhooks API event: contact 123 was created (the body holds its id only)."""
    event = {
        "eventId": 7,
        "subscriptionId": 1,
        "portalId": 62515,
        "subscriptionType": "contact.creation",
        "objectId": 123,
    }
    r = client.post("/hooks/hs", json=[event], headers={"X-Bridge-Token": HS_TOKEN})
    assert r.status_code == 202, r.json
    return r.json["deliveryId"]


@pytest.mark.parametrize("status", [502, 429])
def test_a_provider_in_trouble_is_retried_then_the_lead_is_fetched(
    hubspot, run_jobs, sandbox, status
):
    client, api = hubspot
    api.answer(CONTACT_PATH, status, {"message": "try later"})
    delivery_id = contact_created(client)
    run_jobs(client.settings)
    d = client.store.get(delivery_id)
    assert d.status == "retrying" and d.failures == 1
    last = client.store.history(delivery_id)[-1]
    assert last["what"] == "retry_scheduled"
    assert "fetching the lead: HubSpot" in last["detail"] and str(status) in last["detail"]
    assert contacts(sandbox) == []
    api.answer(CONTACT_PATH, 200, CONTACT)
    run_jobs(client.settings, promote_scheduled=True)
    d = client.store.get(delivery_id)
    assert d.status == "delivered"
    [contact] = contacts(sandbox)
    assert (contact["name"], contact["phoneNumber"]) == ("Priya", "+919820011223")
    assert "fetched" in history(client, delivery_id)
    assert all(seen["path"] == CONTACT_PATH for seen in api.seen) and len(api.seen) == 2


def test_a_provider_in_trouble_for_good_fails_the_delivery_after_the_retries(
    hubspot, run_jobs, sandbox
):
    client, api = hubspot
    api.answer(CONTACT_PATH, 503, {"message": "down"})
    delivery_id = contact_created(client)
    for _ in range(3):
        run_jobs(client.settings, promote_scheduled=True)
    d = client.store.get(delivery_id)
    assert d.status == "failed" and d.reason_code == "retries_exhausted"
    assert "gave up after 3 failed attempts" in d.reason and "fetching the lead" in d.reason
    assert client.store.failed_ids() == ([delivery_id], 1)
    assert len(api.seen) == 3 and contacts(sandbox) == []


@pytest.mark.parametrize(
    "status, body, words",
    [
        (404, {"message": "Object not found.", "category": "OBJECT_NOT_FOUND"}, "404"),
        (401, {"message": f"bad token {HS_ACCESS}", "category": "INVALID_AUTHENTICATION"}, "401"),
    ],
)
def test_a_lead_the_provider_refuses_fails_at_once_with_its_answer(
    hubspot, run_jobs, sandbox, status, body, words
):
    client, api = hubspot
    api.answer(CONTACT_PATH, status, body)
    delivery_id = contact_created(client)
    run_jobs(client.settings, promote_scheduled=True)
    d = client.store.get(delivery_id)
    assert d.status == "failed" and d.reason_code == "fetch_failed"
    assert d.reason.startswith("fetching the lead: HubSpot") and words in d.reason
    assert body["category"] in d.reason
    assert HS_ACCESS not in d.reason  # an API echoing the token is masked
    assert d.attempts == 1 and len(api.seen) == 1  # not retried
    assert client.store.failed_ids(reason="fetch_failed") == ([delivery_id], 1)
    assert history(client, delivery_id)[-1] == "failed"
    assert contacts(sandbox) == []


def test_a_fetched_lead_without_a_phone_is_skipped_with_the_reason(hubspot, run_jobs, sandbox):
    client, api = hubspot
    api.answer(CONTACT_PATH, 200, {"id": "123", "properties": {"firstname": "Priya"}})
    delivery_id = contact_created(client)
    run_jobs(client.settings)
    d = client.store.get(delivery_id)
    assert d.status == "skipped" and d.reason_code == "unmappable"
    assert "phone" in d.reason
    assert d.event.fields["firstname"] == "Priya" and d.event.fetch is None
    assert history(client, delivery_id)[-2:] == ["fetched", "skipped"]
    assert client.store.failed_ids(reason="unmappable") == ([delivery_id], 1)
    assert contacts(sandbox) == [] and len(api.seen) == 1
