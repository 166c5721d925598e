"""Whole flows over real sockets: gunicorn web, RQ worker processes, Redis, the sandbox."""

import time

import pytest
import requests

from tests.bridge_fixtures import route_dict

pytestmark = pytest.mark.e2e

LEAD = {"name": "Priya Sharma", "phone": "098765 43210", "city": "Mumbai"}


def config(sandbox, **oliai):
    return {
        "oliai": {
            "rate_window_seconds": 2,
            "general_per_minute": 1000,
            "bulk_per_minute": 100,
            "timeout_seconds": 3,
            **oliai,
        },
        "delivery": {"retry_base_seconds": 0.3, "retry_max_seconds": 2, "max_attempts": 6},
        "routes": [
            route_dict(),
            route_dict(name="form", token="form-token", audience_name="Form leads"),
        ],
    }


def wait_contacts(sandbox, count, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        contacts = sandbox.org_state()["contacts"]
        if len(contacts) >= count:
            return contacts
        time.sleep(0.02)
    raise AssertionError(f"{len(sandbox.org_state()['contacts'])} contacts, wanted {count}")


def test_a_lead_becomes_one_contact_in_its_audience(make_stack, sandbox):
    """How fast is for bench/ to measure; the timeout here only keeps a hang from stalling the
    suite."""
    stack = make_stack(config(sandbox))
    r = requests.post(stack.hook("leads"), json=LEAD, timeout=5)
    assert r.status_code == 202
    [contact] = wait_contacts(sandbox, 1, timeout=30.0)
    assert contact["phoneNumber"] == "+919876543210"
    delivery = stack.wait_for(r.json()["deliveryId"])
    [audience] = sandbox.org_state()["audiences"]
    assert audience["contactIds"] == [contact["id"]]
    assert delivery["contactId"] == contact["id"]
    assert [c["id"] for c in sandbox.org_state()["contacts"]] == [contact["id"]]


def test_form_post_with_query_token_and_no_secret_in_logs(make_stack, sandbox):
    stack = make_stack(config(sandbox))
    r = requests.post(
        stack.hook("form") + "?token=form-token",
        data={"first_name": "Ravi", "last_name": "Kumar", "mobile": "0091 98765 43210"},
        timeout=5,
    )
    assert r.status_code == 202
    stack.wait_for(r.json()["deliveryId"])
    bad = requests.post(stack.hook("form") + "?token=wrong", data={"mobile": "1"}, timeout=5)
    assert bad.status_code == 401
    [contact] = sandbox.org_state()["contacts"]
    assert contact["name"] == "Ravi Kumar"
    time.sleep(0.3)  # let the access log flush
    logs = stack.log_text()
    assert "/hooks/form" in logs  # the access log is on...
    assert "form-token" not in logs and sandbox.keys[0] not in logs  # ...without secrets


def test_429_pauses_the_key_for_every_worker_until_retry_after(make_stack, sandbox):
    # Leads that queue up go out together, so a window of 3 is what the 8 leads overrun.
    sandbox.configure(general_limit=3)
    stack = make_stack(config(sandbox), workers=2)
    ids = []
    for i in range(8):
        r = requests.post(
            stack.hook("leads"), json={"name": f"L{i}", "phone": f"98765432{i:02d}"}, timeout=5
        )
        assert r.status_code == 202
        ids.append(r.json()["deliveryId"])
    for delivery_id in ids:
        stack.wait_for(delivery_id, timeout=30)
    log = sandbox.requests()
    limited = [e for e in log if e["status"] == 429]
    assert limited, "the sandbox never answered 429: the test proves nothing"
    for e in limited:
        until = e["ts"] + float(e["retry_after"])
        early = [
            x for x in log if e["ts"] < x["ts"] < until and x["org"] == e["org"] and x is not e
        ]
        # a request already in flight when the 429 came back may land just after it
        assert all(x["ts"] - e["ts"] < 0.05 for x in early), (e, early)
    phones = [c["phoneNumber"] for c in sandbox.org_state()["contacts"]]
    assert len(phones) == len(set(phones)) == 8


def test_redis_down_is_503_and_a_restart_loses_nothing(make_stack, sandbox, redis_server):
    stack = make_stack(config(sandbox))
    stack.processes["worker1"].terminate()
    stack.processes["worker1"].wait(15)
    ids = []
    for i in range(5):
        r = requests.post(
            stack.hook("leads"), json={"name": f"L{i}", "phone": f"98765432{i:02d}"}, timeout=5
        )
        assert r.status_code == 202
        ids.append(r.json()["deliveryId"])
    redis_server.kill()  # a crash, not a clean shutdown: only the append-only file survives
    r = requests.post(stack.hook("leads"), json=LEAD, timeout=10)
    assert r.status_code == 503
    assert r.headers["Retry-After"]
    assert r.json()["error"] == "storage_unavailable"
    assert requests.get(f"{stack.url}/readyz", timeout=10).status_code == 503
    redis_server.start()
    stack.start_worker("worker-after-restart")
    for delivery_id in ids:
        stack.wait_for(delivery_id, timeout=20)
    assert len(sandbox.org_state()["contacts"]) == 5
    # and the web side is back without a restart
    assert requests.post(stack.hook("leads"), json=LEAD, timeout=5).status_code == 202


def test_sigterm_lets_the_worker_finish_its_job(make_stack, sandbox):
    sandbox.configure(latency_ms=300)
    stack = make_stack(config(sandbox))
    r = requests.post(stack.hook("leads"), json=LEAD, timeout=5)
    deadline = time.monotonic() + 5
    while stack.store.get(r.json()["deliveryId"]).status == "queued":
        assert time.monotonic() < deadline
        time.sleep(0.01)
    stack.processes["worker1"].terminate()  # SIGTERM mid-delivery, as Heroku does
    assert stack.processes["worker1"].wait(30) == 0
    assert stack.store.get(r.json()["deliveryId"]).status == "delivered"


def test_sigterm_stops_an_idle_worker_at_once(make_stack, sandbox):
    stack = make_stack(config(sandbox))
    time.sleep(1.0)  # let it settle into waiting for jobs
    started = time.monotonic()
    stack.processes["worker1"].terminate()
    assert stack.processes["worker1"].wait(15) == 0
    assert time.monotonic() - started < 10


def test_webhooks_at_the_same_moment_are_each_stored_once_and_answered_apart(make_stack, sandbox):
    """Many senders at once on ``oliai-bridge web``: requests that reach Redis together share
    one call (``bridge.commit``), yet each is answered for its own leads, and two copies of one
    event sent at the same moment are one lead: the other answered as its duplicate."""
    from concurrent.futures import ThreadPoolExecutor

    stack = make_stack(config(sandbox), workers=0)
    calls_before = stack.redis.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0)

    def post(n: int) -> tuple[int, dict]:
        lead = {"name": f"Lead {n % 100}", "phone": f"+91 98765 {n % 100:05d}"}
        headers = {"Idempotency-Key": f"event-{n % 100}"}  # n and n + 100: one event, twice
        with requests.Session() as session:
            r = session.post(stack.hook("leads"), json=lead, headers=headers, timeout=30)
        return n, r.status_code, r.json()

    with ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(post, range(200)))
    by_event: dict[int, list[tuple[int, dict]]] = {}
    for n, status, body in answers:
        by_event.setdefault(n % 100, []).append((status, body))
    for event, answered in by_event.items():
        (queued, one), (duplicate, other) = sorted(
            answered, key=lambda a: a[1]["status"] != "queued"
        )
        assert (queued, one["status"], duplicate, other["status"]) == (
            202,
            "queued",
            200,
            "duplicate",
        )
        assert one["deliveryId"] == other["deliveryId"]  # the duplicate names the first
        delivery = stack.store.get(one["deliveryId"])
        assert delivery.contact["phoneNumber"] == f"+919876500{event:03d}"
    assert stack.store.counts()["received"] == 100  # and not one more
    calls = stack.redis.info("commandstats")["cmdstat_evalsha"]["calls"] - calls_before
    assert calls < 200  # some requests went together
