"""The commands a person uses when something went wrong: try, failed list/show, replay (the same
over HTTP is in ``tests/test_admin.py``)."""

import json
import time
from dataclasses import replace

import pytest

from bridge import keys
from bridge.__main__ import command_of
from bridge.deliveries import Delivery, DeliveryStore
from bridge.event import Event
from tests.bridge_fixtures import route_dict


def config_for(route):
    return {"delivery": {"max_attempts": 2, "retry_base_seconds": 0.1}, "routes": [route]}


def test_try_shows_the_event_and_the_contact(cli, tmp_path):
    sample = tmp_path / "lead.json"
    sample.write_text(
        json.dumps(
            {
                "first_name": "Ravi",
                "last_name": "Kumar",
                "mobile": "0091 98765 43210",
                "utm_source": "fb",
            }
        )
    )
    r = cli(config_for(route_dict()), "try", "leads", str(sample))
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    [lead] = out["leads"]
    assert lead["event"]["fields"]["utm_source"] == "fb"
    assert lead["contact"] == {
        "name": "Ravi Kumar",
        "phoneNumber": "+919876543210",
        "metadata": {"utm_source": "fb"},
    }
    assert out["note"] == "signature not checked; nothing sent"


def test_try_explains_an_unmappable_sample(cli):
    r = cli(config_for(route_dict()), "try", "leads", "-", stdin=b'{"name": "No Phone"}')
    assert r.returncode == 1
    [lead] = json.loads(r.stdout)["leads"]
    assert lead["error"]["field"] == "phoneNumber"


FORM = b"first_name=Ravi&last_name=Kumar&mobile=0091+98765+43210"


def test_try_reads_the_body_as_content_type_says(cli, tmp_path):
    sample = tmp_path / "lead.json"  # the extension says JSON; the body is a form
    sample.write_bytes(FORM)
    guessed = cli(config_for(route_dict()), "try", "leads", str(sample))
    assert guessed.returncode == 1
    assert json.loads(guessed.stdout)["error"]["error"] == "malformed_body"
    for option in (
        ["--content-type", "application/x-www-form-urlencoded"],
        ["-H", "Content-Type: application/x-www-form-urlencoded"],
        ["-H", "Content-Type: text/xml", "--content-type", "application/x-www-form-urlencoded"],
    ):
        r = cli(config_for(route_dict()), "try", "leads", str(sample), *option)
        assert r.returncode == 0, (option, r.stdout, r.stderr)
        [lead] = json.loads(r.stdout)["leads"]
        assert lead["contact"]["name"] == "Ravi Kumar", option
        assert lead["contact"]["phoneNumber"] == "+919876543210", option


def test_try_passes_headers_to_the_adapter(cli):
    body = b'{"name": "Asha", "phone": "9876543210"}'
    config = config_for(route_dict())
    plain = json.loads(cli(config, "try", "leads", "-", stdin=body).stdout)
    keyed = json.loads(
        cli(config, "try", "leads", "-", "-H", "Idempotency-Key:  order-9 ", stdin=body).stdout
    )
    assert keyed["leads"][0]["event"]["event_id"] == "order-9"
    assert plain["leads"][0]["event"]["event_id"] != "order-9"  # the body hash without it


def failed_delivery(client, run_jobs, body):
    r = client.post("/hooks/leads", json=body)
    assert r.status_code == 202
    run_jobs(client.settings)
    return r.json["deliveryId"]


def test_failed_list_show_and_replay_with_remap(cli, make_client, run_jobs, sandbox):
    # A typo in the route's audience id: every delivery fails with the API's 404.
    bad_route = route_dict(
        audience_name=None, audience_id="aud_typo", fields={"phoneNumber": "fields.tel"}
    )
    client = make_client(routes=[bad_route])
    ids = [
        failed_delivery(client, run_jobs, {"name": f"Lead {i}", "tel": f"98765432{i:02d}"})
        for i in range(3)
    ]
    assert {client.store.get(i).status for i in ids} == {"failed"}

    listed = cli(config_for(bad_route), "failed", "list")
    assert listed.returncode == 0, listed.stderr
    text = listed.stdout
    assert text.startswith("3 failed/skipped deliveries (page 1 of 1)")
    assert all(i in text for i in ids)
    assert "not_found" in text and "404" in text
    assert sandbox.keys[0] not in text

    as_json = json.loads(
        cli(
            config_for(bad_route),
            "failed",
            "list",
            "--json",
            "--reason",
            "not_found",
            "--since",
            "1h",
        ).stdout
    )
    assert as_json["total"] == 3
    assert {i["route"] for i in as_json["items"]} == {"leads"}
    none = json.loads(
        cli(config_for(bad_route), "failed", "list", "--json", "--route", "other").stdout
    )
    assert none["total"] == 0

    shown = json.loads(cli(config_for(bad_route), "failed", "show", ids[0]).stdout)
    assert json.loads(shown["raw"]["body"]) == {"name": "Lead 0", "tel": "9876543200"}
    assert shown["contact"]["phoneNumber"] == "+919876543200"
    whats = [h["what"] for h in shown["history"]]
    assert whats[:3] == ["received", "queued", "attempt"] and whats[-1] == "failed"

    # fix the config: the right audience (by name) and a corrected mapping, then replay
    good_route = route_dict(
        fields={"phoneNumber": "fields.tel", "name": "join(' ', [fields.name, '(replayed)'])"}
    )
    dry = cli(config_for(good_route), "replay", "--all", "--dry-run", "--remap")
    assert dry.returncode == 0
    assert "would requeue 3 of 3" in dry.stdout
    assert client.store.get(ids[0]).status == "failed"

    done = cli(config_for(good_route), "replay", "--all", "--remap")
    assert done.returncode == 0, done.stderr
    assert "requeued 3 of 3" in done.stdout
    assert "[##############################] 3/3" in done.stderr
    fixed = replace(
        client.settings,
        routes={
            "leads": replace(
                client.settings.routes["leads"],
                audience_id=None,
                audience_name="Test leads",
                fields={"phoneNumber": "fields.tel"},
            )
        },
    )
    run_jobs(fixed)
    assert {client.store.get(i).status for i in ids} == {"delivered"}
    # and they are off every failed list, the per-reason and per-route ones included
    assert client.store.failed_ids()[1] == 0
    assert client.store.failed_ids(reason="not_found")[1] == 0
    assert client.store.failed_ids(route="leads")[1] == 0
    names = sorted(c["name"] for c in sandbox.org_state()["contacts"])
    assert names == ["Lead 0 (replayed)", "Lead 1 (replayed)", "Lead 2 (replayed)"]

    # replaying what is delivered is a no-op
    again = cli(config_for(good_route), "replay", ids[0])
    assert "already_delivered: 1" in again.stdout
    assert len(sandbox.org_state()["contacts"]) == 3


def test_replay_of_a_skipped_submission_after_fixing_the_mapping(
    cli, make_client, run_jobs, redis, sandbox
):
    # a provider source that accepts unmappable submissions records them as skipped
    from bridge.deliveries import new_delivery_id
    from bridge.event import utcnow_iso

    store = DeliveryStore(redis)
    d = Delivery(
        id=new_delivery_id(),
        route="leads",
        source="generic",
        status="skipped",
        event=Event(
            route="leads",
            source="generic",
            event_id="e1",
            received_at=utcnow_iso(),
            fields={"name": "Asha", "whatsapp_no": "9876543210"},
        ),
        received_at=utcnow_iso(),
        reason_code="unmappable",
        reason="no phone",
    )
    pipe = store.redis.pipeline()
    store.add(pipe, d)
    pipe.execute()
    route = route_dict(fields={"phoneNumber": "fields.whatsapp_no"})
    r = cli(config_for(route), "replay", d.id)
    assert "requeued 1 of 1" in r.stdout, r.stderr
    client = make_client(routes=[route])
    run_jobs(client.settings)
    assert store.get(d.id).status == "delivered"


def test_failed_list_pages_through_100000_failures(cli, redis):
    store = DeliveryStore(redis)
    now = time.time()
    pipe = redis.pipeline(transaction=False)
    event = Event(route="leads", source="generic", event_id="e", received_at="t", fields={})
    for i in range(100_000):
        d = Delivery(
            id=f"dlv_{i:06d}",
            route="leads",
            source="generic",
            status="failed",
            event=event,
            received_at="2026-01-01T00:00:00.000Z",
            updated_at="2026-01-01T00:00:00.000Z",
            reason_code="invalid",
            reason=f"bad {i}",
        )
        pipe.hset(f"oliai-bridge:d:{d.id}", mapping=d.to_hash())
        pipe.zadd("oliai-bridge:idx:failed", {d.id: now + i})
        if i % 5000 == 4999:
            pipe.execute()
    pipe.execute()
    r = cli(config_for(route_dict()), "failed", "list", "--limit", "20", "--page", "3")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "100000 failed/skipped deliveries (page 3 of 5000)"
    assert lines[2].startswith("dlv_099959")  # newest first: 40 skipped
    assert len(lines) == 22
    assert store.failed_ids(limit=1)[1] == 100_000


def test_replay_selects_by_route_reason_and_since(cli, make_client, run_jobs, sandbox):
    typo = route_dict(audience_name=None, audience_id="aud_typo")  # 404: not_found
    revoked = route_dict(name="agency", api_key=sandbox.revoked_key)  # 401: unauthorized
    client = make_client(routes=[typo, revoked])
    old, recent = (
        failed_delivery(client, run_jobs, {"name": n, "phone": p})
        for n, p in (
            ("Old", "9876543201"),
            ("Recent", "9876543202"),
        )
    )
    r = client.post("/hooks/agency", json={"name": "Agency", "phone": "9876543203"})
    run_jobs(client.settings)
    agency = r.json["deliveryId"]
    assert client.store.get(agency).reason_code == "unauthorized"
    two_hours_ago = time.time() - 7200
    for key in (keys.FAILED, keys.failed_by_route("leads"), keys.failed_by_reason("not_found")):
        client.redis.zadd(key, {old: two_hours_ago})
    config = {"routes": [typo, revoked]}

    def statuses():
        return {i: client.store.get(i).status for i in (old, recent, agency)}

    by_route = cli(config, "replay", "--route", "agency")
    assert by_route.returncode == 0, by_route.stderr
    assert "requeued 1 of 1" in by_route.stdout
    assert statuses() == {old: "failed", recent: "failed", agency: "queued"}

    recent_only = cli(config, "replay", "--reason", "not_found", "--since", "1h")
    assert "requeued 1 of 1" in recent_only.stdout
    assert statuses() == {old: "failed", recent: "queued", agency: "queued"}

    by_reason = cli(config, "replay", "--reason", "not_found")
    assert "requeued 1 of 1" in by_reason.stdout
    assert statuses() == {old: "queued", recent: "queued", agency: "queued"}

    nothing = cli(config, "replay", "--reason", "not_found")
    assert "requeued 0 of 0" in nothing.stdout


def test_replay_without_a_selection_says_how_to_name_one(cli):
    r = cli(config_for(route_dict()), "replay")
    assert r.returncode == 2
    assert "--route / --reason / --since, or --all" in r.stderr


@pytest.mark.parametrize(
    ("argv", "command"),
    [
        (["web"], "web"),
        (["--config", "web.toml", "web", "--port", "8000"], "web"),
        (["--config=web.toml", "worker"], "worker"),
        (["--config", "web"], None),  # the config file is named web
        (["-h"], None),
    ],
)
def test_the_entry_point_finds_the_command_before_anything_is_imported(argv, command):
    # `web` decides whether gevent patches the standard library first (bridge/__main__.py).
    assert command_of(argv) == command
