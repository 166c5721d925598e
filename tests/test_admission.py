"""Admitting a webhook's leads (``bridge.admission``) on a real Redis: one round trip claims and
stores, duplicates name the first delivery, a claim whose delivery was never stored is taken
over, and a refused write leaves nothing behind."""

import secrets
import time

import pytest
from redis import Redis

from bridge import keys
from bridge.admission import Claim
from bridge.defaults import DEDUP_BUCKET_SECONDS, DEDUP_TTL_SECONDS
from tests.redis_commands import CommandCount
from tests.sources import harness
from tests.sources import test_shopify as shopify

LEAD = {"name": "Priya Sharma", "phone": "098765 43210", "city": "Mumbai"}


def lead(n: int) -> dict:
    return {"name": f"Lead {n}", "phone": f"98765{n:05d}", "city": "Pune"}


def buckets(redis: Redis) -> list[str]:
    """The day buckets of dedup claims in Redis (not the legacy keys, ``dedup:<route>:...``)."""
    names = (k.decode() for k in redis.scan_iter(keys.dedup_day("*")))
    return sorted(name for name in names if name.removeprefix(keys.dedup_day("")).isdigit())


def claim_of(client, event_id: str) -> tuple[str, bytes]:
    """(bucket, field) of the claim the ``leads`` route holds on ``event_id``."""
    field = Claim("leads", event_id).field
    [bucket] = [b for b in buckets(client.redis) if client.redis.hexists(b, field)]
    return bucket, field


def commands_sent(redis: Redis, action) -> list[tuple[str, str]]:
    """(client, command) for every command Redis ran during ``action()``, as MONITOR shows
    them: ``client`` is ``lua`` for the commands a script ran, else the client's address."""
    marker = f"end-of-action-{secrets.token_hex(4)}"
    seen = []
    with redis.monitor() as monitor:
        action()
        redis.echo(marker)  # on another connection of the pool
        for entry in monitor.listen():
            if marker in entry["command"]:
                break
            seen.append((entry["client_address"], entry["command"]))
    return seen


def test_a_webhook_is_claimed_and_stored_in_one_round_trip(make_client):
    client = make_client()
    assert client.post("/hooks/leads", json=lead(0)).status_code == 202  # the script is loaded

    answers = []
    seen = commands_sent(
        client.redis, lambda: answers.append(client.post("/hooks/leads", json=LEAD))
    )

    assert answers[0].status_code == 202
    sent = [command.split()[0].upper() for who, command in seen if who != "lua"]
    # (MONITOR holds one of the pool's connections, so the app may open another: its HELLO)
    assert [command for command in sent if command not in ("HELLO", "CLIENT")] == ["EVALSHA"]
    ran = [command.upper().split() for who, command in seen if who == "lua"]
    # the dedup claim comes first: it looks in the window's day buckets, then writes today's
    [bucket] = buckets(client.redis)
    assert ran[0][:2] == ["HGET", bucket.upper()]
    written = [command for command in ran if command[0] not in ("HGET", "GET", "EXISTS")]
    assert written[0][:2] == ["HSET", bucket.upper()]
    assert {"HSET", "ZADD", "HINCRBY"} <= {command[0] for command in ran}
    stored = client.store.get(answers[0].json["deliveryId"])
    assert stored.status == "queued" and stored.contact["phoneNumber"] == "+919876543210"


def test_a_webhook_costs_fewer_redis_commands_than_claim_then_transaction(make_client):
    """Before: SET NX, then MULTI, 18 writes, EXEC (21). Now the script and what it runs (the
    history has no list of its own to push to and trim); the claim's look-ups in the window's
    day buckets are reads inside the script, counted apart."""
    client = make_client()
    client.post("/hooks/leads", json=lead(0))
    client.post("/hooks/leads", json=lead(1))  # the lane's drain is started: later leads join

    with CommandCount(client.redis) as seen:
        assert client.post("/hooks/leads", json=LEAD).status_code == 202

    assert seen.calls["evalsha"] == 1
    assert "multi" not in seen.calls and "exec" not in seen.calls
    # the claim reads one field of each bucket of the window (8 days for a 7-day window) and
    # the key an earlier version would have claimed it with
    window_days = DEDUP_TTL_SECONDS // DEDUP_BUCKET_SECONDS + 1
    assert (seen.calls["hget"], seen.calls["get"]) == (window_days, 1), seen.calls
    # the script, 2 SETs (raw, trigger), the claim's HSET and its bucket's EXPIREAT, the
    # record, history and route HSETs, 4 ZADDs...
    assert seen.total - window_days - 1 <= 18, seen.calls
    assert seen.writes <= 17, seen.write_calls


def test_a_duplicate_names_the_first_delivery_and_writes_nothing_of_its_own(make_client):
    client = make_client()
    first = client.post("/hooks/leads", json=LEAD)

    with CommandCount(client.redis) as seen:
        again = client.post("/hooks/leads", json=LEAD)

    assert again.status_code == 200
    assert again.json["deliveryId"] == first.json["deliveryId"]
    # the duplicate counter only: no claim, record, ticket or raw request
    assert seen.write_calls == {"hincrby": 2, "expire": 1}, seen.write_calls
    assert client.store.counts()["received"] == 1


def test_a_claim_whose_delivery_was_never_stored_is_taken_over(make_client):
    """A process that died between claiming and storing (the two used to be separate round
    trips) left a claim naming a delivery that does not exist: the lead is not lost."""
    client = make_client()
    event_id = "form-submission-77"
    client.post("/hooks/leads", json=lead(0), headers={"Idempotency-Key": event_id})
    bucket, field = claim_of(client, event_id)
    client.redis.hset(bucket, field, "d-never-stored")

    taken = client.post("/hooks/leads", json=LEAD, headers={"Idempotency-Key": event_id})

    assert taken.status_code == 202
    delivery_id = taken.json["deliveryId"]
    assert client.store.get(delivery_id).status == "queued"
    assert client.redis.hget(bucket, field).decode() == delivery_id
    again = client.post("/hooks/leads", json=LEAD, headers={"Idempotency-Key": event_id})
    assert again.status_code == 200 and again.json["deliveryId"] == delivery_id


def test_a_legacy_claim_whose_delivery_was_never_stored_is_taken_over(make_client):
    """The same, left by a version that claimed with a key per lead: the lead is stored and
    claimed in today's bucket; the legacy key is not written again."""
    client = make_client()
    event_id = "form-submission-78"
    legacy = keys.dedup("leads", event_id)
    client.redis.set(legacy, "d-never-stored", ex=3600)

    taken = client.post("/hooks/leads", json=LEAD, headers={"Idempotency-Key": event_id})

    assert taken.status_code == 202
    delivery_id = taken.json["deliveryId"]
    assert client.store.get(delivery_id).status == "queued"
    bucket, field = claim_of(client, event_id)
    assert client.redis.hget(bucket, field).decode() == delivery_id
    assert client.redis.get(legacy) == b"d-never-stored"
    again = client.post("/hooks/leads", json=LEAD, headers={"Idempotency-Key": event_id})
    assert again.status_code == 200 and again.json["deliveryId"] == delivery_id


def test_a_webhook_claimed_by_the_previous_version_is_still_a_duplicate(make_client):
    """A webhook re-sent across the upgrade: its first copy was stored by a version that
    claimed with a string key per lead (``keys.dedup``), which stays valid until it expires."""
    client = make_client()
    first = client.post("/hooks/leads", json=LEAD)
    first_id = first.json["deliveryId"]
    event_id = client.store.get(first_id).event.event_id
    # as the previous version left it: no bucket, the key naming the stored delivery
    for bucket in buckets(client.redis):
        client.redis.delete(bucket)
    legacy = keys.dedup("leads", event_id)
    client.redis.set(legacy, first_id, ex=DEDUP_TTL_SECONDS)

    again = client.post("/hooks/leads", json=LEAD)

    assert again.status_code == 200
    assert again.json == {"deliveryId": first_id, "status": "duplicate", "duplicate": True}
    assert client.store.counts()["received"] == 1
    assert buckets(client.redis) == []  # a duplicate claims nothing new
    assert 0 < client.redis.ttl(legacy) <= DEDUP_TTL_SECONDS  # left to expire as it was
    # once it has expired, the event is new again
    client.redis.delete(legacy)
    assert client.post("/hooks/leads", json=LEAD).status_code == 202


def test_a_claim_made_on_an_earlier_day_of_the_window_still_counts(make_client):
    client = make_client()
    first = client.post("/hooks/leads", json=LEAD, headers={"Idempotency-Key": "k-days"})
    bucket, field = claim_of(client, "k-days")
    today = int(bucket.rsplit(":", 1)[1])
    oldest = today - DEDUP_TTL_SECONDS // DEDUP_BUCKET_SECONDS
    # the claim moved to the oldest bucket the window reaches: it was made within the window
    # (its delivery id says when: just now), so it still counts
    client.redis.hdel(bucket, field)
    client.redis.hset(keys.dedup_day(oldest), field, first.json["deliveryId"])

    again = client.post("/hooks/leads", json=LEAD, headers={"Idempotency-Key": "k-days"})

    assert again.status_code == 200 and again.json["deliveryId"] == first.json["deliveryId"]
    # a bucket older than the window is not read: there the claim has lapsed
    client.redis.delete(keys.dedup_day(oldest))
    client.redis.hset(keys.dedup_day(oldest - 1), field, first.json["deliveryId"])
    later = client.post("/hooks/leads", json=LEAD, headers={"Idempotency-Key": "k-days"})
    assert later.status_code == 202 and later.json["deliveryId"] != first.json["deliveryId"]


def test_a_days_bucket_expires_when_its_last_claims_window_ends(make_client):
    client = make_client(bridge={"dedup_ttl_seconds": 3600})
    before = time.time()
    client.post("/hooks/leads", json=LEAD)
    after = time.time()

    [bucket] = buckets(client.redis)
    day = int(bucket.rsplit(":", 1)[1])
    assert day in {int(before // DEDUP_BUCKET_SECONDS), int(after // DEDUP_BUCKET_SECONDS)}
    # expires an hour (the window) after the day ends (epoch days are UTC days)
    pipe = client.redis.pipeline(transaction=True)  # the server's clock and the TTL at once
    (seconds, micros), left_ms = pipe.time().pttl(bucket).execute()
    expires_ms = seconds * 1000 + micros // 1000 + left_ms
    assert abs(expires_ms - ((day + 1) * DEDUP_BUCKET_SECONDS + 3600) * 1000) <= 1


def test_claims_are_fixed_size_fields_and_routes_stay_apart():
    long_id = "x" * 500
    assert len(Claim("leads", long_id).field) == len(Claim("leads", "e1").field) == 16
    assert Claim("leads", "e1").field != Claim("other", "e1").field
    # the route's length is part of what is digested: no route/event split reads as another
    assert Claim("a:b", "c").field != Claim("a", "b:c").field


def test_a_body_claim_whose_delivery_was_never_stored_is_taken_over(make_client):
    client = make_client(routes=[shopify.ROUTE_DATA])
    route = shopify.ROUTE_DATA["name"]
    captured = shopify.signed()
    body = Claim(route, f"body:{captured.body_hash}")
    client.redis.set(body.legacy_key, "d-never-stored", ex=3600)

    taken = harness.post(client, captured)

    assert taken.status_code == 202
    delivery_id = taken.get_json()["deliveryId"]
    [bucket] = buckets(client.redis)
    assert client.redis.hget(bucket, body.field).decode() == delivery_id
    # the same body under a new (unsigned) id is now a duplicate of the delivery that took over
    renamed = harness.with_headers(captured.headers, x_shopify_webhook_id="forged-id-0002")
    again = harness.post(client, harness.request(captured.body, renamed))
    assert again.status_code == 200 and again.get_json()["deliveryId"] == delivery_id
    # the renamed copy gave back the event-id claim it had won
    assert not client.redis.hexists(bucket, Claim(route, "forged-id-0002").field)


def test_a_body_claimed_by_the_previous_version_is_a_duplicate(make_client):
    client = make_client(routes=[shopify.ROUTE_DATA])
    route = shopify.ROUTE_DATA["name"]
    captured = shopify.signed()
    first_id = harness.post(client, captured).get_json()["deliveryId"]
    for bucket in buckets(client.redis):
        client.redis.delete(bucket)
    client.redis.set(Claim(route, f"body:{captured.body_hash}").legacy_key, first_id, ex=3600)

    renamed = harness.with_headers(captured.headers, x_shopify_webhook_id="forged-id-0003")
    again = harness.post(client, harness.request(captured.body, renamed))

    assert again.status_code == 200 and again.get_json()["deliveryId"] == first_id
    assert buckets(client.redis) == []  # the event-id claim it won was given back


@pytest.fixture
def full_redis(redis):
    """Redis at its ``maxmemory`` with the policy that never evicts: every write is refused."""
    redis.config_set("maxmemory-policy", "noeviction")
    redis.config_set("maxmemory", 1)
    yield redis
    redis.config_set("maxmemory", 0)


def test_a_full_redis_is_503_and_nothing_is_half_written(make_client, full_redis):
    client = make_client()
    refused = client.post("/hooks/leads", json=LEAD)
    assert refused.status_code == 503
    assert "retry later" in refused.json["message"]
    assert refused.headers["Retry-After"]

    full_redis.config_set("maxmemory", 0)
    assert list(full_redis.scan_iter(keys.dedup_day("*"))) == []  # new claims or legacy
    assert client.store.counts() == {"active": 0, "failed": 0, "received": 0}
    # the sender's retry is a new delivery, not a duplicate of one that was never stored
    retried = client.post("/hooks/leads", json=LEAD)
    assert retried.status_code == 202
    assert client.store.get(retried.json["deliveryId"]).status == "queued"


def test_a_script_call_sent_again_after_a_lost_answer_writes_nothing_twice(make_client):
    """redis-py sends a command again when the connection dropped before its answer came: the
    second run of the same call answers "admitted" and writes nothing again (no second
    history entry, counter or index entry)."""
    from bridge import metrics
    from bridge.admission import Admission
    from bridge.deliveries import DeliveryStore
    from tests.test_deliveries import delivery

    client = make_client()
    store = DeliveryStore(client.redis)
    d = delivery()
    admission = Admission(client.redis, Admission.register(client.redis), 3600)
    [lead_number] = admission.request(None, [(Claim(d.route, d.event.event_id), d.id)])
    with admission.for_leads([lead_number]) as pipe:
        store.add(pipe, d)
        store.log_on(pipe, d.id, "queued", "live lane")
        metrics.count_on(pipe, "queued", d.route)
    first, _ = admission.run()
    before = (store.history(d.id), metrics.read_counters(client.redis))
    again, _ = admission.run()  # the very same call, as a retry sends it
    assert first == again == [d.id]
    assert (store.history(d.id), metrics.read_counters(client.redis)) == before
    assert [e["what"] for e in store.history(d.id)] == ["received", "queued"]


def test_a_connection_redis_dropped_is_replaced_and_the_lead_stored_once(make_client):
    """The script call goes on one of the client's pooled connections, packed by the bridge
    itself: one Redis closed (a restart, an idle timeout) is replaced as for any command of
    the client's, and a Redis that lost its scripts is given the script again."""
    client = make_client()
    assert client.post("/hooks/leads", json=lead(0)).status_code == 202
    kwargs = client.redis.connection_pool.connection_kwargs
    killer = Redis(host=kwargs["host"], port=kwargs["port"])
    assert killer.client_kill_filter(_type="normal", skipme=True) >= 1
    r = client.post("/hooks/leads", json=LEAD)
    assert r.status_code == 202, r.json
    assert client.store.get(r.json["deliveryId"]).contact["phoneNumber"] == "+919876543210"
    again = client.post("/hooks/leads", json=LEAD)
    assert again.json["status"] == "duplicate"
    assert again.json["deliveryId"] == r.json["deliveryId"]
    client.redis.script_flush()  # a Redis that lost its scripts (restarted without them)
    assert client.post("/hooks/leads", json=lead(2)).status_code == 202


def test_a_counted_group_adds_once_per_lead_that_won_and_runs_the_rest_once(make_client):
    """The counters of leads stored together are one ``HINCRBY`` each (``for_leads(...,
    counted=True)``): it adds its increment once per lead of the group that won its claim; the
    group's other commands run once, as in any group."""
    from bridge.admission import Admission

    client = make_client()
    redis = client.redis
    admission = Admission(redis, Admission.register(redis), 3600)
    admission.request(None, [(Claim("leads", "e-old"), "dlv_old")])
    redis.hset(keys.delivery("dlv_old"), "status", "queued")  # e-old's delivery, stored before
    first, _ = admission.run()
    assert first == ["dlv_old"]

    admission = Admission(redis, Admission.register(redis), 3600)
    leads = admission.request(
        None,
        [(Claim("leads", e), f"dlv_{e}") for e in ("e-old", "e-1", "e-2", "e-3", "e-1")],
    )
    with admission.for_leads(leads, counted=True) as pipe:
        pipe.hincrby("counters", "stored", 2)
        pipe.rpush("ran", "once")
    with admission.for_leads(leads[:1], counted=True) as pipe:
        pipe.hincrby("counters", "none", 1)  # its only lead is a duplicate: nothing
    firsts, _ = admission.run()

    assert firsts == ["dlv_old", "dlv_e-1", "dlv_e-2", "dlv_e-3", "dlv_e-1"]
    assert redis.hgetall("counters") == {b"stored": b"6"}  # three won, by 2 each
    assert redis.lrange("ran", 0, -1) == [b"once"]
