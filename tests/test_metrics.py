"""``/metrics``: what an operator alerts on, counted in Redis so that every process counts."""

import time

from prometheus_client.parser import text_string_to_metric_families
from rq import Queue

from jobs.ratelimit import key_id

LEAD = {"name": "Priya Sharma", "phone": "098765 43210", "city": "Mumbai"}


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
    assert m[("oliai_bridge_queue_jobs", (("queue", main), ("state", "queued")))] == 2
    assert m[("oliai_bridge_queue_jobs", (("queue", lane.name), ("state", "queued")))] == 1
    assert m[("oliai_bridge_queue_oldest_age_seconds", (("queue", main),))] > 0
    assert m[("oliai_bridge_queue_oldest_age_seconds", (("queue", lane.name),))] > 0
    lane.empty()
    run_jobs(client.settings)
    m = scrape(client)
    assert m[("oliai_bridge_queue_jobs", (("queue", main), ("state", "queued")))] == 0
    assert m[("oliai_bridge_queue_oldest_age_seconds", (("queue", main),))] == 0


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
