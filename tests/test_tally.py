"""Refusals counted in the process (``bridge.metrics.Tally``): a flood of forged requests costs
a few Redis writes a second, and the totals at ``/metrics`` are still exact."""

from __future__ import annotations

from collections import Counter

from redis import Redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from bridge.metrics import Tally, read_counters
from bridge.storage import free_port
from tests.bridge_fixtures import freeze_quota_clock, route_dict
from tests.redis_commands import CommandCount
from tests.sources import test_typeform


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_counts_wait_for_the_interval_then_go_in_one_write_per_counter(redis):
    clock = Clock()
    tally = Tally(redis, interval=1.0, clock=clock)
    with CommandCount(redis) as within:
        for _ in range(1000):
            tally.add("rejected", "leads", "bad_signature")
        for _ in range(10):
            tally.add("rejected", "leads", "missing_header")
    assert within.total == 0
    assert read_counters(redis) == {}
    clock.now = 1.0
    with CommandCount(redis) as flush:
        tally.add("rejected", "leads", "bad_signature")  # the first count after the interval
    # per counter one HINCRBY for the totals and one for the hour's bucket, whose TTL is renewed
    assert flush.write_calls == {"hincrby": 4, "expire": 1}
    assert read_counters(redis) == {
        "rejected|leads|bad_signature": 1001,
        "rejected|leads|missing_header": 10,
    }
    assert tally.pending() == {}


def test_a_flush_redis_refused_is_kept_for_the_next(redis):
    dead = Redis(host="127.0.0.1", port=free_port(), retry=Retry(NoBackoff(), 0))
    tally = Tally(dead)
    tally.add("rejected", "leads", "bad_token", amount=3)
    tally.flush()  # no exception: counting never fails a request
    assert tally.pending() == {"rejected|leads|bad_token": 3}
    tally.redis = redis
    tally.add("rejected", "leads", "bad_token")
    tally.flush()
    assert read_counters(redis) == {"rejected|leads|bad_token": 4}


def typeform_client(make_client):
    return make_client(
        routes=[route_dict(name="typeform", source="typeform", secret=test_typeform.SECRET)]
    )


def post(client, req):
    return client.post("/hooks/typeform", data=req.body, headers=dict(req.headers))


def test_a_forged_flood_costs_a_constant_number_of_writes_and_is_counted_exactly(make_client):
    client = typeform_client(make_client)  # the default quota: 600 a minute
    forged = test_typeform.signed(secret="not-the-secret")
    tally = client.application.extensions["oliai_bridge"]["ingest"].refusals
    tally.clock = Clock()  # no second passes during the flood, as far as the tally knows
    freeze_quota_clock(client)  # ... or the quota: its minute's 600 are all there are
    answers = Counter()
    with CommandCount(client.redis) as flood:
        for _ in range(2000):
            answers[post(client, forged).status_code] += 1
        for _ in range(50):
            assert client.post("/hooks/nope", json={}).status_code == 404
    assert answers == {401: 600, 429: 1400}
    # the quota's count, in batches of 30 up to the 600 and none past them; nothing else
    assert flood.write_calls == {"incrby": 20, "expire": 20}
    assert client.store.counts().get("received", 0) == 0
    assert client.redis.keys("rq:job:*") == []

    # the counts are exact once written: /metrics writes the process's counts before answering
    text = client.get("/metrics").get_data(as_text=True)
    assert 'oliai_bridge_rejected_total{reason="bad_signature",route="typeform"} 600.0' in text
    assert 'oliai_bridge_rejected_total{reason="quota_exceeded",route="typeform"} 1400.0' in text
    # made-up route names share one label: they cannot add a counter each to Redis
    assert 'oliai_bridge_rejected_total{reason="unknown_route",route="(unknown)"} 50.0' in text
    assert not any("nope" in key for key in read_counters(client.redis))


def test_a_genuine_request_after_the_flood_is_stored(make_client):
    client = typeform_client(make_client)
    for _ in range(100):
        assert post(client, test_typeform.signed(secret="wrong")).status_code == 401
    r = post(client, test_typeform.signed())
    assert r.status_code in (200, 202), r.json
    assert client.store.get(r.json["deliveryId"]).status == "queued"
