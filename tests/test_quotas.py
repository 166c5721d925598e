"""Inbound quotas (``bridge.quotas``) over a real Redis: what a route and one sender address may
send a minute, what is answered above it, and what the counting costs Redis."""

from __future__ import annotations

import pytest
from redis import Redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from bridge import keys
from bridge.config import build_settings
from bridge.exceptions import ConfigError, QuotaExceeded
from bridge.quotas import Quotas, sender
from bridge.storage import free_port
from tests.bridge_fixtures import freeze_quota_clock, route_dict
from tests.redis_commands import CommandCount

LEAD = {"name": "Priya Sharma", "phone": "098765 43210"}
#: 15 s into a minute: the window ends in 45 s.
T0 = 1_000 * 60 + 15.0


class Clock:
    def __init__(self, now: float = T0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def settings_with(routes=None, **bridge):
    return build_settings({"bridge": bridge, "routes": routes or [route_dict()]}, env={})


def quotas(redis, settings, clock=None) -> Quotas:
    return Quotas(redis, settings, clock=clock or Clock())


def admitted(q: Quotas, route, count: int, address: str | None = None) -> int:
    """How many of ``count`` requests ``q`` admits."""
    n = 0
    for _ in range(count):
        try:
            q.admit(route, address)
        except QuotaExceeded:
            continue
        n += 1
    return n


# --- the quota itself --------------------------------------------------------------------------


def test_a_route_admits_its_quota_then_refuses_until_the_window_ends(redis):
    settings = settings_with(max_requests_per_minute=5)
    route = settings.routes["leads"]
    clock = Clock()
    q = quotas(redis, settings, clock)
    assert admitted(q, route, 5) == 5
    with pytest.raises(QuotaExceeded) as refused:
        q.admit(route, "203.0.113.7")
    assert refused.value.status == 429
    assert refused.value.retry_after == 45
    assert refused.value.to_dict() == {
        "error": "quota_exceeded",
        "message": "route 'leads' accepts at most 5 requests a minute "
        "(max_requests_per_minute): retry in 45 s",
        "quota": "max_requests_per_minute",
        "limit": 5,
        "retryAfter": 45,
    }
    clock.now += 45  # the next minute
    assert admitted(q, route, 5) == 5


def test_every_process_counts_against_one_shared_quota(redis):
    settings = settings_with(max_requests_per_minute=200)
    route = settings.routes["leads"]
    processes = [quotas(redis, settings), quotas(redis, settings)]
    total = sum(admitted(processes[i % 2], route, 1) for i in range(1000))
    # the processes may pass the quota by what the other has not pushed: less than a batch
    # (1/20 of the quota) each
    assert 200 <= total < 200 + 2 * 10
    for q in processes:  # and both refuse from then on
        assert admitted(q, route, 50) == 0


def test_routes_have_quotas_of_their_own(redis):
    settings = settings_with(
        routes=[route_dict(), route_dict(name="busy", max_requests_per_minute=50)],
        max_requests_per_minute=3,
    )
    q = quotas(redis, settings)
    assert admitted(q, settings.routes["leads"], 10) == 3
    assert admitted(q, settings.routes["busy"], 60) == 50


def test_the_default_quota_leaves_a_real_form_alone(redis):
    settings = settings_with()
    q = quotas(redis, settings)
    assert settings.quotas_for(settings.routes["leads"]) == (600, None)
    assert admitted(q, settings.routes["leads"], 600) == 600


def test_a_per_address_quota_counts_each_sender_apart(redis):
    settings = settings_with(
        max_requests_per_minute=10, max_requests_per_minute_per_ip=3, trusted_proxy_count=1
    )
    route = settings.routes["leads"]
    q = quotas(redis, settings)
    assert admitted(q, route, 5, "198.51.100.1") == 3
    with pytest.raises(QuotaExceeded) as refused:
        q.admit(route, "198.51.100.1")
    assert refused.value.quota == "max_requests_per_minute_per_ip"
    assert "from one address" in refused.value.message
    assert admitted(q, route, 3, "198.51.100.2") == 3
    # one host picks addresses from its /64: it is one sender
    assert admitted(q, route, 2, "2001:db8:1:2::10") == 2
    assert admitted(q, route, 2, "2001:db8:1:2:ffff::1") == 1
    assert admitted(q, route, 1, "2001:db8:1:3::10") == 1
    # the route's 10 are used up by the admitted requests alone: refused ones did not count
    with pytest.raises(QuotaExceeded) as full:
        q.admit(route, "198.51.100.3")
    assert full.value.quota == "max_requests_per_minute"


def test_a_route_may_turn_the_per_address_quota_off(redis):
    settings = settings_with(
        routes=[route_dict(), route_dict(name="zapier", max_requests_per_minute_per_ip=0)],
        max_requests_per_minute_per_ip=2,
        trusted_proxy_count=1,
    )
    q = quotas(redis, settings)
    assert admitted(q, settings.routes["leads"], 5, "192.0.2.1") == 2
    assert admitted(q, settings.routes["zapier"], 5, "192.0.2.1") == 5


def test_sender_units():
    assert sender("203.0.113.9") == "203.0.113.9"
    assert sender("2001:db8::1") == "2001:db8::/64"
    assert sender("::ffff:203.0.113.9") == "203.0.113.9"
    assert sender("not an address" * 10) == ("not an address" * 10)[:64]


# --- what it costs Redis -----------------------------------------------------------------------


def test_far_from_the_limit_a_round_trip_every_few_dozen_requests(redis):
    settings = settings_with()  # 600 a minute
    route = settings.routes["leads"]
    q = quotas(redis, settings)
    with CommandCount(redis) as seen:
        assert admitted(q, route, 300) == 300
    # batches of 1/20 of the quota: 10 round trips for 300 requests
    assert seen.calls["incrby"] == 10, seen.calls
    assert seen.writes == 2 * seen.calls["incrby"]  # INCRBY + EXPIRE, one pipeline
    assert int(redis.get(next(iter(redis.scan_iter(keys.quota("leads", "*")))))) <= 300


def test_a_flood_past_the_limit_costs_redis_nothing(redis):
    settings = settings_with(max_requests_per_minute=100)
    route = settings.routes["leads"]
    q = quotas(redis, settings)
    with CommandCount(redis) as reaching:
        assert admitted(q, route, 100) == 100
    with CommandCount(redis) as flood:
        assert admitted(q, route, 5_000) == 0
    # a round trip per twentieth of the quota up to it, none past it
    assert reaching.calls["incrby"] == 20
    assert flood.total == 0, flood.calls


def test_quota_counters_expire(redis):
    settings = settings_with(max_requests_per_minute=10)
    q = quotas(redis, settings)
    admitted(q, settings.routes["leads"], 10)
    [key] = list(redis.scan_iter(keys.quota("*", "*")))
    assert 60 < redis.ttl(key) <= 120


def test_with_redis_down_requests_are_admitted_and_counted_later(redis):
    settings = settings_with(max_requests_per_minute=5)
    route = settings.routes["leads"]
    dead = Redis(host="127.0.0.1", port=free_port(), retry=Retry(NoBackoff(), 0))
    q = quotas(dead, settings)
    assert admitted(q, route, 3) == 3  # storing them will answer 503 if Redis is still down
    q.redis = redis
    assert admitted(q, route, 5) == 2  # the three were kept and count now


# --- through the app ---------------------------------------------------------------------------


def test_over_the_quota_the_sender_gets_429_with_retry_after_and_nothing_is_stored(make_client):
    client = make_client(
        routes=[
            route_dict(max_requests_per_minute=2),
            route_dict(name="other", token="other-token"),
        ]
    )
    freeze_quota_clock(client)
    for i in range(2):
        lead = {"name": f"Lead {i}", "phone": f"98765432{i:02d}"}
        assert client.post("/hooks/leads", json=lead).status_code == 202
    received = client.store.counts().get("received", 0)
    r = client.post("/hooks/leads", json={"name": "Lead 3", "phone": "9876543203"})
    assert r.status_code == 429
    assert 1 <= int(r.headers["Retry-After"]) <= 60
    assert r.json["error"] == "quota_exceeded"
    assert r.json["quota"] == "max_requests_per_minute" and r.json["limit"] == 2
    assert "'leads'" in r.json["message"]
    assert client.store.counts().get("received", 0) == received
    # before the body is read: a body that would be malformed gets the same answer
    bad = client.post("/hooks/leads", data=b"{", content_type="application/json")
    assert bad.status_code == 429
    # the other route is untouched
    assert client.post("/hooks/other?token=other-token", json=LEAD).status_code == 202
    text = client.get("/metrics").get_data(as_text=True)
    assert 'oliai_bridge_rejected_total{reason="quota_exceeded",route="leads"} 2.0' in text


def test_every_source_gets_the_same_429_even_those_that_answer_200_to_errors(make_client):
    # LeadSquared is answered 200 for a refused lead; over the quota nothing is stored and it
    # must retry, so it sees the 429 like everyone else.
    client = make_client(
        routes=[route_dict(name="lsq", source="leadsquared", token="t", max_requests_per_minute=1)]
    )
    freeze_quota_clock(client)
    client.post("/hooks/lsq?token=t", json={"Phone": "9876543210"})
    r = client.post("/hooks/lsq?token=t", json={"Phone": "9876543211"})
    assert r.status_code == 429 and r.headers["Retry-After"]


def test_the_per_address_quota_reads_x_forwarded_for_only_behind_trusted_proxies(make_client):
    routes = [route_dict(max_requests_per_minute_per_ip=1)]
    direct = make_client(routes=routes)
    freeze_quota_clock(direct)
    # no trusted proxy: X-Forwarded-For is the client's own word, and is ignored
    for i, forwarded in enumerate(("198.51.100.1", "198.51.100.2")):
        r = direct.post(
            "/hooks/leads",
            json={"name": "A", "phone": f"987654320{i}"},
            headers={"X-Forwarded-For": forwarded},
            environ_base={"REMOTE_ADDR": "192.0.2.50"},
        )
        assert r.status_code == (202 if i == 0 else 429), r.json

    proxied = make_client(routes=routes, bridge={"trusted_proxy_count": 1})
    for i, forwarded in enumerate(("spoofed, 198.51.100.1", "spoofed, 198.51.100.2")):
        r = proxied.post(
            "/hooks/leads",
            json={"name": "B", "phone": f"987654321{i}"},
            headers={"X-Forwarded-For": forwarded},
            environ_base={"REMOTE_ADDR": "10.0.0.2"},  # the proxy
        )
        assert r.status_code == 202, r.json  # two senders, one request each


# --- configuration -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bridge", "route", "problem"),
    [
        (
            {"max_requests_per_minute": 0},
            {},
            "bridge.max_requests_per_minute: requests a route accepts a minute, "
            "a whole number from 1 to 1000000",
        ),
        (
            {},
            {"max_requests_per_minute": 2.5},
            "routes[leads].max_requests_per_minute: Not a valid integer.",
        ),
        (
            {"max_requests_per_minute_per_ip": -1},
            {},
            "bridge.max_requests_per_minute_per_ip: requests a route accepts a minute from one "
            "address, a whole number from 0 to 1000000 (0: no per-address quota)",
        ),
        (
            {"trusted_proxy_count": 11},
            {},
            "bridge.trusted_proxy_count: the number of reverse proxies in front of the bridge "
            "that append to X-Forwarded-For, from 0 to 10 (0: trust no X-Forwarded-For)",
        ),
    ],
)
def test_quota_settings_are_checked_with_named_problems(bridge, route, problem):
    with pytest.raises(ConfigError) as failed:
        build_settings({"bridge": bridge, "routes": [route_dict(**route)]}, env={})
    assert problem in failed.value.problems


def test_a_per_address_quota_without_a_trusted_proxy_is_warned_about():
    settings = settings_with(max_requests_per_minute_per_ip=30)
    assert any("trusted_proxy_count" in w for w in settings.warnings)
    assert not any(
        "trusted_proxy_count" in w
        for w in settings_with(max_requests_per_minute_per_ip=30, trusted_proxy_count=1).warnings
    )


def test_a_process_learning_of_the_limit_from_redis_answers_as_one_that_knew(make_client):
    # two web processes, one Redis: each has admitted one of the route's two requests
    routes = [route_dict(max_requests_per_minute=2)]
    one, two = make_client(routes=routes), make_client(routes=routes)
    freeze_quota_clock(one, two)
    assert one.post("/hooks/leads", json=LEAD).status_code == 202
    assert two.post("/hooks/leads", json={"name": "B", "phone": "9876543211"}).status_code == 202
    # process one still counts one: it learns of the other's only from its push to Redis
    learned = one.post("/hooks/leads", json={"name": "C", "phone": "9876543212"})
    # ... and from then on knows, answering before it reads the request (bridge.app.HookDoor)
    known = one.post("/hooks/leads", json={"name": "D", "phone": "9876543213"})
    for r in (learned, known):
        assert r.status_code == 429 and r.mimetype == "application/json"
        assert r.json["quota"] == "max_requests_per_minute" and r.json["limit"] == 2
        assert r.headers["Retry-After"] == str(r.json["retryAfter"])
    assert set(learned.json) == set(known.json)
    assert one.store.counts().get("received", 0) == 2
