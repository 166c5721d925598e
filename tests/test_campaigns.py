"""Speed to lead: finding the voice flow (``oliai-bridge flows``, ``check-config``) and the
campaign steps, against the sandbox over HTTP."""

import json
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest

from jobs.campaigns import Steps, campaign_step, recover
from jobs.context import configure
from tests.bridge_fixtures import route_dict


def campaign_route(**campaign):
    return route_dict(campaign={"mode": "per_lead", **campaign})


def test_flows_lists_the_voice_flows_of_the_key(cli, sandbox):
    flows = sandbox.org_state()["flows"]
    r = cli({"routes": [route_dict()]}, "flows")
    assert r.returncode == 0, r.stderr
    for flow in flows:
        assert flow["id"] in r.stdout and flow["name"] in r.stdout
    assert sandbox.keys[0] not in r.stdout + r.stderr
    listed = json.loads(cli({"routes": [route_dict()]}, "flows", "--json").stdout)
    assert {f["id"] for f in listed[0]["flows"]} == {f["id"] for f in flows}
    assert listed[0]["routes"] == ["leads"]


def test_check_config_verifies_the_campaign_flow_with_the_key(cli, sandbox):
    flow = sandbox.org_state()["flows"][0]
    ok = cli({"routes": [campaign_route(flow_id=flow["id"])]}, "check-config")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    by_name = cli({"routes": [campaign_route(flow_name=flow["name"])]}, "check-config")
    assert by_name.returncode == 0, by_name.stdout

    missing = cli({"routes": [campaign_route(flow_id="flow_nope")]}, "check-config")
    assert missing.returncode == 1
    assert "routes[leads].campaign.flow_id: no voice flow 'flow_nope'" in missing.stdout
    typo = cli({"routes": [campaign_route(flow_name="Hindi Survey")]}, "check-config")
    assert "campaign.flow_name: no voice flow named 'Hindi Survey'" in typo.stdout


def test_check_config_says_when_the_flow_could_not_be_checked(cli, sandbox):
    config = {"routes": [campaign_route(flow_id="flow_x")]}
    r = cli(config, "check-config", api_key="sk_live_" + "0" * 32)
    assert r.returncode == 0, r.stdout  # a revoked key is not a config problem...
    assert "flow not checked" in r.stdout  # ...but it is said


def test_campaign_settings_problems_are_named(cli):
    config = {"routes": [campaign_route(flow_id="f", calling_hours="9 to 5", days="Mon")]}
    r = cli(config, "check-config")
    assert r.returncode == 1
    assert "routes[leads].campaign.calling_hours: calling_hours '9 to 5'" in r.stdout
    both = cli({"routes": [campaign_route(flow_id="f", flow_name="n")]}, "check-config")
    assert "campaign.flow_id: set flow_id or flow_name" in both.stdout


# --- the steps, against the sandbox ----------------------------------------------------------

IST = ZoneInfo("Asia/Kolkata")
LEAD = {"name": "Priya Sharma", "phone": "098765 43210", "city": "Mumbai"}


def post(client, body=LEAD, route="leads"):
    r = client.post(f"/hooks/{route}", json=body)
    assert r.status_code == 202, r.json
    return r.json["deliveryId"]


def lead(i: int) -> dict:
    return {"name": f"Lead {i}", "phone": f"98765432{i:02d}"}


def campaigns(sandbox):
    return sandbox.org_state()["campaigns"]


def audience_named(sandbox, name):
    found = [a for a in sandbox.org_state()["audiences"] if a["name"] == name]
    assert len(found) == 1, [a["name"] for a in sandbox.org_state()["audiences"]]
    return found[0]


def history(client, delivery_id):
    return client.store.history(delivery_id)


def said(client, delivery_id, what):
    return [h.get("detail", "") for h in history(client, delivery_id) if h["what"] == what]


def flow_id(sandbox):
    return sandbox.org_state()["flows"][0]["id"]


def with_campaign(sandbox, **campaign):
    return route_dict(campaign={"mode": "per_lead", "flow_id": flow_id(sandbox), **campaign})


def test_per_lead_a_new_lead_gets_its_own_campaign_started_at_once(make_client, run_jobs, sandbox):
    client = make_client(routes=[with_campaign(sandbox)])
    delivery_id = post(client)
    run_jobs(client.settings)
    d = client.store.get(delivery_id)
    assert d.status == "delivered"
    name = f"olb leads {delivery_id}"
    [campaign] = campaigns(sandbox)
    assert campaign["name"] == name and campaign["flowId"] == flow_id(sandbox)
    assert campaign["status"] in ("IN_PROGRESS", "COMPLETED")
    assert campaign["scheduledAt"] is None
    # its audience holds just that lead, and the campaign calls it
    assert audience_named(sandbox, name)["contactIds"] == [d.contact_id]
    assert campaign["snapshotContactIds"] == [d.contact_id]
    [detail] = said(client, delivery_id, "campaign_started")
    assert name in detail and "calling now" in detail
    assert not client.redis.zcard("oliai-bridge:camp:due")


def test_window_leads_collect_and_one_campaign_calls_them_at_the_end(
    make_client, run_jobs, sandbox
):
    route = route_dict(
        campaign={"mode": "window", "flow_name": sandbox.org_state()["flows"][1]["name"]}
    )
    client = make_client(routes=[route])
    first, second = post(client, lead(1)), post(client, lead(2))
    run_jobs(client.settings)
    assert campaigns(sandbox) == []  # the window is still open
    for delivery_id in (first, second):
        [detail] = said(client, delivery_id, "campaign_window")
        assert "whose campaign starts at" in detail
    run_jobs(client.settings, promote_scheduled=True)  # the window's end
    [campaign] = campaigns(sandbox)
    assert campaign["flowId"] == sandbox.org_state()["flows"][1]["id"]
    ids = {client.store.get(i).contact_id for i in (first, second)}
    assert set(campaign["snapshotContactIds"]) == ids
    assert set(audience_named(sandbox, campaign["name"])["contactIds"]) == ids
    for delivery_id in (first, second):
        assert campaign["name"] in said(client, delivery_id, "campaign_started")[0]

    # a lead after the window closed joins the next one, never the started campaign
    third = post(client, lead(3))
    run_jobs(client.settings)
    [detail] = said(client, third, "campaign_window")
    assert campaign["name"] not in detail
    assert len(campaigns(sandbox)) == 1


def test_per_lead_overflow_joins_a_window_and_says_so(make_client, run_jobs, sandbox):
    client = make_client(routes=[with_campaign(sandbox, per_lead_max_per_minute=2)])
    ids = [post(client, lead(i)) for i in range(5)]
    run_jobs(client.settings)
    per_lead = [i for i in ids if said(client, i, "campaign_started")]
    overflow = [i for i in ids if said(client, i, "campaign_window")]
    assert len(per_lead) == 2 and len(overflow) == 3
    for delivery_id in overflow:
        assert (
            "more than 2 per-lead campaigns this minute"
            in said(client, delivery_id, "campaign_window")[0]
        )
    assert len(campaigns(sandbox)) == 2
    run_jobs(client.settings, promote_scheduled=True)
    assert len(campaigns(sandbox)) == 3  # the overflow window's one campaign
    window = [c for c in campaigns(sandbox) if len(c["snapshotContactIds"]) == 3]
    assert len(window) == 1


def delivered_lead(make_client, run_jobs, sandbox, body=LEAD):
    """A lead delivered by a route without a campaign: the step is then run by hand."""
    client = make_client(routes=[route_dict()])
    delivery_id = post(client, body)
    run_jobs(client.settings)
    return client, client.store.get(delivery_id)


def tomorrow(hh_mm: str, days: int = 1) -> datetime:
    """A moment to come in India (the sandbox refuses a scheduledAt in the past)."""
    day = datetime.now(IST).date() + timedelta(days=days)
    hour, minute = (int(x) for x in hh_mm.split(":"))
    return datetime.combine(day, time(hour, minute), IST)


def next_weekday(weekday: int, hh_mm: str) -> datetime:
    day = datetime.now(IST).date() + timedelta(days=1)
    while day.weekday() != weekday:
        day += timedelta(days=1)
    return tomorrow(hh_mm, (day - datetime.now(IST).date()).days)


@pytest.mark.parametrize(
    "hours, days, now, opens",
    [
        ("09:00-21:00", None, lambda: tomorrow("10:30"), None),
        ("09:00-21:00", None, lambda: tomorrow("22:15"), lambda: tomorrow("09:00", 2)),
        ("21:00-02:00", None, lambda: tomorrow("01:30"), None),
        ("21:00-02:00", None, lambda: tomorrow("03:00"), lambda: tomorrow("21:00")),
        (
            "09:00-21:00",
            "Mon-Sat",
            lambda: next_weekday(6, "12:00"),
            lambda: next_weekday(0, "09:00"),
        ),
    ],
    ids=[
        "inside",
        "after hours",
        "across midnight, inside",
        "across midnight, after",
        "closed day",
    ],
)
def test_calling_hours_with_a_fixed_clock(make_client, run_jobs, sandbox, hours, days, now, opens):
    client, d = delivered_lead(make_client, run_jobs, sandbox)
    campaign = {"mode": "per_lead", "flow_id": flow_id(sandbox), "calling_hours": hours}
    if days:
        campaign["days"] = days
    settings = make_client(routes=[route_dict(campaign=campaign)]).settings
    ctx = configure(settings, client.redis)
    steps = Steps(ctx, settings.routes["leads"], now=now())
    steps.lead(d)
    [made] = campaigns(sandbox)
    [detail] = said(client, d.id, "campaign_started")
    if opens is None:
        assert made["scheduledAt"] is None and made["status"] in ("IN_PROGRESS", "COMPLETED")
        assert "calling now" in detail
    else:
        expected = opens().astimezone(UTC)
        assert made["status"] == "SCHEDULED" and made["timezone"] == "Asia/Kolkata"
        assert datetime.fromisoformat(made["scheduledAt"].replace("Z", "+00:00")) == expected
        assert f"scheduled for {expected:%Y-%m-%d %H:%M} UTC" in detail


@pytest.mark.parametrize("mode", ["500", "drop"])
def test_a_lost_answer_to_the_create_and_to_the_start_makes_no_second_campaign(
    make_client, run_jobs, sandbox, mode
):
    client = make_client(routes=[with_campaign(sandbox)], delivery={"retry_base_seconds": 0.01})
    sandbox.configure(
        fail_after_commit_rate=1.0,
        fail_after_commit_mode=mode,
        fail_after_commit_path="/v1/campaigns",
    )
    delivery_id = post(client)
    run_jobs(client.settings)  # delivered; the create is made, its answer lost
    assert [c["status"] for c in campaigns(sandbox)] == ["DRAFT"]
    run_jobs(client.settings, promote_scheduled=True)  # found by name; the start's answer lost
    assert [c["status"] for c in campaigns(sandbox)] in (["IN_PROGRESS"], ["COMPLETED"])
    assert not said(client, delivery_id, "campaign_started")
    sandbox.configure(fail_after_commit_rate=0.0)
    run_jobs(client.settings, promote_scheduled=True)  # started already: nothing to redo
    [campaign] = campaigns(sandbox)
    assert campaign["name"] == f"olb leads {delivery_id}"
    assert len(said(client, delivery_id, "campaign_started")) == 1
    creates = [
        r for r in sandbox.requests() if r["method"] == "POST" and r["path"] == "/v1/campaigns"
    ]
    assert len(creates) == 1


def test_a_recovered_or_replayed_step_starts_nothing_twice(make_client, run_jobs, sandbox):
    client = make_client(routes=[with_campaign(sandbox)])
    delivery_id = post(client)
    run_jobs(client.settings)
    ctx = configure(client.settings, client.redis)
    # the step's job is run again (the reaper, a duplicate trigger): it finds its work done
    assert campaign_step(delivery_id) == "done"
    client.redis.zadd("oliai-bridge:camp:due", {delivery_id: 0})
    assert recover(ctx, now=1) == [delivery_id]
    run_jobs(client.settings)
    assert len(campaigns(sandbox)) == 1
    assert len(said(client, delivery_id, "campaign_started")) == 1


def test_a_missing_flow_fails_the_step_visibly(make_client, run_jobs, sandbox):
    client = make_client(routes=[route_dict(campaign={"mode": "per_lead", "flow_name": "Nope"})])
    delivery_id = post(client)
    run_jobs(client.settings)
    assert client.store.get(delivery_id).status == "delivered"  # the contact is in its audience
    [detail] = said(client, delivery_id, "campaign_failed")
    assert "no voice flow named 'Nope'" in detail
    assert campaigns(sandbox) == []
