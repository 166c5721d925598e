"""The sandbox's HTTP layer: the Flask app over ``Store`` and the threaded server that runs it.

Per ``/v1`` request, in this order: authentication (the four documented 401s), rate limiting
(every authenticated request counts), body size (413), injected latency, injected failure
(500, nothing changed); then the view; then, for a successful write, the injected
fail-after-commit (500 or a dropped connection, the write kept). Unknown routes and methods
answer 404/405 in the standard error shape before any of that. ``/_sandbox/*`` is test control,
without authentication.
"""

from __future__ import annotations

import json
import logging
import random
import signal
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import requests
from flask import Blueprint, Flask, Response, current_app, g, jsonify, request
from werkzeug.exceptions import HTTPException
from werkzeug.serving import make_server

from sandbox import DEMO_KEY
from sandbox.options import Options
from sandbox.ratelimit import SlidingWindowLimiter, retry_after_header
from sandbox.state import ApiFailure, Store, error_body, parse_page

log = logging.getLogger(__name__)

WRITE_METHODS = frozenset({"POST", "PATCH", "DELETE"})
# Endpoints in the bulk class (#1); they count against the general budget too.
BULK_ENDPOINTS = frozenset({"v1.bulk_upsert", "v1.create_import"})
WEBHOOK_TIMEOUT = 5.0
# Reading an oversized body to the end lets the client see the 413 instead of a reset; past
# this much we stop reading and let the connection go.
DRAIN_LIMIT = 64 * 1024 * 1024
REQUEST_LOG_SIZE = 100_000


@dataclass
class Sandbox:
    """Everything the views share: settings, store, limiter, request log and fault RNG."""

    options: Options
    store: Store
    limiter: SlidingWindowLimiter = field(default_factory=SlidingWindowLimiter)
    # Bounded so that a sandbox left running under `oliai-bridge dev` does not grow forever.
    request_log: deque[dict] = field(default_factory=lambda: deque(maxlen=REQUEST_LOG_SIZE))
    log_lock: threading.Lock = field(default_factory=threading.Lock)
    rng: random.Random = field(default_factory=random.Random)
    rng_lock: threading.Lock = field(default_factory=threading.Lock)

    def roll(self, rate: float) -> bool:
        with self.rng_lock:
            return rate > 0 and self.rng.random() < rate

    def choice(self, options: tuple[str, ...]) -> str:
        with self.rng_lock:
            return self.rng.choice(options)

    def reset(self) -> None:
        self.store.reset()
        self.limiter.reset()
        with self.log_lock:
            self.request_log.clear()


def create_app(options: Options | None = None) -> Flask:
    """The sandbox as a WSGI app; ``options`` defaults to the documented production numbers."""
    options = options or Options()
    app = Flask("sandbox")
    app.json.sort_keys = False  # keep fields in the documented order
    app.url_map.strict_slashes = False
    app.extensions["oliai_sandbox"] = Sandbox(
        options=options, store=Store(options), rng=random.Random(options.seed)
    )
    app.register_blueprint(v1, url_prefix="/v1")
    app.register_blueprint(control, url_prefix="/_sandbox")
    app.before_request(_before)
    app.after_request(_after)
    app.register_error_handler(ApiFailure, lambda e: _error(e.status, e.message))
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected)
    return app


def serve(options: Options) -> int:
    """Run the sandbox until interrupted; prints one line with the base URL first."""
    if options.quiet:
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
    app = create_app(options)
    server = make_server(options.host, options.port, app, threaded=True)
    host = f"[{options.host}]" if ":" in options.host else options.host
    url = f"http://{host}:{server.server_port}/v1"
    # Only the public demo key is ever printed; configured keys are secrets.
    if DEMO_KEY in options.keys:
        who = f"demo key {DEMO_KEY}"
    else:
        who = f"{len(options.keys)} API key(s) configured"
    _print_line(f"OliAI sandbox on {url} \u2014 {who}")
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupt)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def _print_line(line: str) -> None:
    try:
        print(line, flush=True)
    except UnicodeEncodeError:
        print(line.replace("\u2014", "-"), flush=True)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _sb() -> Sandbox:
    return current_app.extensions["oliai_sandbox"]


# --- the request pipeline ----------------------------------------------------------------------


def _is_api() -> bool:
    return request.path == "/v1" or request.path.startswith("/v1/")


def _before() -> Response | None:
    if not _is_api():
        return None
    g.started = time.time()
    g.org = g.rate_class = g.fault = None
    if request.routing_exception is not None:
        return None  # answered by _http_error as 404/405, like a router would before any guard
    sb = _sb()
    options = sb.options
    key = request.headers.get("x-api-key", "")
    if not key:
        return _error(401, "API key is required")
    if key in options.revoked_keys:
        return _error(401, "API key has been revoked")
    if key in options.expired_keys:
        return _error(401, "API key has expired")
    g.org = sb.store.org_for_key(key)
    if g.org is None:
        return _error(401, "Invalid API key")
    bulk = request.method == "POST" and request.endpoint in BULK_ENDPOINTS
    g.rate_class = "bulk" if bulk else "general"
    limits = {"general": options.general_limit}
    if bulk:
        limits["bulk"] = options.bulk_limit
    wait = sb.limiter.hit(key, limits, options.rate_window)
    if wait is not None:
        response = _error(429, "Too Many Requests")
        response.headers["Retry-After"] = retry_after_header(wait)
        return response
    if (request.content_length or 0) > options.max_body_bytes or _streamed_too_large(options):
        _drain()
        return _error(413, f"Request body is larger than {options.max_body_bytes} bytes")
    if options.latency_ms:
        time.sleep(options.latency_ms / 1000)
    if sb.roll(options.fail_rate):
        g.fault = "fail"
        return _error(500, "Internal server error")
    return None


def _streamed_too_large(options: Options) -> bool:
    """A body without Content-Length (chunked) is read now, up to one byte past the limit."""
    if request.content_length is not None or request.method not in WRITE_METHODS:
        return False
    data = request.stream.read(options.max_body_bytes + 1)
    # Keep what was read as the body the view will parse.
    request._cached_data = data  # werkzeug's get_data() cache
    return len(data) > options.max_body_bytes


def _drain() -> None:
    remaining = DRAIN_LIMIT
    while remaining > 0:
        chunk = request.stream.read(min(65536, remaining))
        if not chunk:
            break
        remaining -= len(chunk)


def _after(response: Response) -> Response:
    if not _is_api() or "started" not in g:
        return response
    sb = _sb()
    options = sb.options
    committed = (
        request.method in WRITE_METHODS
        and 200 <= response.status_code < 300
        and g.fault is None
        and g.org is not None
    )
    drop = False
    if (
        committed
        and request.path.startswith(options.fail_after_commit_path)
        and sb.roll(options.fail_after_commit_rate)
    ):
        mode = options.fail_after_commit_mode
        if mode == "mixed":
            mode = sb.choice(("500", "drop"))
        if mode == "500":
            g.fault = "commit-500"
            response = _error(500, "Internal server error")
        else:
            g.fault = "commit-drop"
            drop = True
    if g.org is not None and 200 <= response.status_code < 300 and g.fault is None:
        sb.store.touch(g.org)
    entry = {
        "ts": g.started,
        "org": g.org,
        "method": request.method,
        "path": request.path,
        "query": request.query_string.decode("latin-1"),
        "status": None if drop else response.status_code,
        "rate_class": g.rate_class,
        "fault": g.fault,
        "retry_after": response.headers.get("Retry-After"),
    }
    with sb.log_lock:
        sb.request_log.append(entry)
    if drop:
        _drop_connection()
    return response


def _drop_connection() -> None:
    """Close the TCP connection with no response at all; the write stays committed."""
    sock = request.environ.get("werkzeug.socket")
    if sock is None:
        return
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


def _error(status: int, message: str) -> Response:
    response = jsonify(error_body(status, message))
    response.status_code = status
    return response


def _http_error(exc: HTTPException) -> Response:
    if exc.code in (404, 405):
        message = f"Cannot {request.method} {request.path}"
    else:
        message = exc.description or exc.name
    response = _error(exc.code or 500, message)
    for name, value in exc.get_headers():
        if name.lower() == "allow":
            response.headers[name] = value
    return response


def _unexpected(exc: Exception) -> Response:
    log.exception("sandbox bug while handling %s %s", request.method, request.path)
    return _error(500, "Internal server error")


def _json_body() -> object:
    raw = request.get_data(cache=True)
    if not raw.strip():
        return None
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ApiFailure(400, "Request body must be valid JSON") from None


def _page() -> tuple[int, int]:
    return parse_page(request.args)


def _created(body: dict) -> tuple[Response, int]:
    return jsonify(body), 201


# --- /v1 ---------------------------------------------------------------------------------------

v1 = Blueprint("v1", __name__)


@v1.get("/contacts")
def list_contacts():
    page, limit = _page()
    return jsonify(_sb().store.list_contacts(g.org, page, limit, request.args.get("search")))


@v1.post("/contacts")
def create_contact():
    return _created(_sb().store.create_contact(g.org, _json_body()))


@v1.post("/contacts/bulk")
def bulk_upsert():
    return jsonify(_sb().store.bulk_upsert(g.org, _json_body()))


@v1.get("/contacts/<contact_id>")
def get_contact(contact_id: str):
    return jsonify(_sb().store.get_contact(g.org, contact_id))


@v1.patch("/contacts/<contact_id>")
def update_contact(contact_id: str):
    return jsonify(_sb().store.update_contact(g.org, contact_id, _json_body()))


@v1.delete("/contacts/<contact_id>")
def delete_contact(contact_id: str):
    return jsonify(_sb().store.delete_contact(g.org, contact_id))


@v1.get("/audiences")
def list_audiences():
    page, limit = _page()
    return jsonify(_sb().store.list_audiences(g.org, page, limit))


@v1.post("/audiences")
def create_audience():
    return _created(_sb().store.create_audience(g.org, _json_body()))


@v1.get("/audiences/<audience_id>")
def get_audience(audience_id: str):
    return jsonify(_sb().store.get_audience(g.org, audience_id))


@v1.patch("/audiences/<audience_id>")
def update_audience(audience_id: str):
    return jsonify(_sb().store.update_audience(g.org, audience_id, _json_body()))


@v1.delete("/audiences/<audience_id>")
def delete_audience(audience_id: str):
    return jsonify(_sb().store.delete_audience(g.org, audience_id))


@v1.get("/audiences/<audience_id>/contacts")
def list_members(audience_id: str):
    page, limit = _page()
    search = request.args.get("search")
    return jsonify(_sb().store.list_members(g.org, audience_id, page, limit, search))


@v1.post("/audiences/<audience_id>/contacts")
def add_members(audience_id: str):
    return jsonify(_sb().store.add_members(g.org, audience_id, _json_body()))


@v1.delete("/audiences/<audience_id>/contacts")
@v1.post("/audiences/<audience_id>/contacts/remove")
def remove_members(audience_id: str):
    return jsonify(_sb().store.remove_members(g.org, audience_id, _json_body()))


@v1.get("/audiences/<audience_id>/available-contacts")
def list_available(audience_id: str):
    page, limit = _page()
    search = request.args.get("search")
    return jsonify(_sb().store.list_available(g.org, audience_id, page, limit, search))


@v1.get("/flows")
def list_flows():
    page, limit = _page()
    return jsonify(_sb().store.list_flows(g.org, page, limit))


@v1.get("/flows/<flow_id>")
def get_flow(flow_id: str):
    return jsonify(_sb().store.get_flow(g.org, flow_id))


@v1.get("/campaigns")
def list_campaigns():
    page, limit = _page()
    status, search = request.args.get("status"), request.args.get("search")
    return jsonify(_sb().store.list_campaigns(g.org, page, limit, status, search))


@v1.post("/campaigns")
def create_campaign():
    return _created(_sb().store.create_campaign(g.org, _json_body()))


@v1.get("/campaigns/<campaign_id>")
def get_campaign(campaign_id: str):
    return jsonify(_sb().store.get_campaign(g.org, campaign_id))


@v1.post("/campaigns/<campaign_id>/<any(start, pause, resume, cancel):action>")
def campaign_action(campaign_id: str, action: str):
    return jsonify(_sb().store.campaign_action(g.org, campaign_id, action))


@v1.post("/imports/api/bulk")
def create_import():
    sb = _sb()
    accepted, generation = sb.store.create_import(g.org, _json_body())
    _start_import(sb, g.org, accepted["importId"], generation)
    return _created(accepted)


@v1.get("/imports")
def list_imports():
    page, limit = _page()
    return jsonify(_sb().store.list_imports(g.org, page, limit))


@v1.get("/imports/<import_id>/status")
def import_status(import_id: str):
    return jsonify(_sb().store.import_status(g.org, import_id))


def _start_import(sb: Sandbox, org_id: str, import_id: str, generation: int) -> None:
    def work() -> None:
        time.sleep(sb.options.import_delay_ms / 1000)
        outcome = sb.store.process_import(org_id, import_id, generation)
        if outcome is None or not outcome.webhook_url:
            return
        # #28: one POST, no signature, no retry; whatever happens to it is the receiver's issue.
        try:
            requests.post(outcome.webhook_url, json=outcome.payload, timeout=WEBHOOK_TIMEOUT)
        except Exception as exc:
            log.info("import webhook for %s not delivered: %s", import_id, type(exc).__name__)

    threading.Thread(target=work, name=f"import-{import_id}", daemon=True).start()


# --- /_sandbox (test control) ------------------------------------------------------------------

control = Blueprint("control", __name__)


@control.post("/reset")
def reset():
    _sb().reset()
    return jsonify({"ok": True})


@control.get("/config")
def get_config():
    return jsonify(_sb().options.runtime())


@control.post("/config")
def set_config():
    try:
        changes = json.loads(request.get_data() or b"{}")
        return jsonify(_sb().options.update(changes))
    except ValueError as exc:
        return _error(400, str(exc))


@control.get("/requests")
def list_requests():
    sb = _sb()
    since = request.args.get("since", type=float)
    with sb.log_lock:
        entries = [e for e in sb.request_log if since is None or e["ts"] >= since]
    return jsonify(entries)


@control.get("/state")
def dump_state():
    return jsonify(_sb().store.dump())
