"""Admitting a webhook's leads (``bridge.admission``) on a real Redis: one round trip claims and
stores, duplicates name the first delivery, a claim whose delivery was never stored is taken
over, and a refused write leaves nothing behind."""

import secrets

import pytest
from redis import Redis

from bridge import keys
from tests.redis_commands import CommandCount
from tests.sources import harness
from tests.sources import test_shopify as shopify

LEAD = {"name": "Priya Sharma", "phone": "098765 43210", "city": "Mumbai"}


def lead(n: int) -> dict:
    return {"name": f"Lead {n}", "phone": f"98765{n:05d}", "city": "Pune"}


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
    assert ran[0][0] == "SET" and "NX" in ran[0]  # the dedup claim comes first
    assert {"HSET", "ZADD", "HINCRBY"} <= {command[0] for command in ran}
    stored = client.store.get(answers[0].json["deliveryId"])
    assert stored.status == "queued" and stored.contact["phoneNumber"] == "+919876543210"


def test_a_webhook_costs_fewer_redis_commands_than_claim_then_transaction(make_client):
    """Before: SET NX, then MULTI, 18 writes, EXEC (21). Now the script and what it runs (the
    history has no list of its own to push to and trim)."""
    client = make_client()
    client.post("/hooks/leads", json=lead(0))
    client.post("/hooks/leads", json=lead(1))  # the lane's drain is started: later leads join

    with CommandCount(client.redis) as seen:
        assert client.post("/hooks/leads", json=LEAD).status_code == 202

    assert seen.calls["evalsha"] == 1
    assert "multi" not in seen.calls and "exec" not in seen.calls
    # the script, 3 SETs (claim, raw, trigger), the record, history and route HSETs, 4 ZADDs...
    assert seen.total <= 17, seen.calls


def test_a_duplicate_names_the_first_delivery_and_writes_nothing_of_its_own(make_client):
    client = make_client()
    first = client.post("/hooks/leads", json=LEAD)

    with CommandCount(client.redis) as seen:
        again = client.post("/hooks/leads", json=LEAD)

    assert again.status_code == 200
    assert again.json["deliveryId"] == first.json["deliveryId"]
    # the claim that lost and the duplicate counter: no record, ticket or raw request
    assert seen.write_calls == {"set": 1, "hincrby": 2, "expire": 1}, seen.write_calls
    assert client.store.counts()["received"] == 1


def test_a_claim_whose_delivery_was_never_stored_is_taken_over(make_client):
    """A process that died between claiming and storing (the two used to be separate round
    trips) left a dedup key naming a delivery that does not exist: the lead is not lost."""
    client = make_client()
    event_id = "form-submission-77"
    key = keys.dedup("leads", event_id)
    client.redis.set(key, "d-never-stored", ex=3600)

    taken = client.post("/hooks/leads", json=LEAD, headers={"Idempotency-Key": event_id})

    assert taken.status_code == 202
    delivery_id = taken.json["deliveryId"]
    assert client.store.get(delivery_id).status == "queued"
    assert client.redis.get(key).decode() == delivery_id
    again = client.post("/hooks/leads", json=LEAD, headers={"Idempotency-Key": event_id})
    assert again.status_code == 200 and again.json["deliveryId"] == delivery_id


def test_a_body_claim_whose_delivery_was_never_stored_is_taken_over(make_client):
    client = make_client(routes=[shopify.ROUTE_DATA])
    captured = shopify.signed()
    body_key = keys.dedup(shopify.ROUTE_DATA["name"], f"body:{captured.body_hash}")
    client.redis.set(body_key, "d-never-stored", ex=3600)

    taken = harness.post(client, captured)

    assert taken.status_code == 202
    delivery_id = taken.get_json()["deliveryId"]
    assert client.redis.get(body_key).decode() == delivery_id
    # the same body under a new (unsigned) id is now a duplicate of the delivery that took over
    renamed = harness.with_headers(captured.headers, x_shopify_webhook_id="forged-id-0002")
    again = harness.post(client, harness.request(captured.body, renamed))
    assert again.status_code == 200 and again.get_json()["deliveryId"] == delivery_id
    # the renamed copy gave back the event-id key it had won
    assert not client.redis.exists(keys.dedup(shopify.ROUTE_DATA["name"], "forged-id-0002"))


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
    assert list(full_redis.scan_iter(f"{keys.dedup('leads', '*')}")) == []
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
    [lead_number] = admission.request("", [(keys.dedup(d.route, d.event.event_id), d.id)])
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
