"""The webhook endpoint served below Flask (``bridge.app.HookDoor``) answers as the Flask app
does: the same stored lead, the same headers, the same JSON errors; what it does not serve
(a chunked body, a handshake, a bad path) the Flask app answers."""

from __future__ import annotations

import io
import json
import logging

import pytest
from werkzeug.test import EnvironBuilder

from bridge.ingest import Ingest
from tests.bridge_fixtures import route_dict

LEAD = {"name": "Priya Sharma", "phone": "098765 43210", "city": "Mumbai"}


@pytest.fixture
def client(make_client):
    return make_client(routes=[route_dict(), route_dict(name="locked", token="s3cret-token")])


def call(client, environ: dict) -> tuple[str, dict, bytes]:
    """The app's answer to a raw WSGI environ: status line, headers, body."""
    answer = {}

    def start_response(status, headers, exc_info=None):
        answer["status"], answer["headers"] = status, dict(headers)

    body = b"".join(client.application(environ, start_response))
    return answer["status"], answer["headers"], body


def chunked(environ: dict) -> dict:
    """``environ`` as gunicorn hands on a chunked body: no length, the stream ends the body."""
    environ.pop("CONTENT_LENGTH")
    environ["HTTP_TRANSFER_ENCODING"] = "chunked"
    environ["wsgi.input_terminated"] = True
    return environ


def lead_environ(lead: dict, **kwargs) -> dict:
    return EnvironBuilder(
        method="POST",
        path="/hooks/leads",
        json=lead,
        headers={"X-Request-Id": "req-12345678"},
        **kwargs,
    ).get_environ()


def test_the_door_and_the_flask_app_answer_and_store_a_webhook_alike(client):
    door = call(client, lead_environ(LEAD))
    flask = call(client, chunked(lead_environ({**LEAD, "phone": "+91 98765 43211"})))
    for status, headers, body in (door, flask):
        assert status == "202 ACCEPTED"
        assert headers["Content-Type"] == "application/json"
        assert headers["Content-Length"] == str(len(body))
        assert headers["X-Request-Id"] == "req-12345678"
    by_door, by_flask = json.loads(door[2]), json.loads(flask[2])
    assert by_door.keys() == by_flask.keys() and by_door["status"] == by_flask["status"] == "queued"
    stored = [client.store.get(answer["deliveryId"]) for answer in (by_door, by_flask)]
    assert [d.contact["phoneNumber"] for d in stored] == ["+919876543210", "+919876543211"]
    assert stored[0].contact["metadata"] == stored[1].contact["metadata"] == {"city": "Mumbai"}
    assert client.store.raw(stored[0])["headers"] == client.store.raw(stored[1])["headers"]


def test_a_body_shorter_than_its_length_is_a_400_naming_it(client):
    environ = lead_environ(LEAD)
    environ["wsgi.input"] = io.BytesIO(b'{"name": "Pri')
    status, headers, body = call(client, environ)
    assert status.startswith("400")
    assert headers["Content-Type"] == "application/json" and "X-Request-Id" in headers
    assert (
        json.loads(body)["error"] == "error"
        and "could not understand" in json.loads(body)["message"]
    )
    assert client.store.counts().get("received", 0) == 0


@pytest.mark.parametrize(
    ("query", "status"),
    [("token=s3cret-token&token=wrong", 202), ("token=wrong&token=s3cret-token", 401)],
)
def test_a_repeated_query_argument_counts_by_its_first_value(client, query, status):
    assert client.post(f"/hooks/locked?{query}", json=LEAD).status_code == status


def test_a_sane_request_id_is_kept_and_any_other_replaced(client):
    kept = client.post("/hooks/leads", json=LEAD, headers={"X-Request-Id": "abc-12345678"})
    assert kept.headers["X-Request-Id"] == "abc-12345678"
    made = client.post("/hooks/leads", json=LEAD, headers={"X-Request-Id": "no\tway"})
    assert len(made.headers["X-Request-Id"]) == 32 and made.headers["X-Request-Id"] != "no\tway"


def test_what_the_door_leaves_the_flask_app_answers(client):
    assert client.get("/hooks/leads").status_code == 405  # no handshake for this source
    assert client.post("/hooks/", json=LEAD).json["error"] == "not_found"
    assert client.post("/hooks/leads/more", json=LEAD).json["error"] == "not_found"
    assert client.delete("/hooks/leads").json["error"] == "method_not_allowed"


def test_a_bug_is_a_500_that_tells_nothing_of_it_and_is_logged(client, monkeypatch, caplog):
    def broken(self, req):
        raise RuntimeError("internals")

    monkeypatch.setattr(Ingest, "handle", broken)
    with caplog.at_level(logging.INFO, logger="bridge.app"):
        r = client.post("/hooks/leads", json=LEAD, headers={"X-Request-Id": "bug-12345678"})
    assert r.status_code == 500
    assert r.json == {
        "error": "internal_error",
        "message": "the bridge failed to handle this request",
    }
    assert r.headers["X-Request-Id"] == "bug-12345678"
    [failed] = [x for x in caplog.records if x.levelno == logging.ERROR]
    assert failed.exc_info and "RuntimeError" in caplog.text
    [access] = [x for x in caplog.records if getattr(x, "event", None) == "http.request"]
    assert access.status == 500 and access.route == "leads"
