"""The admin API (``bridge.admin``): failed deliveries listed, shown and replayed over HTTP, only
for a caller holding ``bridge.admin_token``."""

from __future__ import annotations

import base64
import json
import time

import pytest

from bridge import keys
from bridge.admin import parse_since
from bridge.deliveries import Delivery, raw_record
from bridge.event import Event, InboundRequest, utcnow_iso
from tests.bridge_fixtures import route_dict

TOKEN = "adm1n-t0ken"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
TYPO = route_dict(audience_name=None, audience_id="aud_typo")  # every delivery 404s


def failed_delivery(client, run_jobs, body, route="leads"):
    r = client.post(f"/hooks/{route}", json=body)
    assert r.status_code == 202
    run_jobs(client.settings)
    return r.json["deliveryId"]


def lead(i: int) -> dict:
    return {"name": f"Lead {i}", "phone": f"98765432{i:02d}"}


@pytest.fixture
def admin(make_client):
    """``admin(routes)``: a client of an app with the admin API on."""

    def make(routes=None):
        return make_client(routes=routes or [TYPO], bridge={"admin_token": TOKEN})

    return make


def test_admin_api_needs_its_token_and_replays(make_client, run_jobs, sandbox):
    route = route_dict(audience_name=None, audience_id="aud_typo")
    client = make_client(routes=[route], bridge={"admin_token": "adm1n-t0ken"})
    delivery_id = failed_delivery(client, run_jobs, {"name": "A", "phone": "9876543210"})
    assert client.get("/admin/failed").status_code == 401
    assert client.get("/admin/failed", headers={"Authorization": "Bearer nope"}).status_code == 401
    auth = {"Authorization": "Bearer adm1n-t0ken"}
    listed = client.get("/admin/failed", headers=auth).json
    assert listed["total"] == 1 and listed["items"][0]["deliveryId"] == delivery_id
    shown = client.get(f"/admin/deliveries/{delivery_id}", headers=auth).json
    assert shown["raw"]["body"] and shown["history"]
    dry = client.post("/admin/replay", json={"all": True, "dry_run": True}, headers=auth).json
    assert dry["summary"] == {"would_requeue": 1}
    assert "adm1n-t0ken" not in json.dumps([listed, shown, dry])


def test_admin_api_is_absent_without_a_token(make_client):
    client = make_client()
    r = client.get("/admin/failed", headers={"Authorization": "Bearer x"})
    assert r.status_code == 404


@pytest.mark.parametrize(
    "header",
    [f"Basic {base64.b64encode(f'admin:{TOKEN}'.encode()).decode()}", TOKEN, "Bearer", ""],
)
def test_other_ways_of_sending_the_token_are_401(admin, header):
    r = admin().get("/admin/failed", headers={"Authorization": header})
    assert r.status_code == 401 and r.json["error"] == "unauthorized"
    assert TOKEN not in r.get_data(as_text=True)


def test_a_real_replay_after_the_fix_delivers_and_empties_the_list(admin, run_jobs, sandbox):
    broken = admin()
    ids = [failed_delivery(broken, run_jobs, lead(i)) for i in range(2)]
    assert {broken.store.get(i).status for i in ids} == {"failed"}
    assert sandbox.org_state()["audiences"] == []
    # the operator fixes the route (an audience by name) and redeploys, then replays by id
    fixed = admin([route_dict()])
    r = fixed.post("/admin/replay", json={"ids": ids}, headers=AUTH)
    assert r.status_code == 200, r.json
    assert r.json["summary"] == {"requeued": 2}
    assert [x["deliveryId"] for x in r.json["results"]] == ids
    assert {fixed.store.get(i).status for i in ids} == {"queued"}
    run_jobs(fixed.settings)
    assert {fixed.store.get(i).status for i in ids} == {"delivered"}
    [audience] = sandbox.org_state()["audiences"]
    assert audience["name"] == "Test leads" and audience["contactCount"] == 2
    assert fixed.get("/admin/failed", headers=AUTH).json["total"] == 0
    # a second replay of the same ids delivers nothing twice
    again = fixed.post("/admin/replay", json={"ids": ids}, headers=AUTH).json
    assert again["summary"] == {"already_delivered": 2}
    run_jobs(fixed.settings)
    assert len(sandbox.org_state()["contacts"]) == 2


def test_replay_by_route_leaves_other_routes_alone(admin, run_jobs, sandbox):
    other = route_dict(name="other", audience_name=None, audience_id="aud_typo")
    client = admin([TYPO, other])
    mine = failed_delivery(client, run_jobs, lead(1))
    theirs = failed_delivery(client, run_jobs, lead(2), route="other")
    r = client.post("/admin/replay", json={"route": "leads"}, headers=AUTH).json
    assert r["summary"] == {"requeued": 1} and r["results"][0]["deliveryId"] == mine
    assert client.store.get(theirs).status == "failed"


def test_failed_list_filters_and_pages(admin, run_jobs, sandbox):
    other = route_dict(name="other", audience_name=None, audience_id="aud_typo")
    client = admin([TYPO, other])
    old = failed_delivery(client, run_jobs, lead(1))
    recent = [failed_delivery(client, run_jobs, lead(i)) for i in (2, 3)]
    elsewhere = failed_delivery(client, run_jobs, lead(4), route="other")
    two_hours_ago = time.time() - 7200
    for key in (keys.FAILED, keys.failed_by_route("leads"), keys.failed_by_reason("not_found")):
        client.redis.zadd(key, {old: two_hours_ago})

    def listed(**query):
        r = client.get("/admin/failed", query_string=query, headers=AUTH)
        assert r.status_code == 200, r.json
        return r.json

    assert listed()["total"] == 4
    assert {i["deliveryId"] for i in listed(route="leads")["items"]} == {old, *recent}
    assert [i["deliveryId"] for i in listed(route="other")["items"]] == [elsewhere]
    assert listed(reason="not_found")["total"] == 4 and listed(reason="invalid")["total"] == 0
    assert {i["deliveryId"] for i in listed(since="1h")["items"]} == {*recent, elsewhere}
    page = listed(limit=2, offset=2)
    assert page["total"] == 4 and len(page["items"]) == 2 and page["offset"] == 2
    newest_first = [i["deliveryId"] for i in listed()["items"]]
    assert newest_first[-1] == old
    item = listed()["items"][0]
    assert item["phoneNumber"] and item["reasonCode"] == "not_found"
    assert item["lastApiAnswer"]["status"] == 404


@pytest.mark.parametrize(
    "query", [{"since": "yesterday"}, {"offset": "x"}, {"limit": "1.5"}, {"since": "5w"}]
)
def test_a_bad_filter_is_400_naming_it(admin, query):
    r = admin().get("/admin/failed", query_string=query, headers=AUTH)
    assert r.status_code == 400 and r.json["error"] == "bad_request" and r.json["message"]


def test_show_gives_payload_contact_and_history_and_404_for_the_unknown(admin, run_jobs, sandbox):
    client = admin()
    delivery_id = failed_delivery(client, run_jobs, lead(1))
    shown = client.get(f"/admin/deliveries/{delivery_id}", headers=AUTH).json
    assert json.loads(shown["raw"]["body"]) == lead(1)
    assert shown["contact"]["phoneNumber"] == "+919876543201"
    assert shown["event"]["fields"] == lead(1)
    assert [h["what"] for h in shown["history"]][-1] == "failed"
    r = client.get("/admin/deliveries/dlv_nope", headers=AUTH)
    assert r.status_code == 404 and r.json["error"] == "unknown_delivery"


def test_show_gives_a_body_that_is_not_text_as_base64(admin):
    client = admin()
    body = b"\x89PNG\r\n\x1a\n\xff"
    req = InboundRequest(method="POST", route="leads", body=body, headers={"content-type": "x"})
    event = Event(route="leads", source="generic", event_id="e", received_at="t", fields={})
    d = Delivery(
        id="dlv_binary",
        route="leads",
        source="generic",
        status="failed",
        event=event,
        received_at=utcnow_iso(),
        raw_id="r-binary",
        reason_code="unmappable",
        reason="no phone",
    )
    pipe = client.redis.pipeline()
    client.store.add_raw(pipe, "r-binary", raw_record(req, ()))
    client.store.add(pipe, d)
    pipe.execute()
    shown = client.get("/admin/deliveries/dlv_binary", headers=AUTH).json
    assert shown["raw"]["body"] is None
    assert base64.b64decode(shown["raw"]["bodyBase64"]) == body


@pytest.mark.parametrize(
    "body, words",
    [
        (b"not json", "JSON object"),
        (b'["dlv_1"]', "JSON object"),
        (b'{"ids": "dlv_1"}', "list of delivery ids"),
        (b'{"ids": [1]}', "list of delivery ids"),
        (b"{}", "name ids"),
        (b'{"since": "soon"}', "since"),
    ],
)
def test_a_replay_request_that_names_nothing_usable_is_400(admin, body, words):
    r = admin().post("/admin/replay", data=body, content_type="application/json", headers=AUTH)
    assert r.status_code == 400 and words in r.json["message"], r.json


@pytest.mark.parametrize(
    "value, ago", [("90s", 90), ("15m", 900), ("2h", 7200), ("7d", 7 * 86400), (" 2H ", 7200)]
)
def test_since_as_a_duration_back_from_now(value, ago):
    assert parse_since(value) == pytest.approx(time.time() - ago, abs=5)


def test_since_as_epoch_seconds_or_nothing():
    assert parse_since("1700000000") == 1_700_000_000.0
    assert parse_since(None) is None and parse_since("") is None


@pytest.mark.parametrize("value", ["soon", "5w", "h", "1e", "--1h"])
def test_since_that_is_no_time_names_the_forms_it_takes(value):
    with pytest.raises(ValueError) as refused:
        parse_since(value)
    assert "15m, 2h, 7d or epoch seconds" in str(refused.value)
