"""Nothing lost, nothing twice — under injected faults, a killed worker and a Redis crash.

A few hundred leads go through gunicorn and two worker processes to a sandbox that answers
5xx at random and, worse, performs writes and then answers 500 or drops the connection. One
worker is SIGKILLed mid-run and Redis is killed and restarted. Leads for a route with a revoked
key fail visibly; the operator fixes the config and replays everything. Then the ledger must
balance: accepted = delivered + failed-visible, and the sandbox holds each lead exactly once,
in its audience.
"""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from rq import Worker

from bridge import keys
from tests.bridge_fixtures import REPO_ROOT, route_dict, write_config

pytestmark = pytest.mark.e2e

LEADS = 300
REVOKED_LEADS = 20
REPEATS = 30
TOKEN = "chaos-webhook-token-7f3a9c"


def chaos_config(sandbox, *, fixed: bool) -> dict:
    revoked = route_dict(name="agency", audience_name="Agency leads")
    if not fixed:
        revoked["api_key"] = sandbox.revoked_key  # the operator's mistake
    return {
        "oliai": {"rate_window_seconds": 2, "general_per_minute": 300, "timeout_seconds": 2},
        "delivery": {"retry_base_seconds": 0.3, "retry_max_seconds": 2, "max_attempts": 8},
        "routes": [route_dict(audience_name="Chaos leads", token=TOKEN), revoked],
    }


def send(url: str, body: dict, ledger: dict, lock: threading.Lock) -> None:
    """Post like a provider does: retry on 5xx and connection errors until stored."""
    for _ in range(200):
        try:
            r = requests.post(url, json=body, headers={"X-Bridge-Token": TOKEN}, timeout=5)
        except requests.RequestException:
            time.sleep(0.1)
            continue
        if r.status_code >= 500:
            time.sleep(0.1)
            continue
        with lock:
            if r.status_code == 202:
                ledger["accepted"].append(r.json()["deliveryId"])
                ledger["phone_of"][r.json()["deliveryId"]] = "+91" + body["phone"]
            elif r.status_code == 200 and r.json().get("duplicate"):
                ledger["duplicates_answered"] += 1
            else:
                ledger["refused"].append((r.status_code, r.text))
        return
    with lock:
        ledger["gave_up"] += 1


def statuses(stack, ids):
    out = {}
    for delivery_id in ids:
        d = stack.store.get(delivery_id)
        out[delivery_id] = d.status if d else "missing"
    return out


def held_by(stack, worker: str) -> str | None:
    """A delivery the worker process named ``worker`` is in the middle of, or None: its RQ job
    is a lane's drain, which holds a batch (under a live lease) whose ticket is the delivery's
    current one, and the delivery says it is being delivered."""
    for w in Worker.all(connection=stack.redis):
        if not w.name.startswith(f"{worker}-{os.getpid()}"):
            continue
        job_id = w.get_current_job_id()
        if not job_id:
            continue
        for raw in stack.redis.zrange(keys.BATCHES, 0, -1):
            batch_id = raw.decode()
            record = stack.redis.hgetall(keys.batch(batch_id))
            if record.get(b"job", b"").decode() != job_id:
                continue
            if not stack.redis.exists(keys.batch_lease(batch_id)):
                continue
            for ticket in json.loads(record.get(b"tickets") or b"[]"):
                d = stack.store.get(ticket.rsplit("-", 1)[0])
                if d is not None and d.job_id == ticket and d.status == "delivering":
                    return d.id
    return None


def kill_while_busy(stack, worker: str, deadline: float) -> str:
    """SIGKILL the worker process at a moment it holds a delivery; returns that delivery's id.

    The process is frozen (SIGSTOP) while we look, so what we see is what it holds when killed.
    """
    proc = stack.processes[worker]
    while True:
        proc.send_signal(signal.SIGSTOP)
        held = held_by(stack, worker)
        if held:
            proc.kill()
            proc.wait(10)
            return held
        proc.send_signal(signal.SIGCONT)
        assert time.monotonic() < deadline, f"{worker} never held a delivery"
        time.sleep(0.01)


def wait_settled(stack, ids, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        current = statuses(stack, ids)
        if all(s in ("delivered", "failed", "skipped") for s in current.values()):
            return current
        time.sleep(0.25)
    pending = {
        k: v for k, v in statuses(stack, ids).items() if v not in ("delivered", "failed", "skipped")
    }
    stuck = [(i, stack.store.history(i)[-4:]) for i in list(pending)[:3]]
    raise AssertionError(
        f"{len(pending)} deliveries never settled: {stuck}\n{stack.log_text()[-3000:]}"
    )


@pytest.mark.timeout(400)
def test_chaos_ledger_balances(make_stack, sandbox, redis_server):
    # Leads that queue up share requests (a bulk upsert and an audience add for many leads):
    # a small bulk cap (which the bridge has to discover) and more frequent faults make sure a
    # few dozen of those shared requests fail.
    sandbox.configure(
        fail_rate=0.15,
        fail_after_commit_rate=0.2,
        bulk_max_items=10,
        fail_after_commit_mode="mixed",
        general_limit=300,
    )
    stack = make_stack(chaos_config(sandbox, fixed=False), workers=2)
    ledger = {
        "accepted": [],
        "phone_of": {},
        "duplicates_answered": 0,
        "refused": [],
        "gave_up": 0,
    }
    lock = threading.Lock()
    bodies = [
        (stack.hook("leads"), {"name": f"Lead {i}", "phone": f"98{i:08d}"}) for i in range(LEADS)
    ]
    bodies += [
        (stack.hook("agency"), {"name": f"Agency {i}", "phone": f"97{i:08d}"})
        for i in range(REVOKED_LEADS)
    ]
    bodies += bodies[:REPEATS]  # providers re-send

    started = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(send, url, body, ledger, lock) for url, body in bodies]

        # chaos 1: SIGKILL a worker in the middle of the run, while it holds a delivery
        while len(sandbox.org_state()["contacts"]) < 40:
            assert time.monotonic() - started < 60
            time.sleep(0.1)
        interrupted = kill_while_busy(stack, "worker2", deadline=started + 90)
        killed_at = time.monotonic()

        # chaos 2: Redis crashes (SIGKILL) and comes back from its append-only file
        while len(sandbox.org_state()["contacts"]) < 120:
            assert time.monotonic() - started < 90
            time.sleep(0.1)
        redis_server.kill()
        time.sleep(0.5)
        redis_server.start()
        for f in futures:
            f.result()

    accepted = ledger["accepted"]
    assert ledger["gave_up"] == 0 and ledger["refused"] == []
    assert len(accepted) == LEADS + REVOKED_LEADS
    first = wait_settled(stack, accepted, timeout=120)
    settled_at = time.monotonic()
    failed_first = [i for i, s in first.items() if s != "delivered"]
    # The revoked key's leads failed visibly (others may have too: the sandbox's 500s can
    # outlast a lead's retries on a loaded machine).
    revoked_failed = [i for i in failed_first if stack.store.get(i).route == "agency"]
    assert len(revoked_failed) == REVOKED_LEADS
    recovered = [i for i in accepted if "recovered" in [h["what"] for h in stack.store.history(i)]]
    shown = subprocess.run(
        [sys.executable, "-m", "bridge", "failed", "show", revoked_failed[0]],
        env=stack.env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shown.returncode == 0 and "API key has been revoked" in shown.stdout
    secrets = [sandbox.keys[0], sandbox.revoked_key, TOKEN]
    assert not [s for s in secrets if s in shown.stdout]

    # the operator fixes the key, redeploys the worker, and replays everything that failed
    sandbox.configure(fail_rate=0.0, fail_after_commit_rate=0.0)
    write_config(stack.config_path, chaos_config(sandbox, fixed=True))
    stack.processes["worker1"].terminate()
    stack.processes["worker1"].wait(30)
    stack.start_worker("worker3")
    env = {**stack.env}
    replay = subprocess.run(
        [sys.executable, "-m", "bridge", "replay", "--all"],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert replay.returncode == 0, replay.stderr
    final = wait_settled(stack, accepted, timeout=60)

    delivered = [i for i, s in final.items() if s == "delivered"]
    failed_visible = [i for i, s in final.items() if s in ("failed", "skipped")]

    state = sandbox.org_state()
    phones = [c["phoneNumber"] for c in state["contacts"]]
    duplicates = len(phones) - len(set(phones))
    by_phone = {c["phoneNumber"]: c["id"] for c in state["contacts"]}
    members = {a["name"]: set(a["contactIds"]) for a in state["audiences"]}
    # Lost, as the operator would find it: an accepted lead whose contact is not in OliAI in its
    # audience, and that `failed list` does not show either.
    in_audience = set().union(*members.values()) if members else set()
    listed, _ = stack.store.failed_ids(limit=len(accepted) + 100)
    lost_ids = [
        i
        for i in accepted
        if by_phone.get(ledger["phone_of"][i]) not in in_audience and i not in set(listed)
    ]
    lost = len(lost_ids)
    delivered_contacts = {stack.store.get(i).contact_id for i in delivered}
    expected = {f"+9198{i:08d}" for i in range(LEADS)} | {
        f"+9197{i:08d}" for i in range(REVOKED_LEADS)
    }
    faults = [e for e in sandbox.requests() if e.get("fault")]

    print(
        "\nchaos ledger\n"
        f"  leads posted (incl. {REPEATS} re-sends)   {len(bodies)}\n"
        f"  accepted (202)                         {len(accepted)}\n"
        f"  answered duplicate (200)               {ledger['duplicates_answered']}\n"
        f"  settled before replay: delivered       {len(accepted) - len(failed_first)}\n"
        f"                         failed-visible  {len(failed_first)}\n"
        f"  recovered by the reaper                {len(recovered)} (held when killed: "
        f"{interrupted})\n"
        f"  after replay --all:    delivered       {len(delivered)}\n"
        f"                         failed-visible  {len(failed_visible)}\n"
        f"  lost                                   {lost}\n"
        f"  contacts in sandbox / distinct phones  {len(phones)} / {len(set(phones))}\n"
        f"  duplicates                             {duplicates}\n"
        f"  faults injected (500/drop/commit)      {len(faults)}\n"
        f"  worker killed at {killed_at - started:.1f} s, all settled at "
        f"{settled_at - started:.1f} s"
    )

    assert lost == 0, [(i, stack.store.history(i)[-3:]) for i in lost_ids[:3]]
    # the SIGKILL mattered: the delivery the killed worker held was handed back and delivered
    assert "recovered" in [h["what"] for h in stack.store.history(interrupted)]
    assert final[interrupted] == "delivered"
    assert len(delivered) + len(failed_visible) == len(accepted)
    assert ledger["duplicates_answered"] == REPEATS
    assert duplicates == 0
    assert set(phones) == expected
    assert failed_visible == []  # after the fix and the replay, everything is delivered
    assert delivered_contacts == set(by_phone.values())
    assert members["Chaos leads"] == {by_phone[f"+9198{i:08d}"] for i in range(LEADS)}
    assert members["Agency leads"] == {by_phone[f"+9197{i:08d}"] for i in range(REVOKED_LEADS)}
    assert len(faults) > 20, "the sandbox injected too few faults for this to mean anything"
    # the secrets of this run appear nowhere: not in any log, not anywhere in Redis
    logs = stack.log_text()
    assert not [s for s in secrets if s in logs]
    dump = redis_dump(stack.redis)
    assert len(dump) > 100_000  # deliveries, histories, raw payloads, RQ jobs
    assert not [s for s in secrets if s.encode() in dump]


def redis_dump(redis) -> bytes:
    """Every key and value in Redis, concatenated."""
    parts = []
    for key in redis.scan_iter(count=1000):
        kind = redis.type(key).decode()
        parts.append(key)
        if kind == "string":
            parts.append(redis.get(key) or b"")
        elif kind == "hash":
            parts.extend(k + v for k, v in redis.hgetall(key).items())
        elif kind == "list":
            parts.extend(redis.lrange(key, 0, -1))
        elif kind == "set":
            parts.extend(redis.smembers(key))
        elif kind == "zset":
            parts.extend(m for m, _ in redis.zrange(key, 0, -1, withscores=True))
    return b"\n".join(parts)
