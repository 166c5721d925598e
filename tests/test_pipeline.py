"""The one pure request → events → contacts path: ingest, ``try``, replay ``--remap`` and the
delivery job all get the same events and contacts from it."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys

import pytest

from bridge.deliveries import request_from_raw
from bridge.event import InboundRequest, Lead
from bridge.exceptions import MalformedBody, Unmappable
from bridge.pipeline import (
    MAX_LEADS_PER_REQUEST,
    fetched_event,
    map_lead,
    map_request,
    request_events,
)
from bridge.sources import get_source
from bridge.sources.base import Source
from jobs.replay import Replayer
from tests.bridge_fixtures import REPO_ROOT, write_config
from tests.sources import harness
from tests.sources import test_meta_lead_ads as meta
from tests.test_imports import imports_of, project_modules

TOKEN = "zap-token-5e1d"
ZAPIER = {"name": "zap", "source": "zapier", "audience_name": "Zap leads", "token": TOKEN}
RECEIVED_AT = "2026-01-01T00:00:00.000Z"
#: A Zap's batch: a lead with its own id, one without, one with no phone number at all.
BATCH = [
    {"event_id": "lead-1", "name": "Asha Rao", "phone": "98765 43210", "city": "Pune"},
    {"first_name": "Ravi", "last_name": "Kumar", "mobile": "+91 98123 45678"},
    {"name": "No Phone", "city": "Delhi"},
]


def batch_request(records=BATCH) -> InboundRequest:
    body = json.dumps(records).encode()
    headers = {"content-type": "application/json", "x-bridge-token": TOKEN}
    return InboundRequest(method="POST", route="zap", body=body, headers=headers)


def post(client, req: InboundRequest):
    return client.post(f"/hooks/{req.route}", data=req.body, headers=dict(req.headers))


def run_try(tmp_path, route: dict, req: InboundRequest) -> tuple[int, dict]:
    config = write_config(tmp_path / "config.toml", {"routes": [route]})
    sample = tmp_path / "sample.json"
    sample.write_bytes(req.body)
    r = subprocess.run(
        [sys.executable, "-m", "bridge", "try", route["name"], str(sample)],
        env={**os.environ, "BRIDGE_CONFIG": str(config)},
        cwd=REPO_ROOT,
        capture_output=True,
        timeout=60,
    )
    return r.returncode, json.loads(r.stdout)


def test_a_request_gives_the_same_events_and_contacts_through_ingest_and_try(make_client, tmp_path):
    client = make_client(routes=[ZAPIER])
    route = client.settings.routes["zap"]
    req = batch_request()

    answer = post(client, req)
    assert answer.status_code == 202
    stored = [client.store.get(item["deliveryId"]) for item in answer.json["deliveries"]]
    results = map_request(req, route, get_source("zapier"), stored[0].event.received_at)

    assert [r.event.to_dict() for r in results] == [d.event.to_dict() for d in stored]
    assert [r.contact for r in results] == [d.contact for d in stored]
    assert results[0].contact == {
        "name": "Asha Rao",
        "phoneNumber": "+919876543210",
        "metadata": {"city": "Pune"},
    }
    # the lead without a phone: skipped with the pure path's reason, word for word
    assert [d.status for d in stored] == ["queued", "queued", "skipped"]
    assert results[2].contact is None
    assert stored[2].reason == results[2].unmappable.message
    assert "no phone number" in stored[2].reason

    # `try` prints what the pure path returns (its own clock for the time of receipt)
    status, shown = run_try(tmp_path, ZAPIER, req)
    assert status == 1  # one lead cannot be mapped
    for item, result in zip(shown["leads"], results, strict=True):
        assert item["event"] == result.event.to_dict() | {
            "received_at": item["event"]["received_at"]
        }
        assert item.get("contact") == result.contact
    assert shown["leads"][2]["error"] == results[2].unmappable.to_dict()


def test_a_multi_lead_request_gets_one_event_id_per_lead(make_client):
    req = batch_request()
    route = harness.make_route(ZAPIER)
    events = request_events(req, route, get_source("zapier"), RECEIVED_AT)
    # the sender's id, else the body hash with the lead's place in the batch
    assert [e.event_id for e in events] == ["lead-1", f"{req.body_hash}:1", f"{req.body_hash}:2"]
    assert {e.received_at for e in events} == {RECEIVED_AT}

    # a lone lead without an id is keyed by the body hash alone
    lone = batch_request(BATCH[1:2])
    [event] = request_events(lone, route, get_source("zapier"), RECEIVED_AT)
    assert event.event_id == lone.body_hash

    # ingest keys dedup on exactly these ids: the same batch again is three duplicates
    client = make_client(routes=[ZAPIER])
    first = post(client, req).json["deliveries"]
    stored = [client.store.get(item["deliveryId"]).event.event_id for item in first]
    assert stored == [e.event_id for e in events]
    again = post(client, req)
    assert again.status_code == 200
    assert [item["status"] for item in again.json["deliveries"]] == ["duplicate"] * 3
    assert [item["deliveryId"] for item in again.json["deliveries"]] == [
        item["deliveryId"] for item in first
    ]


class EveryItemALead(Source):
    """An adapter that makes a lead of every item of a JSON array, however many."""

    name = "every_item"

    def normalize(self, req, payload, route):
        return [Lead(fields=item) for item in payload]


def test_too_many_leads_in_one_request_are_refused_wherever_it_runs():
    route = harness.make_route(ZAPIER)
    records = [{"phone": "9876543210"}] * (MAX_LEADS_PER_REQUEST + 1)
    with pytest.raises(MalformedBody, match="1001 leads in one request: at most 1000"):
        request_events(batch_request(records), route, EveryItemALead(), RECEIVED_AT)
    assert (
        len(request_events(batch_request(records[1:]), route, EveryItemALead(), RECEIVED_AT))
        == 1000
    )


def test_remap_after_a_route_mapping_change(make_client, make_settings, run_jobs, redis, sandbox):
    # The alternate number sits in a field no guess finds: the lead is skipped at first. The
    # first record echoes the hook's URL, token and all, so the stored raw body is redacted.
    records = [
        {"name": "Asha Rao", "phone": "9876543210", "from": f"/hooks/zap?token={TOKEN}"},
        {"name": "Ravi Kumar", "alt": "98123 45678"},
    ]
    req = batch_request(records)
    client = make_client(routes=[ZAPIER])
    answer = post(client, req).json["deliveries"]
    skipped = client.store.get(answer[1]["deliveryId"])
    assert skipped.status == "skipped"
    assert skipped.contact is None

    # The user maps the field and replays with --remap.
    fixed = make_settings(
        routes=[ZAPIER | {"fields": {"phoneNumber": "fields.phone || fields.alt"}}]
    )
    result = Replayer(fixed, redis).replay(skipped.id, remap=True)
    assert result.outcome == "requeued", result.detail
    remapped = client.store.get(skipped.id)
    expected = map_request(
        req, fixed.routes["zap"], get_source("zapier"), skipped.event.received_at
    )
    assert (
        remapped.contact
        == expected[1].contact
        == {
            "name": "Ravi Kumar",
            "phoneNumber": "+919812345678",
            "metadata": {},
        }
    )
    # the event keeps the id dedup knows it by (not the hash of the redacted body), and equals
    # the pure path's event
    assert TOKEN.encode() not in request_from_raw(client.store.raw(remapped)).body
    assert remapped.event.to_dict() == expected[1].event.to_dict()
    assert remapped.event.event_id == f"{req.body_hash}:1"
    # mapping the stored event again (replay without --remap) gives the same contact
    assert map_lead(skipped.event, fixed.routes["zap"]).contact == remapped.contact

    run_jobs(fixed)
    assert client.store.get(skipped.id).status == "delivered"
    phones = {c["phoneNumber"] for c in sandbox.org_state()["contacts"]}
    assert "+919812345678" in phones


def test_an_id_only_lead_waits_for_its_fetch_then_maps(make_client):
    client = make_client(routes=[meta.route_data()])
    route = client.settings.routes["r"]
    req = meta.signed()

    [result] = map_request(req, route, get_source("meta_lead_ads"), RECEIVED_AT)
    assert result.fetch == {"kind": "meta_lead", "id": "1234567890123"}
    assert result.contact is None and result.unmappable is None
    assert result.event.event_id == "1234567890123"

    # ingest stores the same event, unmapped, for the job to fetch
    answer = post(client, req)
    assert answer.status_code == 200  # Meta counts any other status as a failure
    stored = client.store.get(answer.json["deliveryId"])
    assert stored.contact is None
    assert stored.event.to_dict() == result.event.to_dict() | {
        "received_at": stored.event.received_at
    }

    # what the job does with the fetched lead: same id and time, nothing left to fetch, mapped
    lead = Lead(fields={"full_name": "Meera Iyer"}, name="Meera Iyer", phone="+91 98765 43210")
    event = fetched_event(stored.event, lead)
    assert (event.event_id, event.received_at, event.fetch) == (
        stored.event.event_id,
        stored.event.received_at,
        None,
    )
    mapped = map_lead(event, route)
    assert mapped.contact_or_raise() == {
        "name": "Meera Iyer",
        "phoneNumber": "+919876543210",
        "metadata": {},
    }


def test_an_unmappable_event_raises_its_reason_where_a_contact_is_required():
    route = meta.make_route()
    event = fetched_event(
        request_events(meta.signed(), route, get_source("meta_lead_ads"), RECEIVED_AT)[0],
        Lead(fields={"full_name": "No Phone"}),
    )
    result = map_lead(event, route)
    assert result.contact is None
    with pytest.raises(Unmappable) as raised:
        result.contact_or_raise()
    assert raised.value is result.unmappable
    assert raised.value.field == "phoneNumber"


def test_the_pure_path_imports_neither_redis_nor_rq():
    """Not the module, nor any project module it reaches: the web, ``try`` and the tests run it
    without a queue."""
    modules = project_modules()
    reached, todo = set(), ["bridge.pipeline"]
    while todo:
        name = todo.pop()
        if name not in reached:
            reached.add(name)
            todo.extend(imports_of(name, modules[name], modules))
    assert {"bridge.mapping", "bridge.sources.base", "bridge.event"} <= reached
    for name in sorted(reached):
        tree = ast.parse(modules[name].read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                roots = {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and not node.level:
                roots = {(node.module or "").split(".")[0]}
            else:
                continue
            assert not roots & {"redis", "rq"}, f"{name} imports {roots & {'redis', 'rq'}}"
