"""Log lines: one JSON object per line with what it belongs to, request ids, and no secret."""

import io
import json
import logging
import sys
from urllib.parse import quote_plus

import pytest

from bridge import logs
from bridge.config import build_settings, log_format
from bridge.exceptions import ConfigError
from tests.bridge_fixtures import route_dict

LEAD = {"name": "Priya Sharma", "phone": "098765 43210", "city": "Mumbai"}
TOKEN = "s3cret-route-token"


@pytest.fixture
def output(monkeypatch):
    """``output()`` → the lines written since the test began, as written (JSON set up)."""
    monkeypatch.setattr(logs, "_hidden", [])
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    stream = io.StringIO()
    logs.setup("DEBUG", "json", stream)
    yield lambda: stream.getvalue()
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])
    logging.captureWarnings(False)
    sys.excepthook = sys.__excepthook__


def lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines()]


def test_a_line_is_one_json_object_with_time_level_event_and_its_context(output):
    log = logging.getLogger("jobs.deliver")
    with logs.context(route="leads", delivery_id="dlv_1"):
        log.info("delivered in %.1f s", 1.25, extra={"event": "delivery.delivered"})
        log.info("no event of its own")
    log.warning("outside")
    first, second, third = lines(output())
    assert first["event"] == "delivery.delivered"
    assert first["message"] == "delivered in 1.2 s"
    assert first["level"] == "info"
    assert first["time"].endswith("Z") and "T" in first["time"]
    assert (first["route"], first["delivery_id"]) == ("leads", "dlv_1")
    assert second["event"] == "jobs.deliver"  # a line without an event is named by its logger
    assert second["delivery_id"] == "dlv_1"
    assert "delivery_id" not in third and third["level"] == "warning"


def test_a_traceback_stays_on_its_line(output):
    try:
        raise ValueError("broken\nacross lines")
    except ValueError:
        logging.getLogger("x").exception("it failed")
    [line] = lines(output())
    assert "ValueError: broken" in line["error"]


def test_no_secret_reaches_a_line_whatever_carries_it(output):
    secret = "sk_live_" + "a1b2c3d4" * 4
    logs.hide([secret, "short", None])
    log = logging.getLogger("bridge")
    log.info("key %s", secret, extra={"path": f"/x?k={quote_plus(secret)}"})
    try:
        raise RuntimeError(f"auth failed for {secret}")
    except RuntimeError:
        log.exception("call failed")
    text = output()
    assert secret not in text and quote_plus(secret) not in text
    assert text.count("[redacted]") == 3
    assert len(lines(text)) == 2


def test_text_format_is_one_readable_line():
    stream = io.StringIO()
    record = logging.LogRecord("bridge.app", logging.INFO, __file__, 1, "hello %s", ("you",), None)
    record.event = "http.request"
    record.status = 202
    stream.write(logs.TextFormatter().format(record))
    assert stream.getvalue().endswith("INFO    http.request: hello you  status=202")


def test_log_format_comes_from_the_environment_through_the_settings():
    assert log_format({}) == "json"
    assert log_format({}, default="text") == "text"
    assert log_format({"LOG_FORMAT": "TEXT"}) == "text"
    data = {"routes": [route_dict()]}
    assert build_settings(data, env={"LOG_FORMAT": "text"}).log_format == "text"
    with pytest.raises(ConfigError) as exc:
        build_settings(data, env={"LOG_FORMAT": "xml"})
    assert exc.value.problems == ["LOG_FORMAT: must be json or text, not 'xml'"]


def test_requests_carry_the_proxys_request_id_or_our_own(output, make_client):
    client = make_client(routes=[route_dict(token=TOKEN)])
    given = "6a1f7c2e-5b0d-4e8a-9c3b-2d1e0f9a8b7c"
    r = client.post(f"/hooks/leads?token={TOKEN}", json=LEAD, headers={"X-Request-Id": given})
    assert r.status_code == 202
    assert r.headers["X-Request-Id"] == given
    made = client.get("/healthz", headers={"X-Request-Id": "no spaces\tor tabs"})
    assert made.headers["X-Request-Id"] != "no spaces\tor tabs"
    assert len(made.headers["X-Request-Id"]) == 32
    assert client.get("/nowhere").headers["X-Request-Id"]  # errors too

    text = output()
    assert TOKEN not in text
    records = lines(text)
    [access] = [x for x in records if x["event"] == "http.request" and x["path"] == "/hooks/leads"]
    assert access["request_id"] == given
    assert (access["method"], access["status"], access["route"]) == ("POST", 202, "leads")
    assert isinstance(access["duration_ms"], float)
    [queued] = [x for x in records if x["event"] == "webhook.queued"]
    assert queued["request_id"] == given
    assert queued["delivery_id"] == r.json["deliveryId"]
    assert queued["route"] == "leads"
    # the request id belongs to its request only
    [health] = [x for x in records if x.get("path") == "/healthz"]
    assert health["request_id"] == made.headers["X-Request-Id"]


def test_a_refused_webhook_says_why_without_the_token(output, make_client):
    client = make_client(routes=[route_dict(token=TOKEN)])
    r = client.post("/hooks/leads?token=wrong-token-value", json=LEAD)
    assert r.status_code == 401
    records = lines(output())
    [refused] = [x for x in records if x["event"] == "webhook.refused"]
    assert refused["status"] == 401 and refused["route"] == "leads"
    assert "wrong-token-value" not in output()
