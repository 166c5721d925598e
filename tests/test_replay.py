"""Replaying failed and skipped deliveries (``jobs.replay``), over a real Redis and the sandbox:
what is requeued, what is left alone, ``--remap`` with the current config, and the selection
by route, reason and time."""

from __future__ import annotations

import time

import pytest
from rq import Queue

from bridge import keys
from bridge.deliveries import Delivery, new_delivery_id
from bridge.event import Event, utcnow_iso
from jobs.replay import Replayer
from tests.bridge_fixtures import route_dict

TYPO = route_dict(audience_name=None, audience_id="aud_typo")  # the API answers 404


def lead(i: int, **extra) -> dict:
    return {"name": f"Lead {i}", "phone": f"98765432{i:02d}", **extra}


def accepted(client, body, route="leads") -> str:
    r = client.post(f"/hooks/{route}", json=body)
    assert r.status_code == 202, r.json
    return r.json["deliveryId"]


def failed_delivery(client, run_jobs, body, route="leads") -> str:
    delivery_id = accepted(client, body, route)
    run_jobs(client.settings)
    assert client.store.get(delivery_id).status == "failed"
    return delivery_id


def history(client, delivery_id) -> list[str]:
    return [h["what"] for h in client.store.history(delivery_id)]


def queued_jobs(client) -> list[str]:
    """What waits for a worker, by the id that is current on its delivery: tickets in the
    lanes' pending sets (``jobs.lanes``), and deliveries queued as their own RQ job."""
    from jobs.lanes import Lanes, pending_key

    tickets = [
        t.decode()
        for kid, lane in Lanes(client.redis).lanes()
        for t in client.redis.zrange(pending_key(kid, lane), 0, -1)
    ]
    jobs = Queue(client.settings.queue_name, connection=client.redis).get_job_ids()
    return tickets + [j for j in jobs if not j.startswith("drain-")]


def test_replay_after_the_fix_delivers_and_takes_it_off_every_failed_list(
    make_client, make_settings, run_jobs, sandbox
):
    client = make_client(routes=[TYPO])
    delivery_id = failed_delivery(client, run_jobs, lead(1))
    before = client.store.get(delivery_id)
    fixed = make_settings([route_dict()])
    result = Replayer(fixed, client.redis).replay(delivery_id)
    assert (result.outcome, result.detail) == ("requeued", "+919876543201")
    d = client.store.get(delivery_id)
    assert d.status == "queued" and d.failures == 0
    assert (d.reason_code, d.reason) == (None, None)
    assert d.job_id != before.job_id and queued_jobs(client) == [d.job_id]
    assert history(client, delivery_id)[-1] == "replayed"
    assert client.store.failed_ids() == ([], 0)
    assert client.store.failed_ids(route="leads") == ([], 0)
    assert client.store.failed_ids(reason="not_found") == ([], 0)
    run_jobs(fixed)
    assert client.store.get(delivery_id).status == "delivered"
    assert d.contact_id == before.contact_id  # resumed: the contact step was already done
    assert len(sandbox.org_state()["contacts"]) == 1


def test_a_dry_run_changes_nothing(make_client, run_jobs, sandbox):
    client = make_client(routes=[TYPO])
    delivery_id = failed_delivery(client, run_jobs, lead(1))
    before = (client.store.get(delivery_id), history(client, delivery_id), queued_jobs(client))
    result = Replayer(client.settings, client.redis).replay(delivery_id, dry_run=True)
    assert (result.outcome, result.detail) == ("would_requeue", "+919876543201")
    after = (client.store.get(delivery_id), history(client, delivery_id), queued_jobs(client))
    assert after == before
    assert client.store.failed_ids()[0] == [delivery_id]


def test_what_is_not_failed_is_left_alone(make_client, run_jobs, sandbox, redis):
    client = make_client()
    delivered = accepted(client, lead(1))
    run_jobs(client.settings)
    waiting = accepted(client, lead(2))
    replayer = Replayer(client.settings, redis)
    outcomes = {i: replayer.replay(i).outcome for i in (delivered, waiting, "dlv_nope")}
    assert outcomes == {
        delivered: "already_delivered",
        waiting: "in_progress",
        "dlv_nope": "missing",
    }
    assert queued_jobs(client) == [client.store.get(waiting).job_id]  # not a second job
    run_jobs(client.settings)
    assert len(sandbox.org_state()["contacts"]) == 2


def test_replaying_twice_delivers_once(make_client, make_settings, run_jobs, sandbox):
    client = make_client(routes=[TYPO])
    delivery_id = failed_delivery(client, run_jobs, lead(1))
    fixed = make_settings([route_dict()])
    replayer = Replayer(fixed, client.redis)
    assert replayer.replay(delivery_id).outcome == "requeued"
    assert replayer.replay(delivery_id).outcome == "in_progress"
    run_jobs(fixed)
    assert replayer.replay(delivery_id).outcome == "already_delivered"
    run_jobs(fixed)
    assert len(sandbox.org_state()["contacts"]) == 1


def test_a_route_removed_from_the_config_is_named(make_client, make_settings, run_jobs, sandbox):
    client = make_client(routes=[TYPO])
    delivery_id = failed_delivery(client, run_jobs, lead(1))
    result = Replayer(make_settings([route_dict(name="other")]), client.redis).replay(delivery_id)
    assert result.outcome == "unmappable" and "'leads' is not configured" in result.detail
    assert client.store.get(delivery_id).status == "failed"


# --- remap ----------------------------------------------------------------------------------------


def test_remap_reads_the_stored_request_with_the_current_mapping(
    make_client, make_settings, run_jobs, sandbox
):
    # The first mapping took the office number; the lead's own is under "mobile".
    wrong = route_dict(
        audience_name=None, audience_id="aud_typo", fields={"phoneNumber": "fields.office"}
    )
    client = make_client(routes=[wrong])
    delivery_id = failed_delivery(
        client, run_jobs, lead(1, office="9123456780", mobile="9876500001")
    )
    before = client.store.get(delivery_id)
    assert before.contact["phoneNumber"] == "+919123456780" and before.contact_id
    right = make_settings([route_dict(fields={"phoneNumber": "fields.mobile"})])
    plain = Replayer(right, client.redis).replay(delivery_id, dry_run=True)
    assert plain.detail == "+919123456780"  # without --remap the stored contact stands
    result = Replayer(right, client.redis).replay(delivery_id, remap=True)
    assert (result.outcome, result.detail) == ("requeued", "+919876500001")
    d = client.store.get(delivery_id)
    assert d.contact["phoneNumber"] == "+919876500001"
    assert d.contact_id is None and d.audience_added is False  # another person: all steps again
    assert "remapped" in client.store.history(delivery_id)[-1]["detail"]
    run_jobs(right)
    assert client.store.get(delivery_id).status == "delivered"
    phones = {c["phoneNumber"] for c in sandbox.org_state()["contacts"]}
    assert "+919876500001" in phones
    [audience] = sandbox.org_state()["audiences"]
    assert audience["contactIds"] == [client.store.get(delivery_id).contact_id]


def test_remap_after_the_raw_payload_expired_is_refused_and_recorded(
    make_client, run_jobs, sandbox
):
    """A webhook with several leads keeps its request under a key of its own, shared by them,
    which can expire or be deleted (a lone lead's request is part of its record)."""
    client = make_client(routes=[{**TYPO, "source": "zapier"}])  # zapier: a list of leads
    r = client.post("/hooks/leads", json=[lead(1), lead(2)])
    assert r.status_code == 202, r.json
    delivery_id = r.json["deliveries"][0]["deliveryId"]
    run_jobs(client.settings)
    assert client.store.get(delivery_id).status == "failed"
    client.redis.delete(keys.raw(client.store.get(delivery_id).raw_id))
    result = Replayer(client.settings, client.redis).replay(delivery_id, remap=True)
    assert result.outcome == "unmappable" and "expired" in result.detail
    d = client.store.get(delivery_id)
    assert d.status == "failed" and "expired" in d.reason
    assert history(client, delivery_id)[-1] == "replay_refused"
    assert delivery_id in client.store.failed_ids()[0]  # still listed (its neighbour too)


def test_a_skipped_lead_is_mapped_again_with_the_current_route(
    make_client, make_settings, run_jobs, sandbox
):
    client = make_client(routes=[route_dict(name="zap", source="zapier")])
    r = client.post("/hooks/zap", json=[lead(1), {"name": "Asha", "reach_me_at": "9876543299"}])
    assert r.status_code == 202, r.json
    skipped = r.json["deliveries"][1]["deliveryId"]
    assert client.store.get(skipped).status == "skipped"
    # still unmappable under the same route: refused, recorded, still listed
    same = Replayer(client.settings, client.redis).replay(skipped)
    assert same.outcome == "unmappable"
    assert client.store.get(skipped).status == "skipped"
    assert history(client, skipped)[-1] == "replay_refused"
    fixed = make_settings(
        [route_dict(name="zap", source="zapier", fields={"phoneNumber": "fields.reach_me_at"})]
    )
    result = Replayer(fixed, client.redis).replay(skipped)
    assert (result.outcome, result.detail) == ("requeued", "+919876543299")
    run_jobs(fixed)
    assert client.store.get(skipped).status == "delivered"


# --- selection ------------------------------------------------------------------------------------


def test_select_filters_by_route_reason_and_time_oldest_first(make_client, run_jobs, sandbox):
    other = route_dict(name="other", audience_name=None, audience_id="aud_typo")
    client = make_client(routes=[TYPO, other])
    old = failed_delivery(client, run_jobs, lead(1))
    recent = failed_delivery(client, run_jobs, lead(2))
    elsewhere = failed_delivery(client, run_jobs, lead(3), route="other")
    two_hours_ago = time.time() - 7200
    for key in (keys.FAILED, keys.failed_by_route("leads"), keys.failed_by_reason("not_found")):
        client.redis.zadd(key, {old: two_hours_ago})
    replayer = Replayer(client.settings, client.redis)
    assert list(replayer.select()) == [old, recent, elsewhere]
    assert list(replayer.select(route="leads")) == [old, recent]
    assert list(replayer.select(reason="not_found", since=time.time() - 3600)) == [
        recent,
        elsewhere,
    ]
    assert list(replayer.select(reason="invalid")) == []


def test_replay_of_a_selection_larger_than_a_page_takes_every_one(
    make_client, make_settings, run_jobs, sandbox
):
    client = make_client(routes=[TYPO])
    ids = [accepted(client, lead(i)) for i in range(7)]
    run_jobs(client.settings)
    replayer = Replayer(make_settings([route_dict()]), client.redis)
    results = replayer.replay_many(replayer.select(page_size=2))
    assert sorted(r.delivery_id for r in results) == sorted(ids)
    assert {r.outcome for r in results} == {"requeued"}


def test_a_dry_run_of_a_selection_larger_than_a_page_lists_every_one_once(
    make_client, run_jobs, sandbox
):
    client = make_client(routes=[TYPO])
    ids = [accepted(client, lead(i)) for i in range(5)]
    run_jobs(client.settings)
    replayer = Replayer(client.settings, client.redis)
    results = replayer.replay_many(replayer.select(page_size=2), dry_run=True)
    assert sorted(r.delivery_id for r in results) == sorted(ids)


def test_replay_all_passes_over_failures_whose_record_expired(make_client, redis):
    client = make_client()
    redis.zadd("oliai-bridge:idx:failed", {"dlv_expired": time.time()})  # record gone, index not
    results = Replayer(client.settings, redis).replay_many(
        Replayer(client.settings, redis).select()
    )
    assert [(r.delivery_id, r.outcome) for r in results] == [("dlv_expired", "missing")]


def test_progress_is_told_for_each_delivery(make_client, run_jobs, sandbox):
    client = make_client(routes=[TYPO])
    ids = [failed_delivery(client, run_jobs, lead(i)) for i in range(3)]
    seen = []
    Replayer(client.settings, client.redis).replay_many(ids, dry_run=True, progress=seen.append)
    assert [r.delivery_id for r in seen] == ids
    assert [r.to_dict()["outcome"] for r in seen] == ["would_requeue"] * 3


@pytest.mark.parametrize("remap", [False, True])
def test_a_lead_the_job_fetches_is_requeued_to_be_fetched_again(make_client, redis, remap):
    route = route_dict(name="hs", source="hubspot", secret="hs-secret", access_token="pat-1")
    client = make_client(routes=[route])
    d = Delivery(
        id=new_delivery_id(),
        route="hs",
        source="hubspot",
        status="failed",
        event=Event(
            route="hs",
            source="hubspot",
            event_id="62515:1:9:123",
            received_at=utcnow_iso(),
            fields={"objectId": 123},
            fetch={"kind": "hubspot_contact", "id": "123"},
        ),
        received_at=utcnow_iso(),
        reason_code="fetch_failed",
        reason="fetching the lead: HubSpot answered 401",
    )
    pipe = redis.pipeline()
    client.store.add(pipe, d)
    pipe.execute()
    replayer = Replayer(client.settings, redis)
    if remap:  # no raw payload kept for this one
        assert replayer.replay(d.id, remap=True).outcome == "unmappable"
        return
    assert replayer.replay(d.id, dry_run=True).detail == "(fetched by the job)"
    assert replayer.replay(d.id).outcome == "requeued"
    stored = client.store.get(d.id)
    assert stored.contact is None and stored.event.fetch == {"kind": "hubspot_contact", "id": "123"}


def test_a_queued_lead_whose_stored_request_was_deleted_is_skipped_with_that_reason(
    make_client, run_jobs, sandbox
):
    """Its fields and contact were kept with the stored request (``bridge.record``): a Redis
    that lost it (deleted by hand, or evicted against ``noeviction``) leaves a record that still
    reads, and a delivery that says why it cannot go on instead of guessing."""
    client = make_client(routes=[route_dict(source="zapier")])  # zapier: a list of leads
    r = client.post("/hooks/leads", json=[lead(7), lead(8)])  # their request has its own key
    assert r.status_code == 202
    delivery_id = r.json["deliveries"][0]["deliveryId"]
    client.redis.delete(keys.raw(client.store.get(delivery_id).raw_id))
    run_jobs(client.settings)
    d = client.store.get(delivery_id)
    assert d.status == "skipped" and "gone" in d.reason
    assert history(client, delivery_id)[-1] == "skipped"
    assert sandbox.org_state()["contacts"] == []  # nothing half-known was sent
