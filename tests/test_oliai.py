"""OliAIClient: one request per call, one typed error per failure, the key kept secret.

Error mapping for answers the sandbox never gives (422, 418, 502, non-JSON bodies, list
messages) uses canned responses through a requests transport adapter; everything else runs
against the sandbox over real HTTP.
"""

from __future__ import annotations

import email.utils
import json
import logging
import socket
import threading
import time

import pytest
import requests
from requests.adapters import BaseAdapter

from bridge.exceptions import (
    ApiForbidden,
    Conflict,
    NotFound,
    PermanentApiError,
    RateLimited,
    ServerError,
    Unauthorized,
    Unreachable,
    ValidationFailed,
)
from jobs.oliai import DEFAULT_RETRY_AFTER, OliAIClient, iter_pages, parse_retry_after

SECRET = "sk_live_" + "topsecretvalue".ljust(32, "9")


class CannedAdapter(BaseAdapter):
    """Answers every request with one fixed response and remembers what was sent."""

    def __init__(self, status: int, body: object = None, headers: dict | None = None):
        super().__init__()
        self.status = status
        self.body = body
        self.headers = headers or {}
        self.sent: list[requests.PreparedRequest] = []
        self.closed = False  # Session.close() closes every adapter mounted on it

    def send(self, request, **kwargs):
        self.sent.append(request)
        response = requests.Response()
        response.status_code = self.status
        response.request = request
        response.url = request.url
        response.reason = "Canned"
        response.headers.update(self.headers)
        if isinstance(self.body, bytes):
            response._content = self.body
        elif self.body is not None:
            response._content = json.dumps(self.body).encode()
            response.headers.setdefault("Content-Type", "application/json")
        else:
            response._content = b""
        return response

    def close(self):
        self.closed = True


def canned(status: int, body: object = None, headers: dict | None = None, **kw):
    adapter = CannedAdapter(status, body, headers)
    session = requests.Session()
    session.mount("https://", adapter)
    client = OliAIClient("https://api.example.test/v1", SECRET, session=session, **kw)
    return client, adapter


class RecordingLimiter:
    def __init__(self, refuse: bool = False):
        self.acquired: list[str] = []
        self.paused: list[float] = []
        self.refuse = refuse

    def acquire(self, rate_class: str) -> None:
        self.acquired.append(rate_class)
        if self.refuse:
            raise RateLimited(7.0, "local limiter says wait")

    def pause(self, seconds: float) -> None:
        self.paused.append(seconds)


# --- Retry-After -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("5", 5.0),
        ("2.5", 2.5),
        ("0", 0.0),
        (None, DEFAULT_RETRY_AFTER),
        ("", DEFAULT_RETRY_AFTER),
        ("-3", DEFAULT_RETRY_AFTER),
        ("soon", DEFAULT_RETRY_AFTER),
        ("nan", DEFAULT_RETRY_AFTER),
        ("inf", DEFAULT_RETRY_AFTER),
    ],
)
def test_retry_after_seconds(value, seconds):
    assert parse_retry_after(value) == seconds


def test_retry_after_http_date():
    now = 1_800_000_000.0
    future = email.utils.formatdate(now + 30, usegmt=True)  # e.g. "Fri, 15 Jan 2027 08:00:30 GMT"
    assert parse_retry_after(future, now=now) == pytest.approx(30.0)
    past = email.utils.formatdate(now - 30, usegmt=True)
    assert parse_retry_after(past, now=now) == 0.0
    assert parse_retry_after("Fri, 99 Foo 2027 25:00:00 GMT", now=now) == DEFAULT_RETRY_AFTER


# --- error mapping (canned answers) --------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (400, ValidationFailed),
        (401, Unauthorized),
        (403, ApiForbidden),
        (404, NotFound),
        (409, Conflict),
        (413, ValidationFailed),
        (422, ValidationFailed),
        (418, PermanentApiError),
        (500, ServerError),
        (502, ServerError),
        (503, ServerError),
    ],
)
def test_status_maps_to_one_error(status, error):
    client, _ = canned(status, {"statusCode": status, "message": "told you", "error": "X"})
    with pytest.raises(error) as caught:
        client.get_contact("ct_1")
    assert type(caught.value) is error
    assert (caught.value.status, caught.value.method, caught.value.path) == (
        status,
        "GET",
        "/contacts/ct_1",
    )
    assert caught.value.message == "told you"


def test_list_messages_are_joined_and_odd_bodies_still_give_a_message():
    client, _ = canned(400, {"message": ["name should not be empty", "phoneNumber bad"]})
    with pytest.raises(ValidationFailed, match="name should not be empty; phoneNumber bad"):
        client.create_contact("", "x")
    client, _ = canned(502, b"<html>Bad Gateway</html>", {"Content-Type": "text/html"})
    with pytest.raises(ServerError) as caught:
        client.list_flows()
    assert caught.value.message


def test_429_without_json_body_or_header_waits_a_minute():
    limiter = RecordingLimiter()
    client, _ = canned(429, b"slow down", limiter=limiter)
    with pytest.raises(RateLimited) as caught:
        client.list_contacts()
    assert caught.value.retry_after == DEFAULT_RETRY_AFTER and caught.value.status == 429
    assert limiter.paused == [DEFAULT_RETRY_AFTER]


def test_429_with_http_date_pauses_the_limiter():
    limiter = RecordingLimiter()
    when = email.utils.formatdate(time.time() + 20, usegmt=True)
    client, _ = canned(429, {"statusCode": 429}, {"Retry-After": when}, limiter=limiter)
    with pytest.raises(RateLimited) as caught:
        client.bulk_upsert_contacts([])
    assert 18 <= caught.value.retry_after <= 20
    assert limiter.paused == [caught.value.retry_after]


def test_non_json_success_is_unreachable():
    client, _ = canned(200, b"<html>captive portal</html>", {"Content-Type": "text/html"})
    with pytest.raises(Unreachable) as caught:
        client.list_contacts()
    assert caught.value.status == 200 and caught.value.path == "/contacts"


def test_import_ids_are_read_under_either_name():
    client, _ = canned(202, {"id": "imp_1", "status": "PENDING", "total": 1})
    accepted = client.bulk_import([{"name": "A", "phoneNumber": "+15550001"}])
    assert accepted["importId"] == accepted["id"] == "imp_1"
    client, _ = canned(200, {"importId": "imp_2", "status": "COMPLETED"})
    assert client.import_status("imp_2")["id"] == "imp_2"


def test_request_shape_and_injected_session():
    client, adapter = canned(200, {"data": [], "total": 0})
    client.list_contacts(search="+91 98/76", page=2)
    client.update_contact("ct/../x", name="N")
    get, patch = adapter.sent
    assert get.headers["x-api-key"] == SECRET
    assert "search=%2B91+98%2F76" in get.url and "page=2" in get.url
    assert patch.method == "PATCH" and patch.url.endswith("/contacts/ct%2F..%2Fx")
    assert json.loads(patch.body) == {"name": "N"}
    client.close()  # a session we did not create stays open for its owner
    assert adapter.closed is False
    client.get_contact("ct_2")  # and the client still works through it
    assert [r.method for r in adapter.sent] == ["GET", "PATCH", "GET"]


# --- secrecy -------------------------------------------------------------------------------


def test_the_key_never_shows(sandbox, caplog):
    caplog.set_level(logging.DEBUG, logger="jobs.oliai")
    stranger = sandbox.client(SECRET)
    assert SECRET not in repr(stranger) and "OliAIClient" in repr(stranger)
    errors = []
    with pytest.raises(Unauthorized) as caught:
        stranger.list_contacts(search="+919876543210")
    errors.append(caught.value)
    with pytest.raises(NotFound) as caught:
        sandbox.client().get_contact("ct_nope")
    errors.append(caught.value)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    offline = OliAIClient(f"http://127.0.0.1:{closed_port}/v1", SECRET, timeout=(0.5, 0.5))
    with pytest.raises(Unreachable) as caught:
        offline.list_contacts(search="+919876543210")
    errors.append(caught.value)
    for error in errors:
        text = f"{error} {error!r} {error.args!r} {error.message}"
        assert SECRET not in text
        # No chained requests exception, whose prepared request holds the headers.
        assert error.__cause__ is None and error.__context__ is None
    assert "919876543210" not in str(errors[0]) + str(errors[2])
    assert caplog.records
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert SECRET not in logged and sandbox.keys[0] not in logged
    assert "GET /contacts -> 401" in logged
    assert "919876543210" not in logged  # queries (phone numbers) are not logged either


def test_a_server_echoing_the_key_is_scrubbed():
    client, _ = canned(400, {"message": f"bad key {SECRET}"})
    with pytest.raises(ValidationFailed) as caught:
        client.list_flows()
    assert SECRET not in str(caught.value) and "[api key]" in caught.value.message


# --- transport failures --------------------------------------------------------------------


def test_timeout_is_unreachable():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    accepted = []
    threading.Thread(target=lambda: accepted.append(listener.accept()), daemon=True).start()
    try:
        client = OliAIClient(
            f"http://127.0.0.1:{listener.getsockname()[1]}/v1", SECRET, timeout=(1.0, 0.2)
        )
        with pytest.raises(Unreachable) as caught:
            client.list_flows()
        assert caught.value.status is None and caught.value.path == "/flows"
        assert "Timeout" in caught.value.message
    finally:
        for connection, _ in accepted:
            connection.close()
        listener.close()


# --- against the sandbox -------------------------------------------------------------------


def test_limiter_is_asked_with_the_right_class(sandbox):
    limiter = RecordingLimiter()
    client = sandbox.client(limiter=limiter)
    people = client.bulk_upsert_contacts(
        [{"name": "A", "phoneNumber": "+15550001"}, {"name": "B", "phoneNumber": "+15550002"}]
    )["contacts"]
    audience = client.create_audience("Aud")
    client.add_audience_contacts(audience["id"], [p["id"] for p in people])
    client.bulk_import([{"name": "C", "phoneNumber": "+15550003"}])
    client.list_contacts()
    assert limiter.acquired == ["bulk", "general", "general", "bulk", "general"]
    assert limiter.paused == []


def test_a_refusing_limiter_stops_the_request_before_it_is_sent(sandbox):
    client = sandbox.client(limiter=RecordingLimiter(refuse=True))
    with pytest.raises(RateLimited) as caught:
        client.create_contact("A", "+15550001")
    assert caught.value.retry_after == 7.0
    assert sandbox.requests() == []


def test_a_real_429_pauses_the_limiter(sandbox):
    sandbox.configure(general_limit=1)
    limiter = RecordingLimiter()
    client = sandbox.client(limiter=limiter)
    client.list_flows()
    with pytest.raises(RateLimited) as caught:
        client.list_flows()
    assert limiter.paused == [caught.value.retry_after]
    assert caught.value.retry_after in (1.0, 2.0)


def test_errors_name_method_and_path_without_query(sandbox):
    client = sandbox.client()
    with pytest.raises(ValidationFailed) as caught:
        client.list_contacts(limit=500, search="+91")
    error = caught.value
    assert (error.status, error.method, error.path) == (400, "GET", "/contacts")
    assert "limit must not be greater than 100" in str(error)


def test_find_contact_by_phone_picks_the_exact_match_across_pages(sandbox):
    client = sandbox.client()
    target = "+1555000"
    client.create_contact("Target", target)
    # 150 newer contacts whose numbers all contain the target's digits: the exact one is on
    # page 2 of the search results.
    longer = [{"name": f"Near {i}", "phoneNumber": f"{target}{i:03d}"} for i in range(150)]
    client.bulk_upsert_contacts(longer[:100])
    client.bulk_upsert_contacts(longer[100:])
    since = time.time()
    found = client.find_contact_by_phone(target)
    assert found["name"] == "Target" and found["phoneNumber"] == target
    searches = [r for r in sandbox.requests(since=since) if r["path"] == "/v1/contacts"]
    assert len(searches) == 2
    assert all("search=%2B1555000" in r["query"] and "limit=100" in r["query"] for r in searches)
    assert client.find_contact_by_phone("+155500") is None  # a prefix of them all, no exact


def test_find_audiences_by_name_exact_oldest_first(sandbox):
    client = sandbox.client()
    first = client.create_audience("Leads")
    client.create_audience("Leads 2")
    client.create_audience("leads")
    second = client.create_audience("Leads")
    found = client.find_audiences_by_name("Leads")
    assert [a["id"] for a in found] == [first["id"], second["id"]]
    assert client.find_audiences_by_name("Nobody") == []
    assert len(list(client.iter_audiences())) == 4


def test_iter_contacts_reads_every_page(sandbox):
    client = sandbox.client()
    rows = [{"name": f"P{i}", "phoneNumber": f"+1444{i:05d}"} for i in range(130)]
    client.bulk_upsert_contacts(rows[:100])
    client.bulk_upsert_contacts(rows[100:])
    assert len({c["id"] for c in client.iter_contacts()}) == 130
    assert [c["name"] for c in client.iter_contacts(search="P12")] == [
        f"P{i}" for i in (129, 128, 127, 126, 125, 124, 123, 122, 121, 120, 12)
    ]


# --- iter_pages (pure) ---------------------------------------------------------------------


def pages_of(*pages: list[dict], total: int | None = None, total_pages: bool = False):
    calls = []

    def fetch(page: int, limit: int, **params):
        calls.append((page, limit, params))
        data = pages[page - 1] if page <= len(pages) else []
        body = {"data": data, "page": page, "limit": limit}
        if total is not None:
            body["total"] = total
            if total_pages:
                body["totalPages"] = -(-total // limit)
        return body

    return fetch, calls


def test_iter_pages_computes_total_pages_when_missing():
    fetch, calls = pages_of([{"id": i} for i in range(100)], [{"id": 100}], total=101)
    assert len(list(iter_pages(fetch, search="x"))) == 101
    assert calls == [(1, 100, {"search": "x"}), (2, 100, {"search": "x"})]


def test_iter_pages_stops_on_empty_data_and_deduplicates():
    # No total at all; page 2 repeats an item from page 1 (a row shifted while we read).
    fetch, calls = pages_of([{"id": 1}, {"id": 2}], [{"id": 2}, {"id": 3}])
    assert [item["id"] for item in iter_pages(fetch, limit=2)] == [1, 2, 3]
    assert [c[0] for c in calls] == [1, 2, 3]


def test_iter_pages_stops_when_a_page_brings_nothing_new():
    def fetch(page: int, limit: int):
        return {"data": [{"id": 1}]}  # a server that ignores `page`

    assert list(iter_pages(fetch)) == [{"id": 1}]


def test_iter_pages_clamps_the_limit():
    fetch, calls = pages_of([], total=0, total_pages=True)
    assert list(iter_pages(fetch, limit=1000)) == []
    assert calls[0][1] == 100
