"""The admin page over HTTP (Flask's test client on real Redis and the sandbox): signing in,
CSRF, escaping, and what each page shows. The browser tests are in ``tests/browser/``."""

from __future__ import annotations

import re
import time
from html.parser import HTMLParser

import pytest
from itsdangerous import TimestampSigner, URLSafeTimedSerializer
from rq import SimpleWorker
from rq.worker import WorkerStatus

from bridge import defaults, keys
from bridge.admin_page import SESSION_COOKIE, SESSION_SECONDS, session_secret
from bridge.deliveries import DeliveryStore, phone_shard
from bridge.queue import make_queue
from jobs.ratelimit import key_id
from tests.bridge_fixtures import route_dict

TOKEN = "adm1n-t0ken-for-tests"
BROWSER = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}
SAME_SITE = {**BROWSER, "Origin": "http://localhost"}  # the test client's host is localhost
EVIL = {**BROWSER, "Origin": "http://evil.example:8001"}
LEAD = {"name": "Priya Sharma", "phone": "098765 43210", "city": "Mumbai"}


@pytest.fixture
def admin(make_client):
    """``admin(routes=..., **sections)``: a test client of a bridge with the admin page on."""

    def make(routes=None, **sections):
        sections.setdefault("delivery", {"max_attempts": 1})
        return make_client(routes=routes, bridge={"admin_token": TOKEN}, **sections)

    return make


def sign_in(client) -> str:
    """Sign in through the form; returns the form token of the new session."""
    r = client.post("/admin/sign-in", data={"token": TOKEN, "next": "/admin/"}, headers=SAME_SITE)
    assert r.status_code == 303 and r.headers["Location"] == "/admin/"
    return csrf_of(client.get("/admin/", headers=BROWSER))


def csrf_of(response) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', response.text)
    assert match, response.text[:500]
    return match.group(1)


def failed_delivery(client, run_jobs, sandbox, body=LEAD) -> str:
    """A delivery that failed for good (the API answered 500 to its only attempt)."""
    sandbox.configure(fail_rate=1.0)
    r = client.post("/hooks/leads", json=body)
    assert r.status_code == 202
    run_jobs(client.settings)
    sandbox.configure(fail_rate=0.0)
    delivery_id = r.json["deliveryId"]
    assert client.store.get(delivery_id).status == "failed"
    return delivery_id


def metric(client, name: str, **labels: str) -> float:
    text = client.get("/metrics").text
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    match = re.search(rf"^oliai_bridge_{name}_total\{{{wanted}\}} (\S+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


class Tables(HTMLParser):
    """Every table row's cell texts, for asserting what a page shows."""

    def __init__(self, html: str):
        super().__init__()
        self.rows: list[list[str]] = []
        self._cell: list[str] | None = None
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append(" ".join("".join(self._cell).split()))
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)

    def row(self, first: str, tables: int = 1) -> list[str]:
        """The row whose first cell is ``first`` (one per table, in ``tables`` tables)."""
        found = [r for r in self.rows if r and r[0] == first]
        assert len(found) == tables, (first, self.rows)
        return [cell for r in found for cell in r[1:]] if tables > 1 else found[0]


# --- signing in -------------------------------------------------------------------------------


def test_the_page_is_absent_without_an_admin_token(make_client):
    client = make_client()
    assert client.get("/admin/", headers=BROWSER).status_code == 404
    assert client.get("/admin/failed", headers=BROWSER).status_code == 404
    r = client.post("/admin/sign-in", data={"token": ""}, headers=SAME_SITE)
    assert r.status_code == 404


def test_sign_in_form_sets_a_strict_expiring_session_cookie(admin):
    client = admin()
    r = client.get("/admin/failed?route=leads", headers=BROWSER)
    assert r.status_code == 303
    assert r.headers["Location"].startswith("/admin/sign-in?next=")
    form = client.get(r.headers["Location"], headers=BROWSER)
    assert 'type="password"' in form.text and 'value="/admin/failed?route=leads"' in form.text
    r = client.post(
        "/admin/sign-in",
        data={"token": TOKEN, "next": "/admin/failed?route=leads"},
        headers=SAME_SITE,
    )
    assert r.status_code == 303 and r.headers["Location"] == "/admin/failed?route=leads"
    cookie = r.headers["Set-Cookie"]
    assert cookie.startswith(f"{SESSION_COOKIE}=")
    for part in ("HttpOnly", "SameSite=Strict", f"Max-Age={SESSION_SECONDS}", "Path=/admin"):
        assert part in cookie, cookie
    assert TOKEN not in cookie
    page = client.get("/admin/failed?route=leads", headers=BROWSER)
    assert page.status_code == 200 and "Failed and skipped" in page.text


def test_a_wrong_token_is_a_401_and_a_metric_whichever_way_it_comes(admin):
    client = admin()
    r = client.post("/admin/sign-in", data={"token": TOKEN + "x"}, headers=SAME_SITE)
    assert r.status_code == 401 and "Wrong token." in r.text
    assert "Set-Cookie" not in r.headers
    assert client.get("/admin/", headers=BROWSER).status_code == 303  # still signed out
    r = client.get("/admin/", headers=BROWSER, auth=("admin", "guess"))
    assert r.status_code == 401 and r.headers["WWW-Authenticate"].startswith("Basic ")
    r = client.get("/admin/", headers=BROWSER, auth=("root", TOKEN))
    assert r.status_code == 401
    r = client.get("/admin/failed", headers={"Authorization": "Bearer guess"})
    assert r.status_code == 401 and r.json["error"] == "unauthorized"
    assert metric(client, "admin_auth_failed", via="form") == 1
    assert metric(client, "admin_auth_failed", via="basic") == 2
    assert metric(client, "admin_auth_failed", via="bearer") == 1


def from_address(address: str) -> dict:
    return {"environ_base": {"REMOTE_ADDR": address}}


def test_too_many_wrong_tokens_close_the_sign_in_to_that_address_for_a_while(admin):
    client = admin()
    guesser, colleague = from_address("203.0.113.7"), from_address("198.51.100.2")
    signed_in = admin()  # a session the guesser's address had before the guessing
    signed_in.post(
        "/admin/sign-in", data={"token": TOKEN}, headers=SAME_SITE, **from_address("203.0.113.7")
    )
    for _ in range(defaults.ADMIN_SIGN_IN_FAILURES):
        r = client.post("/admin/sign-in", data={"token": "guess"}, headers=SAME_SITE, **guesser)
        assert r.status_code == 401 and "Wrong token." in r.text
    r = client.post("/admin/sign-in", data={"token": TOKEN}, headers=SAME_SITE, **guesser)
    assert r.status_code == 429  # the right token too: a hit must not stand out from the 429s
    assert 0 < int(r.headers["Retry-After"]) <= defaults.ADMIN_SIGN_IN_WINDOW_SECONDS
    assert "Too many wrong admin tokens from your address: try again in 5 minutes" in r.text
    assert 'type="password"' in r.text  # still the sign-in page, saying why
    assert "Set-Cookie" not in r.headers
    r = client.get("/admin/", headers=BROWSER, auth=("admin", TOKEN), **guesser)
    assert r.status_code == 429 and "Too many wrong admin tokens" in r.text
    assert "Retry-After" in r.headers and "WWW-Authenticate" not in r.headers
    r = client.get("/admin/failed", headers={"Authorization": f"Bearer {TOKEN}"}, **guesser)
    assert r.status_code == 429 and r.json["error"] == "too_many_attempts"
    assert "try again in 5 minutes" in r.json["message"] and "Retry-After" in r.headers
    # Another address signs in; a session opened before the guessing still works.
    r = client.post("/admin/sign-in", data={"token": TOKEN}, headers=SAME_SITE, **colleague)
    assert r.status_code == 303
    r = signed_in.get("/admin/", headers=BROWSER, **from_address("203.0.113.7"))
    assert r.status_code == 200
    assert metric(client, "admin_auth_failed", via="form") == defaults.ADMIN_SIGN_IN_FAILURES
    for via in ("form", "basic", "bearer"):
        assert metric(client, "admin_auth_locked", via=via) == 1


def test_wrong_tokens_count_together_across_web_processes_and_ways_in(admin):
    first, second = admin(), admin()  # two apps, as two gunicorn workers: one Redis
    address = from_address("192.0.2.9")
    for i in range(defaults.ADMIN_SIGN_IN_FAILURES):
        client = first if i % 2 else second
        if i % 3 == 0:
            r = client.get("/admin/", headers=BROWSER, auth=("admin", "guess"), **address)
        elif i % 3 == 1:
            r = client.get("/admin/failed", headers={"Authorization": "Bearer guess"}, **address)
        else:
            r = client.post("/admin/sign-in", data={"token": "guess"}, headers=SAME_SITE, **address)
        assert r.status_code == 401
    for client in (first, second):
        r = client.post("/admin/sign-in", data={"token": TOKEN}, headers=SAME_SITE, **address)
        assert r.status_code == 429


def test_the_address_may_sign_in_again_once_its_window_ends(admin):
    client = admin()
    address = from_address("192.0.2.10")
    for _ in range(defaults.ADMIN_SIGN_IN_FAILURES):
        client.post("/admin/sign-in", data={"token": "guess"}, headers=SAME_SITE, **address)
    r = client.post("/admin/sign-in", data={"token": TOKEN}, headers=SAME_SITE, **address)
    assert r.status_code == 429
    window = keys.sign_in_failures("192.0.2.10")
    assert 0 < client.redis.ttl(window) <= defaults.ADMIN_SIGN_IN_WINDOW_SECONDS
    client.redis.pexpire(window, 1)  # the window's end, without waiting five minutes for it
    while client.redis.exists(window):
        time.sleep(0.01)
    r = client.post("/admin/sign-in", data={"token": TOKEN}, headers=SAME_SITE, **address)
    assert r.status_code == 303


def test_http_basic_with_user_admin_opens_every_page(admin):
    client = admin()
    for url in ("/admin/", "/admin/deliveries", "/admin/failed"):
        r = client.get(url, headers=BROWSER, auth=("admin", TOKEN))
        assert r.status_code == 200, url
    r = client.get("/admin/sign-in-basic", headers=BROWSER)
    assert r.status_code == 401 and 'realm="oliai-bridge admin"' in r.headers["WWW-Authenticate"]
    r = client.get("/admin/sign-in-basic", headers=BROWSER, auth=("admin", TOKEN))
    assert r.status_code == 303 and r.headers["Location"] == "/admin/"


def test_a_session_expires_and_dies_with_a_changed_token(admin):
    client = admin()

    class Aged(TimestampSigner):
        age = 0

        def get_timestamp(self) -> int:
            return int(time.time()) - self.age

    def cookie(token: str, age: float) -> str:
        Aged.age = int(age)
        return URLSafeTimedSerializer(
            session_secret(token), salt="admin-session", signer=Aged
        ).dumps({"csrf": "x" * 43})

    def opens(value: str) -> bool:
        client.set_cookie(SESSION_COOKIE, value, path="/admin")
        return client.get("/admin/", headers=BROWSER).status_code == 200

    assert opens(cookie(TOKEN, SESSION_SECONDS - 3600))
    assert not opens(cookie(TOKEN, SESSION_SECONDS + 60))
    assert not opens(cookie("the-token-before", 60))
    # A signature with one character changed: the first, whose six bits all count (a change
    # to the last character of base64 may fall in its unused bits and still verify).
    good = cookie(TOKEN, 60)
    at = good.rindex(".") + 1
    assert not opens(good[:at] + ("A" if good[at] != "A" else "B") + good[at + 1 :])


def test_the_json_api_answers_as_before_beside_the_page(admin, run_jobs, sandbox):
    client = admin()
    delivery_id = failed_delivery(client, run_jobs, sandbox)
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    for headers in (bearer, {**bearer, **BROWSER}):
        listed = client.get("/admin/failed", headers=headers)
        assert listed.json["items"][0]["deliveryId"] == delivery_id
        shown = client.get(f"/admin/deliveries/{delivery_id}", headers=headers)
        assert shown.json["history"] and shown.json["deliveryId"] == delivery_id
    r = client.get("/admin/failed")  # a script without a token: the API's JSON 401
    assert r.status_code == 401 and r.json["message"].startswith("send Authorization: Bearer")
    # Basic or a session opens the page, never the API's POST
    r = client.post("/admin/replay", json={"all": True}, auth=("admin", TOKEN), headers=SAME_SITE)
    assert r.status_code == 401
    assert client.store.get(delivery_id).status == "failed"


# --- CSRF -------------------------------------------------------------------------------------


def test_a_post_needs_this_sites_origin_and_the_sessions_form_token(admin, run_jobs, sandbox):
    client = admin()
    delivery_id = failed_delivery(client, run_jobs, sandbox)
    history = len(client.store.history(delivery_id))
    token = sign_in(client)
    other_token = token[:-1] + ("B" if token.endswith("A") else "A")
    url = f"/admin/deliveries/{delivery_id}/replay"
    refused = [
        ({"csrf_token": token, "remap": "0"}, EVIL),
        ({"csrf_token": token, "remap": "0"}, {**BROWSER, "Origin": "null"}),
        ({"csrf_token": token, "remap": "0"}, {**BROWSER, "Referer": "http://evil.example/x"}),
        ({"csrf_token": token, "remap": "0"}, BROWSER),  # neither Origin nor Referer
        ({"remap": "0"}, SAME_SITE),
        ({"csrf_token": other_token, "remap": "0"}, SAME_SITE),
    ]
    for form, headers in refused:
        r = client.post(url, data=form, headers=headers)
        assert r.status_code == 403, (form, headers)
    assert client.store.get(delivery_id).status == "failed"
    assert len(client.store.history(delivery_id)) == history
    assert make_queue(client.redis).count == 0
    assert metric(client, "admin_csrf_refused", check="origin") == 4
    assert metric(client, "admin_csrf_refused", check="token") == 2
    # the same post from the page itself (a Referer of this host will do without Origin)
    r = client.post(
        url,
        data={"csrf_token": token, "remap": "0"},
        headers={**BROWSER, "Referer": f"http://localhost/admin/deliveries/{delivery_id}"},
    )
    assert r.status_code == 303
    assert client.store.get(delivery_id).status == "queued"


def test_a_cross_site_form_with_basic_credentials_changes_nothing(admin, run_jobs, sandbox):
    client = admin()
    delivery_id = failed_delivery(client, run_jobs, sandbox)
    page = client.get("/admin/failed", headers=BROWSER, auth=("admin", TOKEN))
    token = csrf_of(page)  # even a form token of a real session does not help the other site
    for headers in (EVIL, SAME_SITE):
        client.delete_cookie(SESSION_COOKIE, path="/admin")  # SameSite=Strict: never sent
        r = client.post(
            f"/admin/deliveries/{delivery_id}/replay",
            data={"csrf_token": token, "remap": "0"},
            headers=headers,
            auth=("admin", TOKEN),
        )
        assert r.status_code == 403
    r = client.post(
        "/admin/failed/replay",
        data={"csrf_token": token, "route": "leads"},
        headers=EVIL,
        auth=("admin", TOKEN),
    )
    assert r.status_code == 403
    assert client.store.get(delivery_id).status == "failed"
    assert make_queue(client.redis).count == 0
    run_jobs(client.settings)
    assert sandbox.org_state()["contacts"] == []


def test_signing_in_and_out_are_posts_of_this_site(admin):
    client = admin()
    r = client.post("/admin/sign-in", data={"token": TOKEN}, headers=EVIL)
    assert r.status_code == 403 and "Set-Cookie" not in r.headers
    token = sign_in(client)
    assert client.post("/admin/sign-out", data={}, headers=SAME_SITE).status_code == 403
    r = client.post("/admin/sign-out", data={"csrf_token": token}, headers=SAME_SITE)
    assert r.status_code == 303
    assert client.get("/admin/", headers=BROWSER).status_code == 303


def test_after_sign_in_only_paths_of_the_admin_page_are_followed(admin):
    client = admin()
    targets = ("https://evil.example/", "//evil.example/", "/hooks/leads", "/admin\\x", "/admin/..")
    for target in targets:
        r = client.post("/admin/sign-in", data={"token": TOKEN, "next": target}, headers=SAME_SITE)
        assert r.headers["Location"] == "/admin/", target


# --- escaping and headers ---------------------------------------------------------------------


def test_payload_values_are_escaped_and_scripts_come_only_from_the_app(admin, run_jobs, sandbox):
    client = admin()
    hostile = "<script>alert(1)</script>"
    body = {
        "name": hostile,
        "phone": "098765 43210",
        "city": '"><img src=x onerror=alert(2)>',
        "</pre><script>alert(3)</script>": "key",
    }
    delivery_id = failed_delivery(client, run_jobs, sandbox, body)
    sign_in(client)
    pages = [
        f"/admin/deliveries/{delivery_id}",
        f"/admin/deliveries?q={delivery_id}",
        "/admin/failed",
        "/admin/",
    ]
    for url in pages:
        r = client.get(url, headers=BROWSER)
        assert r.status_code == 200
        assert r.content_type == "text/html; charset=utf-8"
        assert "<script>alert" not in r.text and "<img src=x" not in r.text
        scripts = re.findall(r"<script[^>]*>", r.text)
        assert scripts == ['<script src="/admin/static/admin.js" defer>'], url
        csp = r.headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp
        assert "frame-ancestors 'none'" in csp
        assert r.headers["X-Frame-Options"] == "DENY"
    page = client.get(f"/admin/deliveries/{delivery_id}", headers=BROWSER).text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page  # shown, as text
    assert "&#34;&gt;&lt;img src=x onerror=alert(2)&gt;" in page
    assert "&lt;/pre&gt;&lt;script&gt;alert(3)&lt;/script&gt;" in page


def test_the_delivery_page_shows_the_raw_request_as_stored_without_secrets(admin, sandbox):
    route = route_dict(token="route-secret-123")
    client = admin(routes=[route])
    r = client.post(
        "/hooks/leads?token=route-secret-123",
        json={**LEAD, "echo": "https://me/hooks/leads?token=route-secret-123"},
    )
    assert r.status_code == 202
    sign_in(client)
    page = client.get(f"/admin/deliveries/{r.json['deliveryId']}", headers=BROWSER).text
    assert "route-secret-123" not in page and TOKEN not in page
    assert "[redacted]" in page and "Priya Sharma" in page
    rows = Tables(page)
    assert rows.row("content-type")[1] == "application/json"


# --- what the pages show ----------------------------------------------------------------------


def test_overview_shows_routes_queues_limits_and_workers(admin, run_jobs, sandbox, redis):
    quiet = route_dict(name="quiet", audience_name=None, audience_id="aud_1")
    # a window longer than the test, so that the calls made are all still in it
    client = admin(routes=[route_dict(), quiet], oliai={"rate_window_seconds": 600})
    assert client.post("/hooks/leads", json=LEAD).status_code == 202
    run_jobs(client.settings)
    failed_delivery(client, run_jobs, sandbox, {"name": "B", "phone": "9876543211"})
    assert client.post("/hooks/leads", json=LEAD).json["duplicate"] is True
    worker = SimpleWorker([make_queue(redis)], connection=redis, name="worker-on-host-7")
    worker.register_birth()
    worker.set_state(WorkerStatus.IDLE)
    worker.heartbeat()
    sign_in(client)
    page = client.get("/admin/", headers=BROWSER).text
    tables = Tables(page)
    leads = tables.row("leads", tables=2)  # routes, and the last 24 hours
    assert leads[1:3] == ["generic", "Test leads"]
    assert leads[3].endswith(" ago") and leads[4].endswith(" ago")  # received, delivered
    assert leads[5:] == ["2", "1", "1", "0", "0", "1", "0"]  # queued .. rejected
    quiet = tables.row("quiet", tables=2)
    assert quiet[1:] == ["generic", "aud_1", "never", "never"] + ["0"] * 7
    assert 'value="http://localhost/hooks/leads"' in page and "data-copy=" in page
    assert tables.row("oliai-bridge")[1:4] == ["0", "0", "0"]  # queued, scheduled, started
    kid = key_id(sandbox.keys[0])
    limiter = tables.row(kid)
    calls = [e for e in sandbox.requests() if e["org"] == sandbox.orgs[sandbox.keys[0]]]
    assert limiter[1] == "leads, quiet"
    assert limiter[2] == f"{len(calls)} / 850"  # 85 % of the 1,000 a window configured
    assert limiter[4] == "not paused"
    assert sandbox.keys[0] not in page
    workers = tables.row("worker-on-host-7")
    assert workers[1:3] == ["idle", "oliai-bridge"] and workers[4].endswith(" ago")


def test_overview_shows_a_paused_key_until_when(admin, redis, sandbox):
    from jobs.ratelimit import RateLimiter

    client = admin()
    RateLimiter(redis, sandbox.keys[0]).pause(90)
    sign_in(client)
    limiter = Tables(client.get("/admin/", headers=BROWSER).text).row(key_id(sandbox.keys[0]))
    assert re.search(r"UTC \(in 1 min\)", limiter[4]), limiter


def test_deliveries_are_found_by_phone_as_typed_id_route_and_status(admin, run_jobs, sandbox):
    client = admin(routes=[route_dict(), route_dict(name="other", audience_name="Other")])
    ids = {}
    for route, phone in (("leads", "098765 43210"), ("leads", "9876543299"), ("other", "")):
        body = {"name": "N", "phone": phone or "9876543277"}
        ids[phone] = client.post(f"/hooks/{route}", json=body).json["deliveryId"]
    run_jobs(client.settings)
    failed = failed_delivery(client, run_jobs, sandbox, {"name": "F", "phone": "+91 98765 43266"})
    sign_in(client)

    def found(**query) -> list[str]:
        r = client.get("/admin/deliveries", query_string=query, headers=BROWSER)
        assert r.status_code == 200
        return re.findall(r'href="/admin/deliveries/(dlv_\w+)"', r.text)

    for typed in ("098765 43210", "+919876543210", "+91 98765-43210", "919876543210"):
        assert found(q=typed) == [ids["098765 43210"]], typed
    assert found(q=ids["9876543299"]) == [ids["9876543299"]]
    assert found(route="other") == [ids[""]]
    assert found(status="failed") == [failed]
    assert found(status="delivered", route="leads") == [ids["9876543299"], ids["098765 43210"]]
    assert found(q="+919876543266", status="delivered") == []
    assert len(found()) == 4
    r = client.get("/admin/deliveries", query_string={"q": "hello"}, headers=BROWSER)
    assert "neither a delivery id (dlv_...) nor a phone number" in r.text


def test_a_number_lists_its_deliveries_of_every_day_and_of_the_earlier_index_newest_first(
    admin, run_jobs
):
    client = admin()
    redis = client.store.redis
    phone = "+919876543210"

    def lead(name: str) -> str:
        r = client.post("/hooks/leads", json={"name": name, "phone": "098765 43210"})
        run_jobs(client.settings)
        return r.json["deliveryId"]

    def moved_to_yesterday() -> None:
        [key] = redis.scan_iter(keys.phones("*", phone_shard(phone)))
        day = int(key.decode().split(":")[-2])
        redis.rename(key, keys.phones(day - 1, phone_shard(phone)))

    earliest = lead("A")
    # indexed by the version before this one: the number's own zset, nothing in the day zsets
    redis.delete(*redis.scan_iter(keys.phones("*", "*")))
    redis.zadd(keys.by_phone(phone), {earliest: time.time() - 60})
    yesterday = lead("B")
    moved_to_yesterday()
    today = lead("C")
    other = client.post("/hooks/leads", json={"name": "O", "phone": "9876543211"})
    sign_in(client)
    r = client.get("/admin/deliveries", query_string={"q": "98765 43210"}, headers=BROWSER)
    assert re.findall(r'href="/admin/deliveries/(dlv_\w+)"', r.text) == [
        today,
        yesterday,
        earliest,
    ]
    assert other.json["deliveryId"] not in r.text


def test_failed_page_replays_one_and_shows_the_new_status(admin, run_jobs, sandbox):
    client = admin()
    delivery_id = failed_delivery(client, run_jobs, sandbox)
    token = sign_in(client)
    page = client.get("/admin/failed", headers=BROWSER).text
    row = Tables(page).row(delivery_id)
    assert row[2:5] == ["leads", "+919876543210", "failed"]
    assert "retries_exhausted" in row[5] and "500" in row[5]
    assert ">Replay</button>" in page and ">Replay with current mapping</button>" in page
    r = client.post(
        f"/admin/deliveries/{delivery_id}/replay",
        data={"csrf_token": token, "remap": "0"},
        headers=SAME_SITE,
    )
    assert r.status_code == 303
    assert r.headers["Location"] == f"/admin/deliveries/{delivery_id}?replayed=requeued"
    page = client.get(r.headers["Location"], headers=BROWSER).text
    assert "Replayed: the delivery is queued again." in page
    assert '<span class="badge queued">queued</span>' in page
    assert '<meta http-equiv="refresh"' in page  # follows the delivery while it runs
    run_jobs(client.settings)
    page = client.get(f"/admin/deliveries/{delivery_id}", headers=BROWSER).text
    assert '<span class="badge delivered">delivered</span>' in page
    assert '<meta http-equiv="refresh"' not in page
    [contact] = sandbox.org_state()["contacts"]
    assert contact["phoneNumber"] == "+919876543210"


def test_replay_with_current_mapping_maps_the_stored_request_again(admin, run_jobs, sandbox, redis):
    first = route_dict(fields={"name": "fields.first"})
    client = admin(routes=[first])
    delivery_id = failed_delivery(
        client, run_jobs, sandbox, {"first": "Ravi", "full": "Ravi Kumar", "phone": "9876543210"}
    )
    fixed = admin(routes=[route_dict(fields={"name": "fields.full"})])  # the config, corrected
    token = sign_in(fixed)
    r = fixed.post(
        f"/admin/deliveries/{delivery_id}/replay",
        data={"csrf_token": token, "remap": "1"},
        headers=SAME_SITE,
    )
    assert r.status_code == 303
    run_jobs(fixed.settings)
    [contact] = sandbox.org_state()["contacts"]
    assert contact["name"] == "Ravi Kumar"
    assert any("remapped" in e.get("detail", "") for e in fixed.store.history(delivery_id))


def test_bulk_replay_asks_first_then_replays_the_filter(admin, run_jobs, sandbox):
    client = admin(routes=[route_dict(), route_dict(name="other", audience_name="Other")])
    ids = [
        failed_delivery(client, run_jobs, sandbox, {"name": f"L{i}", "phone": f"98765432{i:02d}"})
        for i in range(3)
    ]
    sandbox.configure(fail_rate=1.0)
    other = client.post("/hooks/other", json={"name": "O", "phone": "9876543299"})
    run_jobs(client.settings)
    sandbox.configure(fail_rate=0.0)
    token = sign_in(client)
    confirm = client.get(
        "/admin/failed/replay", query_string={"route": "leads"}, headers=BROWSER
    ).text
    assert "Replay 3 deliveries?" in confirm
    assert all(client.store.get(i).status == "failed" for i in ids)  # asking changed nothing
    r = client.post(
        "/admin/failed/replay",
        data={"csrf_token": token, "route": "leads", "reason": ""},
        headers=SAME_SITE,
    )
    assert r.status_code == 200
    done = Tables(r.text)
    for delivery_id in ids:
        assert done.row(delivery_id)[1] == "requeued"
        assert done.row(delivery_id)[3] == "queued"
    run_jobs(client.settings)
    assert {client.store.get(i).status for i in ids} == {"delivered"}
    assert client.store.get(other.json["deliveryId"]).status == "failed"  # not in the filter


def test_per_route_received_index_of_earlier_versions_is_trimmed_with_the_others(admin, redis):
    client = admin()
    client.post("/hooks/leads", json=LEAD)
    store = DeliveryStore(redis, keep_delivered_days=1, keep_failed_days=1)
    key = "oliai-bridge:idx:received:route:leads"
    assert redis.zcard(key) == 0  # no longer written: each lead would pay ~125 bytes for it
    redis.zadd(key, {"dlv_earlier": time.time()})  # as an earlier version left it
    assert redis.zcard(key) == 1
    assert store.trim_indexes(now=time.time() + 2 * 86400) >= 2
    assert redis.zcard(key) == 0
