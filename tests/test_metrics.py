"""Counters every process shares (``bridge.metrics``): kept in Redis, shown at ``/metrics`` by
whichever web process is asked, with live gauges of the queue and the deliveries: what an
operator alerts on."""

from __future__ import annotations

import time

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from redis import Redis
from rq import Queue

from bridge.metrics import count, read_counters, registry_for
from bridge.storage import connect, free_port
from jobs.ratelimit import key_id
from tests.bridge_fixtures import route_dict

LEAD = {"name": "Priya Sharma", "phone": "098765 43210", "city": "Mumbai"}


def metrics(client) -> str:
    r = client.get("/metrics")
    assert r.status_code == 200 and r.mimetype == "text/plain", r.status_code
    return r.get_data(as_text=True)


def lead(i: int) -> dict:
    return {"name": f"Lead {i}", "phone": f"98765432{i:02d}"}


def test_ingest_outcomes_are_counted(make_client):
    client = make_client(routes=[route_dict(), route_dict(name="locked", token="s3cret-token")])
    client.post("/hooks/leads", json=LEAD)
    client.post("/hooks/leads", json=LEAD)
    client.post("/hooks/locked", json=LEAD)
    text = metrics(client)
    assert 'oliai_bridge_queued_total{route="leads"} 1.0' in text
    assert 'oliai_bridge_duplicate_total{route="leads"} 1.0' in text
    assert 'oliai_bridge_rejected_total{reason="missing_token",route="locked"} 1.0' in text
    assert 'oliai_bridge_queue_depth{state="queued"} 1.0' in text


def test_every_web_process_shows_the_same_totals(make_client):
    one, two = make_client(), make_client()  # two apps, one Redis: two gunicorn workers
    assert one.post("/hooks/leads", json=lead(1)).status_code == 202
    assert two.post("/hooks/leads", json=lead(2)).status_code == 202
    for client in (one, two):
        assert 'oliai_bridge_queued_total{route="leads"} 2.0' in metrics(client)


def test_refusals_are_counted_by_reason(make_client):
    client = make_client()
    client.post("/hooks/leads", json={"name": "No Phone"})
    client.post("/hooks/leads", data=b"{", content_type="application/json")
    client.post("/hooks/" + "x" * 100, json=LEAD)
    text = metrics(client)
    assert 'oliai_bridge_rejected_total{reason="unmappable",route="leads"} 1.0' in text
    assert 'oliai_bridge_rejected_total{reason="malformed_body",route="leads"} 1.0' in text
    # an unknown route is counted under one label: its name is the sender's to choose, and a
    # counter per made-up name would let a flood fill Redis (docs/security.md)
    assert 'oliai_bridge_rejected_total{reason="unknown_route",route="(unknown)"} 1.0' in text
    assert "x" * 64 not in text


def test_worker_outcomes_are_counted(make_client, run_jobs, sandbox):
    good = make_client()
    sandbox.configure(fail_rate=1.0)
    good.post("/hooks/leads", json=lead(1))
    run_jobs(good.settings)  # a 500: retried later
    text = metrics(good)
    assert 'oliai_bridge_retried_total{cause="transient",route="leads"} 1.0' in text
    assert 'oliai_bridge_queue_depth{state="scheduled"} 1.0' in text
    assert 'oliai_bridge_deliveries{state="active"} 1.0' in text
    sandbox.configure(fail_rate=0.0)
    run_jobs(good.settings, promote_scheduled=True)
    bad = make_client(routes=[route_dict(name="typo", audience_name=None, audience_id="aud_x")])
    bad.post("/hooks/typo", json=lead(2))
    run_jobs(bad.settings)
    text = metrics(good)
    assert 'oliai_bridge_delivered_total{route="leads"} 1.0' in text
    assert 'oliai_bridge_failed_total{reason="not_found",route="typo"} 1.0' in text
    assert 'oliai_bridge_deliveries{state="active"} 0.0' in text
    assert 'oliai_bridge_deliveries{state="failed_or_skipped"} 1.0' in text
    assert 'oliai_bridge_queue_depth{state="scheduled"} 0.0' in text


def test_skipped_leads_are_counted(make_client):
    client = make_client(routes=[route_dict(name="zap", source="zapier")])
    r = client.post("/hooks/zap", json=[{"phone": "+919876543210"}, {"name": "No Phone"}])
    assert r.status_code == 202, r.json
    text = metrics(client)
    assert 'oliai_bridge_queued_total{route="zap"} 1.0' in text
    assert 'oliai_bridge_skipped_total{route="zap"} 1.0' in text


def test_a_label_holding_the_separator_stays_one_label(redis):
    count(redis, "failed", "a|b", "http_418")
    assert read_counters(redis) == {"failed|a/b|http_418": 1}
    text = generate_latest(registry_for(redis, "q")).decode()
    assert 'oliai_bridge_failed_total{reason="http_418",route="a/b"} 1.0' in text


def dead_redis() -> Redis:
    """A client connected as the app connects, to a port nothing listens on."""
    return connect(f"redis://127.0.0.1:{free_port()}")


def test_counting_never_fails_the_caller_when_redis_is_down():
    dead = dead_redis()
    count(dead, "queued", "leads")  # no exception: a metric must not turn a 202 into a 500


def test_metrics_without_redis_are_503_json(make_settings):
    from bridge.app import create_app

    dead = dead_redis()
    r = create_app(make_settings(), redis=dead).test_client().get("/metrics")
    assert r.status_code == 503
    assert r.json["error"] == "storage_unavailable"


# --- what an operator alerts on ------------------------------------------------------------


def scrape(client) -> dict[tuple[str, tuple], float]:
    """Every sample of ``/metrics`` as {(name, sorted labels): value}."""
    r = client.get("/metrics")
    assert r.status_code == 200
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(r.get_data(as_text=True))
        for s in family.samples
    }


def post(client, phone="098765 43210"):
    r = client.post("/hooks/leads", json={**LEAD, "phone": phone})
    assert r.status_code == 202, r.json
    return r.json["deliveryId"]


def test_receive_to_delivered_latency_is_a_histogram(make_client, run_jobs):
    client = make_client()
    post(client)
    post(client, "098765 43211")
    run_jobs(client.settings)
    m = scrape(client)
    route = (("route", "leads"),)
    assert m[("oliai_bridge_delivery_latency_seconds_count", route)] == 2
    assert m[("oliai_bridge_delivery_latency_seconds_bucket", (("le", "+Inf"), *route))] == 2
    assert m[("oliai_bridge_delivery_latency_seconds_sum", route)] > 0
    buckets = sorted(
        (float(dict(labels)["le"]), value)
        for (name, labels), value in m.items()
        if name == "oliai_bridge_delivery_latency_seconds_bucket"
    )
    assert [v for _, v in buckets] == sorted(v for _, v in buckets)  # cumulative
    assert m[("oliai_bridge_delivered_total", route)] == 2


def test_answers_by_status_class_429s_and_limiter_waits_per_key(make_client, run_jobs, sandbox):
    client = make_client()
    kid = key_id(sandbox.keys[0])
    post(client)
    run_jobs(client.settings)
    m = scrape(client)
    ok = m[("oliai_bridge_oliai_answers_total", (("key", kid), ("status_class", "2xx")))]
    assert ok >= 3  # contact, audience lookup/creation, membership

    sandbox.configure(general_limit=1)  # the API's own limit, below the bridge's
    post(client, "098765 43211")
    post(client, "098765 43212")
    run_jobs(client.settings)
    run_jobs(client.settings, promote_scheduled=True)  # their drain's next run: a wake-up
    m = scrape(client)
    assert m[("oliai_bridge_oliai_rate_limited_total", (("key", kid),))] >= 1
    assert m[("oliai_bridge_oliai_answers_total", (("key", kid), ("status_class", "4xx")))] >= 1
    # the 429 paused the key: the next delivery waited for the limiter instead of calling
    assert m[("oliai_bridge_limiter_waits_total", (("key", kid),))] >= 1
    assert m[("oliai_bridge_limiter_wait_seconds_total", (("key", kid),))] > 0
    assert sandbox.keys[0] not in client.get("/metrics").get_data(as_text=True)


def test_queue_depth_and_oldest_waiting_job_per_queue(make_client, run_jobs):
    client = make_client()
    main = client.settings.queue_name
    m = scrape(client)
    assert m[("oliai_bridge_queue_oldest_age_seconds", (("queue", main),))] == 0
    post(client)
    post(client, "098765 43211")
    lane = Queue(f"{main}-backfill", connection=client.redis)
    lane.enqueue("jobs.deliver.deliver", "dlv_not_a_real_one")
    time.sleep(0.05)
    m = scrape(client)
    # the two leads wait in their lane; one job drains it
    assert m[("oliai_bridge_queue_jobs", (("queue", main), ("state", "queued")))] == 1
    kid = key_id(client.settings.oliai.api_key)
    assert m[("oliai_bridge_lane_leads", (("key", kid), ("lane", "live"), ("state", "ready")))] == 2
    assert m[("oliai_bridge_queue_jobs", (("queue", lane.name), ("state", "queued")))] == 1
    assert m[("oliai_bridge_queue_oldest_age_seconds", (("queue", main),))] > 0
    assert m[("oliai_bridge_queue_oldest_age_seconds", (("queue", lane.name),))] > 0
    lane.empty()
    run_jobs(client.settings)
    m = scrape(client)
    assert m[("oliai_bridge_queue_jobs", (("queue", main), ("state", "queued")))] == 0
    assert m[("oliai_bridge_queue_oldest_age_seconds", (("queue", main),))] == 0
    assert m[("oliai_bridge_lane_leads", (("key", kid), ("lane", "live"), ("state", "ready")))] == 0


def test_redis_memory_against_maxmemory_and_a_policy_that_may_evict(make_client, redis):
    client = make_client()
    m = scrape(client)
    assert m[("oliai_bridge_redis_used_memory_bytes", ())] > 0
    assert m[("oliai_bridge_redis_maxmemory_bytes", ())] == 0
    assert m[("oliai_bridge_redis_may_evict", (("policy", "noeviction"),))] == 0


def test_an_evicting_redis_shows_in_metrics_and_readyz(make_client, evicting_redis):
    client = make_client()
    m = scrape(client)
    assert m[("oliai_bridge_redis_maxmemory_bytes", ())] == 512 * 1024 * 1024
    assert m[("oliai_bridge_redis_may_evict", (("policy", "allkeys-lru"),))] == 1
    ready = client.get("/readyz")
    assert ready.status_code == 200  # still ready: restarting would not help
    [warning] = ready.json["warnings"]
    assert "maxmemory-policy is allkeys-lru" in warning and "noeviction" in warning
