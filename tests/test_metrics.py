"""Counters every process shares (``bridge.metrics``): kept in Redis, shown at ``/metrics`` by
whichever web process is asked, with live gauges of the queue and the deliveries."""

from __future__ import annotations

from prometheus_client import generate_latest
from redis import Redis

from bridge.metrics import count, read_counters, registry_for
from bridge.storage import connect, free_port
from tests.bridge_fixtures import route_dict

LEAD = {"name": "Priya Sharma", "phone": "098765 43210", "city": "Mumbai"}


def metrics(client) -> str:
    r = client.get("/metrics")
    assert r.status_code == 200 and r.mimetype == "text/plain", r.status_code
    return r.get_data(as_text=True)


def lead(i: int) -> dict:
    return {"name": f"Lead {i}", "phone": f"98765432{i:02d}"}


def test_ingest_outcomes_are_counted(make_client):
    client = make_client(routes=[route_dict(), route_dict(name="locked", token="s3cret-token")])
    client.post("/hooks/leads", json=LEAD)
    client.post("/hooks/leads", json=LEAD)
    client.post("/hooks/locked", json=LEAD)
    text = metrics(client)
    assert 'oliai_bridge_queued_total{route="leads"} 1.0' in text
    assert 'oliai_bridge_duplicate_total{route="leads"} 1.0' in text
    assert 'oliai_bridge_rejected_total{reason="missing_token",route="locked"} 1.0' in text
    assert 'oliai_bridge_queue_depth{state="queued"} 1.0' in text


def test_every_web_process_shows_the_same_totals(make_client):
    one, two = make_client(), make_client()  # two apps, one Redis: two gunicorn workers
    assert one.post("/hooks/leads", json=lead(1)).status_code == 202
    assert two.post("/hooks/leads", json=lead(2)).status_code == 202
    for client in (one, two):
        assert 'oliai_bridge_queued_total{route="leads"} 2.0' in metrics(client)


def test_refusals_are_counted_by_reason(make_client):
    client = make_client()
    client.post("/hooks/leads", json={"name": "No Phone"})
    client.post("/hooks/leads", data=b"{", content_type="application/json")
    client.post("/hooks/" + "x" * 100, json=LEAD)
    text = metrics(client)
    assert 'oliai_bridge_rejected_total{reason="unmappable",route="leads"} 1.0' in text
    assert 'oliai_bridge_rejected_total{reason="malformed_body",route="leads"} 1.0' in text
    # an unknown route is counted under its name cut to 64 characters
    label = "x" * 64
    assert f'oliai_bridge_rejected_total{{reason="unknown_route",route="{label}"}} 1.0' in text


def test_worker_outcomes_are_counted(make_client, run_jobs, sandbox):
    good = make_client()
    sandbox.configure(fail_rate=1.0)
    good.post("/hooks/leads", json=lead(1))
    run_jobs(good.settings)  # a 500: retried later
    text = metrics(good)
    assert 'oliai_bridge_retried_total{cause="transient",route="leads"} 1.0' in text
    assert 'oliai_bridge_queue_depth{state="scheduled"} 1.0' in text
    assert 'oliai_bridge_deliveries{state="active"} 1.0' in text
    sandbox.configure(fail_rate=0.0)
    run_jobs(good.settings, promote_scheduled=True)
    bad = make_client(routes=[route_dict(name="typo", audience_name=None, audience_id="aud_x")])
    bad.post("/hooks/typo", json=lead(2))
    run_jobs(bad.settings)
    text = metrics(good)
    assert 'oliai_bridge_delivered_total{route="leads"} 1.0' in text
    assert 'oliai_bridge_failed_total{reason="not_found",route="typo"} 1.0' in text
    assert 'oliai_bridge_deliveries{state="active"} 0.0' in text
    assert 'oliai_bridge_deliveries{state="failed_or_skipped"} 1.0' in text
    assert 'oliai_bridge_queue_depth{state="scheduled"} 0.0' in text


def test_skipped_leads_are_counted(make_client):
    client = make_client(routes=[route_dict(name="zap", source="zapier")])
    r = client.post("/hooks/zap", json=[{"phone": "+919876543210"}, {"name": "No Phone"}])
    assert r.status_code == 202, r.json
    text = metrics(client)
    assert 'oliai_bridge_queued_total{route="zap"} 1.0' in text
    assert 'oliai_bridge_skipped_total{route="zap"} 1.0' in text


def test_a_label_holding_the_separator_stays_one_label(redis):
    count(redis, "failed", "a|b", "http_418")
    assert read_counters(redis) == {"failed|a/b|http_418": 1}
    text = generate_latest(registry_for(redis, "q")).decode()
    assert 'oliai_bridge_failed_total{reason="http_418",route="a/b"} 1.0' in text


def dead_redis() -> Redis:
    """A client connected as the app connects, to a port nothing listens on."""
    return connect(f"redis://127.0.0.1:{free_port()}")


def test_counting_never_fails_the_caller_when_redis_is_down():
    dead = dead_redis()
    count(dead, "queued", "leads")  # no exception: a metric must not turn a 202 into a 500


def test_metrics_without_redis_are_503_json(make_settings):
    from bridge.app import create_app

    dead = dead_redis()
    r = create_app(make_settings(), redis=dead).test_client().get("/metrics")
    assert r.status_code == 503
    assert r.json["error"] == "storage_unavailable"
