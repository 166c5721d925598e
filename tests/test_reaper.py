"""The reaper hands back deliveries nobody is working on: dead worker, lost job, no scheduler."""

import signal
import time

import pytest
import requests
from rq import Queue

from bridge import keys
from jobs.context import configure
from jobs.lanes import lane_kid, pending_key
from jobs.reaper import reap_once
from tests.bridge_fixtures import route_dict

LEAD = {"name": "Priya Sharma", "phone": "098765 43210"}


def accepted(client):
    r = client.post("/hooks/leads", json=LEAD)
    assert r.status_code == 202
    return r.json["deliveryId"]


def test_delivery_whose_worker_died_is_requeued_after_its_lease(
    make_client, redis, run_jobs, sandbox
):
    client = make_client()
    ctx = configure(client.settings, redis)
    delivery_id = accepted(client)
    # what a SIGKILLed worker leaves: status delivering, its job taken off the queue, no lease
    d = client.store.get(delivery_id)
    Queue(client.settings.queue_name, connection=redis).empty()
    d.status = "delivering"
    client.store.update(d, "attempt", recheck_in=-1)
    assert reap_once(ctx) == [delivery_id]
    d = client.store.get(delivery_id)
    assert d.status == "queued" and d.job_id.endswith("-2")
    assert "recovered" in [h["what"] for h in client.store.history(delivery_id)]
    run_jobs(client.settings)
    assert client.store.get(delivery_id).status == "delivered"
    assert len(sandbox.org_state()["contacts"]) == 1


def test_a_running_delivery_with_a_live_lease_is_left_alone(make_client, redis):
    client = make_client()
    ctx = configure(client.settings, redis)
    delivery_id = accepted(client)
    d = client.store.get(delivery_id)
    d.status = "delivering"
    client.store.update(d, recheck_in=-1)
    redis.set(keys.lease(delivery_id), "1", px=5000)
    assert reap_once(ctx) == []
    assert client.store.get(delivery_id).job_id == d.job_id


def test_queued_delivery_whose_ticket_vanished_is_requeued(make_client, redis):
    client = make_client()
    ctx = configure(client.settings, redis)
    delivery_id = accepted(client)
    d = client.store.get(delivery_id)
    kid = lane_kid(client.settings, client.settings.routes["leads"])
    assert redis.zrem(pending_key(kid, d.lane), d.job_id) == 1  # lost, as if never stored
    assert reap_once(ctx, now=time.time() + 120) == [delivery_id]
    d = client.store.get(delivery_id)
    assert d.status == "queued" and d.job_id.endswith("-2")
    assert redis.zrange(pending_key(kid, d.lane), 0, -1) == [d.job_id.encode()]


def test_lane_whose_drain_job_vanished_gets_a_new_one(make_client, redis, run_jobs, sandbox):
    client = make_client()
    ctx = configure(client.settings, redis)
    delivery_id = accepted(client)
    queue = Queue(client.settings.queue_name, connection=redis)
    kid = lane_kid(client.settings, client.settings.routes["leads"])
    old_trigger = ctx.lanes.trigger(kid, "live")
    queue.fetch_job(old_trigger).delete()
    assert queue.get_job_ids() == []
    assert reap_once(ctx, now=time.time() + 120) == []  # the lead itself is fine where it is
    new_trigger = ctx.lanes.trigger(kid, "live")
    assert new_trigger != old_trigger and queue.get_job_ids() == [new_trigger]
    run_jobs(client.settings)
    assert client.store.get(delivery_id).status == "delivered"
    assert len(sandbox.org_state()["contacts"]) == 1


def test_queued_delivery_with_its_job_waiting_is_left_alone(make_client, redis):
    client = make_client()
    ctx = configure(client.settings, redis)
    accepted(client)
    assert reap_once(ctx, now=time.time() + 120) == []


def test_overdue_retry_is_enqueued_when_no_scheduler_runs(make_client, redis, run_jobs, sandbox):
    sandbox.configure(fail_rate=1.0)
    client = make_client()
    ctx = configure(client.settings, redis)
    delivery_id = accepted(client)
    run_jobs(client.settings)
    assert client.store.get(delivery_id).status == "retrying"
    assert reap_once(ctx) == []  # not due yet
    assert reap_once(ctx, now=time.time() + 30) == [delivery_id]
    sandbox.configure(fail_rate=0.0)
    run_jobs(client.settings)
    assert client.store.get(delivery_id).status == "delivered"


def test_drain_taken_by_a_worker_that_died_before_starting_it_is_restarted(
    make_client, redis, run_jobs, sandbox
):
    client = make_client()
    ctx = configure(client.settings, redis)
    delivery_id = accepted(client)
    queue = Queue(client.settings.queue_name, connection=redis)
    kid = lane_kid(client.settings, client.settings.routes["leads"])
    old_job = ctx.lanes.trigger(kid, "live")
    # a worker popped the drain job off the list, then died: RQ still says "queued"
    assert redis.lrem(queue.key, 0, old_job) == 1
    assert queue.fetch_job(old_job).get_status() == "queued"
    assert reap_once(ctx, now=time.time() + 120) == []
    assert ctx.lanes.trigger(kid, "live") != old_job
    run_jobs(client.settings)
    assert client.store.get(delivery_id).status == "delivered"
    assert len(sandbox.org_state()["contacts"]) == 1


def test_drain_started_by_a_worker_that_died_at_once_is_restarted(
    make_client, redis, run_jobs, sandbox
):
    from datetime import UTC, datetime, timedelta

    from rq.job import JobStatus

    client = make_client()
    ctx = configure(client.settings, redis)
    delivery_id = accepted(client)
    queue = Queue(client.settings.queue_name, connection=redis)
    kid = lane_kid(client.settings, client.settings.routes["leads"])
    job = queue.fetch_job(ctx.lanes.trigger(kid, "live"))
    redis.lrem(queue.key, 0, job.id)
    job.started_at = datetime.now(UTC) - timedelta(seconds=5)
    job.set_status(JobStatus.STARTED)
    job.save()
    # a moment after starting, the drain's lease is about to be taken: leave it
    assert reap_once(ctx, now=time.time() + 1) == []
    assert ctx.lanes.trigger(kid, "live") == job.id
    # long after, with no lease ever taken, the worker is gone
    reap_once(ctx, now=time.time() + 120)
    assert ctx.lanes.trigger(kid, "live") != job.id
    run_jobs(client.settings)
    assert client.store.get(delivery_id).status == "delivered"


def test_index_entries_of_expired_records_are_trimmed(make_client, redis):
    client = make_client(delivery={"keep_delivered_days": 1, "keep_failed_days": 2})
    ctx = configure(client.settings, redis)
    now = time.time()
    # a stream entry's id is its time of receipt (ms), and ids only grow: the old one first
    redis.xadd("oliai-bridge:idx:recv", {"d": "dlv_old"}, id=f"{int((now - 3 * 86400) * 1000)}-0")
    delivery_id = accepted(client)
    # as an earlier version listed them
    redis.zadd("oliai-bridge:idx:received", {"dlv_old": now - 3 * 86400, "dlv_earlier": now})
    redis.zadd("oliai-bridge:idx:failed", {"dlv_old": now - 3 * 86400, "dlv_new": now})
    redis.zadd("oliai-bridge:idx:failed:route:leads", {"dlv_old": now - 3 * 86400})
    reap_once(ctx)
    assert [f[b"d"] for _, f in redis.xrange("oliai-bridge:idx:recv")] == [delivery_id.encode()]
    assert redis.zrange("oliai-bridge:idx:received", 0, -1) == [b"dlv_earlier"]
    assert redis.zrange("oliai-bridge:idx:failed", 0, -1) == [b"dlv_new"]
    assert redis.zcard("oliai-bridge:idx:failed:route:leads") == 0


# --- the reaper thread inside a running worker process --------------------------------------------


@pytest.mark.e2e
def test_a_running_worker_recovers_a_delivery_whose_worker_was_killed(make_stack, sandbox):
    config = {
        "oliai": {"rate_window_seconds": 2, "general_per_minute": 1000, "timeout_seconds": 5},
        "delivery": {"retry_base_seconds": 0.3, "retry_max_seconds": 2},
        "routes": [route_dict()],
    }
    sandbox.configure(latency_ms=2000)  # every API call takes a while: the kill lands mid-call
    stack = make_stack(config, workers=1)
    r = requests.post(stack.hook("leads"), json=LEAD, timeout=5)
    assert r.status_code == 202
    delivery_id = r.json()["deliveryId"]
    victim = stack.processes["worker1"]
    deadline = time.monotonic() + 30  # hang guard
    while not stack.redis.exists(keys.lease(delivery_id)):
        assert time.monotonic() < deadline, "the worker never started the delivery"
        time.sleep(0.02)
    victim.send_signal(signal.SIGSTOP)  # frozen: what we see now is what it held when killed
    held = stack.store.get(delivery_id)
    assert held.status == "delivering" and stack.redis.exists(keys.lease(delivery_id))
    victim.kill()
    victim.wait(10)
    sandbox.configure(latency_ms=0)
    # Its lease would lapse within 15 s; expire it now and make the delivery due for a look.
    stack.redis.delete(keys.lease(delivery_id))
    stack.redis.zadd(keys.ACTIVE, {delivery_id: time.time() - 1})
    assert stack.store.get(delivery_id).status == "delivering"  # nobody else touches it
    stack.start_worker("rescuer")
    done = stack.wait_for(delivery_id, timeout=60)
    recovered = [h for h in stack.store.history(delivery_id) if h["what"] == "recovered"]
    assert len(recovered) == 1
    assert "its worker stopped mid-delivery" in recovered[0]["detail"]
    assert done["status"] == "delivered"
    assert stack.store.get(delivery_id).job_id == f"{delivery_id}-2"
    [contact] = sandbox.org_state()["contacts"]  # the killed call's write counted once
    assert contact["phoneNumber"] == "+919876543210" and done["contactId"] == contact["id"]
