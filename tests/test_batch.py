"""Leads that queue up for one key go out together: per-lead outcomes of /contacts/bulk and of
imports, batch sizes, lost answers and dead workers, against the sandbox over HTTP."""

import time

import pytest

from bridge import keys
from bridge.deliveries import DeliveryStore
from jobs.batch import bulk_size_key
from jobs.context import configure
from jobs.lanes import Lanes, lane_kid
from jobs.reaper import reap_once
from tests.bridge_fixtures import route_dict


def phone(i: int) -> str:
    return f"+9198765{i:05d}"


def post_many(client, count, start=0, route="leads", refused=()):
    ids = []
    for i in range(start, start + count):
        r = client.post(f"/hooks/{route}", json={"name": f"Lead {i}", "phone": phone(i)})
        assert r.status_code == 202, r.json
        ids.append(r.json["deliveryId"])
    return ids


def calls(sandbox, since=None):
    """``(method, path, status)`` of every API request, paths without the ids."""
    out = []
    for e in sandbox.requests(since):
        path = e["path"].removeprefix("/v1")
        if path.startswith("/audiences/") and path.endswith("/contacts"):
            path = "/audiences/:id/contacts"
        elif path.startswith("/imports/") and path.endswith("/status"):
            path = "/imports/:id/status"
        out.append((e["method"], path, e["status"]))
    return out


def whats(store, delivery_id):
    return [h["what"] for h in store.history(delivery_id)]


def drain_all(client, run_jobs, ids, rounds=30):
    """Run the workers (promoting scheduled wake-ups) until every delivery has an outcome."""
    for _ in range(rounds):
        run_jobs(client.settings, promote_scheduled=True)
        if all(client.store.get(i).terminal for i in ids):
            return
        time.sleep(0.3)
    statuses = [client.store.get(i).status for i in ids]
    stuck = next(i for i in ids if not client.store.get(i).terminal)
    counts = {s: statuses.count(s) for s in set(statuses)}
    raise AssertionError(f"not settled: {counts}; e.g. {client.store.history(stuck)[-4:]}")


def test_each_lead_of_a_batch_gets_its_own_outcome(make_client, run_jobs, sandbox):
    sandbox.configure(refused_phones=[phone(2)])
    client = make_client()
    ids = post_many(client, 5)
    tampered = client.store.get(ids[3])
    tampered.contact["metadata"] = {"nested": {"not": "flat"}}
    client.store.update(tampered)
    run_jobs(client.settings)

    good = [ids[0], ids[1], ids[4]]
    assert [client.store.get(i).status for i in good] == ["delivered"] * 3
    api_refused, own_refused = client.store.get(ids[2]), client.store.get(ids[3])
    assert api_refused.status == "failed" and api_refused.reason_code == "invalid"
    assert api_refused.last_api["status"] == 400
    assert "do-not-call" in api_refused.last_api["message"]
    assert own_refused.status == "failed" and own_refused.reason_code == "invalid"
    assert "metadata.nested" in own_refused.reason and own_refused.last_api is None

    sent = calls(sandbox)
    # one bulk upsert for the four rows that passed our checks, one audience add for the
    # three it took, and the left-out row alone, which the API refuses with its reason
    assert sent.count(("POST", "/contacts/bulk", 200)) == 1
    assert sent.count(("POST", "/audiences/:id/contacts", 200)) == 1
    assert [c for c in sent if c[1] == "/contacts"] == [("POST", "/contacts", 400)]
    state = sandbox.org_state()
    assert sorted(c["phoneNumber"] for c in state["contacts"]) == [phone(0), phone(1), phone(4)]
    [audience] = state["audiences"]
    assert audience["contactCount"] == 3
    for i in good:  # neighbours are not retried for the refused rows
        d = client.store.get(i)
        assert d.attempts == 1 and d.failures == 0
        assert whats(client.store, i)[-4:] == [
            "attempt",
            "contact_upserted",
            "audience_added",
            "delivered",
        ]
        assert d.contact_id in audience["contactIds"]
    assert "retry_scheduled" not in whats(client.store, ids[2])


def test_a_refused_batch_size_is_halved_and_remembered(make_client, run_jobs, sandbox, redis):
    sandbox.configure(bulk_max_items=2)
    client = make_client()
    ids = post_many(client, 5)
    run_jobs(client.settings)
    assert {client.store.get(i).status for i in ids} == {"delivered"}
    kid = lane_kid(client.settings, client.settings.routes["leads"])
    assert int(redis.get(bulk_size_key(kid))) == 2
    bulk = [c for c in calls(sandbox) if c[1] == "/contacts/bulk"]
    assert bulk[:2] == [("POST", "/contacts/bulk", 400)] * 2  # 5 rows, then 3
    assert all(c[2] == 200 for c in bulk[2:])
    assert len(sandbox.org_state()["contacts"]) == 5

    started = time.time()
    more = post_many(client, 4, start=5)
    run_jobs(client.settings)
    assert {client.store.get(i).status for i in more} == {"delivered"}
    # the remembered size is used at once: no refused request this time
    assert [c for c in calls(sandbox, started) if c[1] == "/contacts/bulk"] == [
        ("POST", "/contacts/bulk", 200)
    ] * 2


@pytest.mark.parametrize("mode", ["500", "drop"])
def test_a_lost_bulk_answer_makes_no_second_contact(make_client, run_jobs, sandbox, mode):
    client = make_client()
    ids = post_many(client, 6)
    sandbox.configure(fail_after_commit_rate=1.0, fail_after_commit_mode=mode)
    run_jobs(client.settings)
    assert {client.store.get(i).status for i in ids} == {"retrying"}
    assert len(sandbox.org_state()["contacts"]) == 6  # the upsert happened; its answer did not
    sandbox.configure(fail_after_commit_rate=0.0)
    drain_all(client, run_jobs, ids)
    assert {client.store.get(i).status for i in ids} == {"delivered"}
    state = sandbox.org_state()
    phones = [c["phoneNumber"] for c in state["contacts"]]
    assert sorted(phones) == [phone(i) for i in range(6)]
    [audience] = state["audiences"]
    assert audience["contactCount"] == 6
    assert sum(1 for c in calls(sandbox) if c[1] == "/contacts/bulk") >= 2  # sent again
    for i in ids:
        assert "retry_scheduled" in whats(client.store, i)


def import_client(make_client, sandbox, **oliai):
    # Two bulk requests a window make a few hundred leads a deep backlog: an import's job.
    return make_client(oliai={"bulk_per_minute": 2, **oliai})


def test_a_deep_backlog_goes_through_one_import(make_client, run_jobs, sandbox):
    client = import_client(make_client, sandbox)
    ids = post_many(client, 520)
    run_jobs(client.settings)
    assert {client.store.get(i).status for i in ids} == {"delivered"}
    sent = calls(sandbox)
    assert sent.count(("POST", "/imports/api/bulk", 201)) == 1
    assert not [c for c in sent if c[1] in ("/contacts/bulk", "/contacts")]
    assert ("GET", "/imports/:id/status", 200) in sent
    state = sandbox.org_state()
    [imported] = state["imports"]
    assert imported["status"] == "COMPLETED" and imported["total"] == 520
    [audience] = state["audiences"]
    assert audience["contactCount"] == 520 == len(state["contacts"])
    history = client.store.history(ids[0])
    assert [h["what"] for h in history][-3:] == ["attempt", "imported", "delivered"]
    assert imported["id"] in history[-3]["detail"] and imported["id"] in history[-2]["detail"]
    assert audience["id"] in history[-2]["detail"]
    status = client.get(f"/deliveries/{ids[0]}").json
    assert status["status"] == "delivered" and status["audienceId"] == audience["id"]


def test_an_import_with_errors_sends_every_row_again_with_answers_per_row(
    make_client, run_jobs, sandbox
):
    client = make_client(  # 8 bulk requests a window: 801 rows and more are an import
        oliai={"bulk_per_minute": 10}, bridge={"max_requests_per_minute": 10_000}
    )
    sandbox.configure(refused_phones=[phone(7)])
    ids = post_many(client, 820)
    drain_all(client, run_jobs, ids)
    statuses = [client.store.get(i).status for i in ids]
    assert statuses.count("delivered") == 819
    refused = client.store.get(ids[7])
    assert refused.status == "failed" and "do-not-call" in refused.last_api["message"]
    assert whats(client.store, ids[7])[-3:] == ["import_incomplete", "attempt", "failed"]
    sent = calls(sandbox)
    assert sent.count(("POST", "/imports/api/bulk", 201)) == 1  # not imported a second time
    assert [c for c in sent if c[1] == "/contacts"] == [("POST", "/contacts", 400)]
    state = sandbox.org_state()
    phones = [c["phoneNumber"] for c in state["contacts"]]
    assert len(phones) == len(set(phones)) == 819
    assert state["audiences"][0]["contactCount"] == 819


@pytest.mark.parametrize("mode", ["500", "drop"])
def test_a_lost_import_answer_is_looked_up_not_sent_again(make_client, run_jobs, sandbox, mode):
    audience = sandbox.client().create_audience("Imported")
    client = make_client(
        routes=[route_dict(audience_name=None, audience_id=audience["id"])],
        oliai={"bulk_per_minute": 2},
    )
    ids = post_many(client, 510)
    started = time.time()
    sandbox.configure(fail_after_commit_rate=1.0, fail_after_commit_mode=mode)
    run_jobs(client.settings)
    assert {client.store.get(i).status for i in ids} == {"delivered"}
    sent = calls(sandbox, started)
    assert [c[1] for c in sent if c[0] == "POST"] == ["/imports/api/bulk"]  # sent once
    assert ("GET", "/imports", 200) in sent  # looked for after the lost answer
    [imported] = sandbox.org_state()["imports"]
    assert imported["id"] in client.store.history(ids[0])[-3]["detail"]
    assert sandbox.org_state()["audiences"][0]["contactCount"] == 510


def test_a_batch_whose_worker_died_goes_back_to_its_lane(make_client, run_jobs, sandbox, redis):
    client = make_client()
    ctx = configure(client.settings, redis)
    ids = post_many(client, 3)
    kid = lane_kid(client.settings, client.settings.routes["leads"])
    lanes = Lanes(redis)
    # a worker claims the three, then dies before sending anything (its lease lapses)
    batch_id, tickets = lanes.claim(
        kid, "live", 100, job_id="drain-dead", horizon_ms=int(time.time() * 1000), lease_ms=15_000
    )
    assert len(tickets) == 3 and lanes.ready_count(kid, "live", int(time.time() * 1000)) == 0
    redis.delete(keys.batch_lease(batch_id))
    assert reap_once(ctx) == []  # not due yet: leases are looked at when they would lapse
    assert sorted(reap_once(ctx, now=time.time() + 20)) == sorted(ids)
    assert lanes.batch(batch_id) is None
    for i in ids:
        assert "recovered" in whats(client.store, i)
    run_jobs(client.settings)
    assert {client.store.get(i).status for i in ids} == {"delivered"}
    assert len(sandbox.org_state()["contacts"]) == 3


def test_a_stale_ticket_does_nothing(make_client, run_jobs, sandbox, redis):
    client = make_client()
    [delivery_id] = post_many(client, 1)
    d = client.store.get(delivery_id)
    kid = lane_kid(client.settings, client.settings.routes["leads"])
    old_ticket = d.job_id
    run_jobs(client.settings)
    assert client.store.get(delivery_id).status == "delivered"
    # the old ticket turns up again (a recovered batch's copy): nothing is sent for it
    redis.zadd(keys.pending(kid, "live"), {old_ticket: 0})
    redis.delete(keys.trigger(kid, "live"))
    started = time.time()
    from jobs.lanes import kick_lanes

    kick_lanes(redis, configure(client.settings, redis).queue, [(kid, "live")], 60)
    run_jobs(client.settings)
    assert sandbox.requests(since=started) == []
    assert DeliveryStore(redis).get(delivery_id).attempts == 1


def test_an_import_done_hint_needs_its_token(make_client, redis):
    from jobs.lanes import batch_key, hint_digest, importing_key, trigger_key

    client = make_client()
    kid = lane_kid(client.settings, client.settings.routes["leads"])
    far = int(time.time() * 1000) + 60_000
    redis.hset(
        batch_key("bwaiting"),
        mapping={"phase": "importing", "hint": hint_digest("right"), "kid": kid, "lane": "live"},
    )
    redis.zadd(importing_key(kid, "live"), {"bwaiting": far})
    for query in ("batch=bwaiting&token=wrong", "batch=bother&token=right", "token=right"):
        r = client.post(f"/oliai/imports/done?{query}", json={"status": "COMPLETED"})
        assert r.status_code == 404 and r.json["error"] == "unknown_import"
    assert redis.zscore(importing_key(kid, "live"), "bwaiting") == far
    assert redis.get(trigger_key(kid, "live")) is None
    r = client.post("/oliai/imports/done?batch=bwaiting&token=right", json={"id": "imp_1"})
    assert r.status_code == 204
    assert redis.zscore(importing_key(kid, "live"), "bwaiting") == 0  # polled at once
    assert redis.get(trigger_key(kid, "live")) is not None  # by a drain started for it
    assert b"right" not in b"".join(redis.hvals(batch_key("bwaiting")))  # only its digest


def test_oliai_saying_an_import_is_done_wakes_its_lane(make_settings, run_jobs, sandbox, redis):
    import threading

    from werkzeug.serving import make_server

    from bridge.app import create_app
    from bridge.storage import free_port

    port = free_port()
    settings = make_settings(
        oliai={"bulk_per_minute": 2}, bridge={"public_url": f"http://127.0.0.1:{port}"}
    )
    server = make_server("127.0.0.1", port, create_app(settings, redis=redis), threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        client = create_app(settings, redis=redis).test_client()
        client.store = DeliveryStore(redis)
        client.settings = settings
        # the import takes a while: the drain's polls back off to several seconds apart
        sandbox.configure(import_delay_ms=6000)
        ids = post_many(client, 510)
        run_jobs(settings)
        assert {client.store.get(i).status for i in ids} == {"delivering"}
        queue = configure(settings, redis).queue
        deadline = time.monotonic() + 30
        while not queue.get_job_ids() and time.monotonic() < deadline:
            time.sleep(0.05)  # until OliAI's webhook has started the lane's drain
        run_jobs(settings)  # queued jobs only: the scheduled wake-up is not promoted
    finally:
        server.shutdown()
    assert {client.store.get(i).status for i in ids} == {"delivered"}
    [imported] = sandbox.org_state()["imports"]
    assert imported["status"] == "COMPLETED"


def test_a_contact_sent_in_a_batch_keeps_what_earlier_leads_put_in_its_metadata(
    make_client, run_jobs, sandbox
):
    client = make_client()

    def post(**lead):
        r = client.post("/hooks/leads", json=lead)
        assert r.status_code == 202, r.json
        return r.json["deliveryId"]

    first = post(name="Asha", phone=phone(0), city="Pune", plan="basic")
    run_jobs(client.settings)  # alone: created with its metadata
    assert client.store.get(first).status == "delivered"
    since = len(sandbox.requests())
    ids = [
        post(name="Asha", phone=phone(0), plan="pro"),  # the same person, a new plan
        post(name="Ravi", phone=phone(1), budget="10k"),
        post(name="Ravi", phone=phone(1), team="12"),  # one person twice in one batch
        post(name="Mira", phone=phone(2), city="Goa"),
    ]
    drain_all(client, run_jobs, ids)
    assert {client.store.get(i).status for i in ids} == {"delivered"}
    assert ("POST", "/contacts/bulk", 200) in calls(sandbox, since)  # they went together
    contacts = {c["phoneNumber"]: c for c in sandbox.org_state()["contacts"]}
    # Bulk upserts send the whole contact: the keys earlier leads set are sent again.
    assert contacts[phone(0)]["metadata"] == {"city": "Pune", "plan": "pro"}
    assert contacts[phone(1)]["metadata"] == {"budget": "10k", "team": "12"}
    assert contacts[phone(2)]["metadata"] == {"city": "Goa"}
