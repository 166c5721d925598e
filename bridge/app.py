"""The web side: ``create_app(settings)`` wires the hooks endpoint, health, metrics and status.

A thin IO layer over ``bridge.ingest``: it turns the request into an ``InboundRequest`` and the
``Reply`` back into a response. A webhook is served below Flask (``HookDoor``: the one request
the bridge exists for, and most of what it answers); everything else, and any webhook whose
body or method wants more than the usual, goes through the Flask app. Every error is JSON naming
the problem; no traceback, no secret, ever reaches a response.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from urllib.parse import parse_qsl

from flask import Flask, Request, Response, g, jsonify, request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis import Redis
from redis.exceptions import RedisError
from werkzeug.exceptions import ClientDisconnected, HTTPException
from werkzeug.http import HTTP_STATUS_CODES
from werkzeug.middleware.proxy_fix import ProxyFix

from bridge import logs
from bridge.event import InboundRequest
from bridge.ingest import Ingest
from bridge.metrics import registry_for
from bridge.queue import make_queue
from bridge.settings import Route, Settings
from bridge.sources import get_source
from bridge.storage import connect_for, is_full, redis_warnings
from jobs.lanes import IMPORT_HINT_PATH, Lanes, kick_lanes

log = logging.getLogger(__name__)

HTTP_ERRORS = {
    404: ("not_found", "no such endpoint: webhooks go to POST /hooks/<route>"),
    405: ("method_not_allowed", "this method is not accepted here"),
    413: ("body_too_large", "the body is larger than this bridge accepts"),
}


# The factory's complexity is the sum of its views, each a small closure over the settings.
def create_app(settings: Settings, redis: Redis | None = None) -> Flask:  # noqa: C901
    app = Flask("oliai-bridge")
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    # No 308 redirects (with an HTML body) for "//": a hook URL with a doubled slash is a 404
    # that says so in JSON, like every other wrong URL.
    app.url_map.merge_slashes = False
    app.url_map.strict_slashes = False
    redis = redis if redis is not None else connect_for(settings)
    queue = make_queue(redis, settings.queue_name)
    ingest = Ingest(settings, redis, queue)
    app.wsgi_app = HookDoor(app.wsgi_app, ingest)
    if settings.trusted_proxy_count:
        # The sender's address from X-Forwarded-For, as many entries from the right as there
        # are proxies we run: entries further left are whatever the client wrote.
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=settings.trusted_proxy_count)
    store = ingest.store
    metrics_registry = registry_for(redis, settings.queue_name)
    lanes = Lanes(redis)
    app.extensions["oliai_bridge"] = {
        "settings": settings,
        "redis": redis,
        "queue": queue,
        "store": store,
        "ingest": ingest,
    }

    # The hooks below run for every webhook: each takes the request (and ``g``) from its proxy
    # once, not once per attribute.
    @app.before_request
    def start_request():
        state = g._get_current_object()
        state.request_id = request_id(request._get_current_object().headers.get("X-Request-Id"))
        state.started = time.monotonic()
        state.log_token = logs.push(request_id=state.request_id)

    @app.after_request
    def finish_request(response: Response) -> Response:
        state = g._get_current_object()
        if "request_id" not in state:  # a request refused before our first hook ran
            start_request()
        response.headers["X-Request-Id"] = state.request_id
        req = request._get_current_object()
        route = (req.view_args or {}).get("route") if req.endpoint == "hook" else None
        log_access(req.method, req.path, response.status_code, state.started, route)
        return response

    @app.teardown_request
    def end_request(exc: BaseException | None) -> None:
        token = g.pop("log_token", None)
        if token is not None:
            logs.pop(token)

    @app.route("/hooks/<route>", methods=["GET", "HEAD", "POST", "PUT"])
    def hook(route: str):
        req = request._get_current_object()
        body = req.get_data(cache=True)  # raw bytes first: signatures cover them
        inbound = InboundRequest(
            method=req.method,
            route=route,
            body=body,
            headers={k.lower(): v for k, v in req.headers.items()},
            query={k: v for k, v in req.args.items()},
            url=hook_url(req) if reads_url(settings.routes.get(route)) else "",
            remote_addr=req.remote_addr,
        )
        reply = ingest.handle(inbound)
        response = Response(
            reply.body_bytes(), status=reply.status, content_type=reply.content_type
        )
        for name, value in reply.headers.items():
            response.headers[name] = value
        return response

    @app.get("/healthz")
    def healthz():
        return jsonify(status="ok")

    warned: list[str] = []  # the log says it once per process; every answer says it

    @app.get("/readyz")
    def readyz():
        try:
            redis.ping()
        except RedisError as exc:
            body = {"status": "unavailable", "redis": f"unreachable: {type(exc).__name__}"}
            return jsonify(body), 503, {"Retry-After": "5"}
        body = {"status": "ready", "redis": "ok"}
        try:
            warnings = redis_warnings(redis)
        except RedisError:
            warnings = {}  # INFO refused: the ping above is what readiness means
        if warnings:
            # Ready (a platform must not restart us for it), but loud: see docs/operating.md.
            body["warnings"] = list(warnings.values())
            if not warned:
                for event, text in warnings.items():
                    log.warning(text, extra={"event": event})
                warned.extend(warnings)
        return jsonify(body)

    @app.get("/metrics")
    def metrics():
        ingest.refusals.flush()  # this process's refusals so far, not up to a second later
        try:
            data = generate_latest(metrics_registry)
        except RedisError:
            return _error(503, "storage_unavailable", "Redis is unreachable: no metrics now")
        return Response(data, content_type=CONTENT_TYPE_LATEST)

    @app.get("/deliveries/<delivery_id>")
    def delivery_status(delivery_id: str):
        try:
            delivery = store.get(delivery_id)
            if delivery is None:
                return _error(404, "unknown_delivery", f"no delivery {delivery_id[:64]!r}")
            body = delivery.summary()
            body["history"] = store.history(delivery_id)
        except RedisError:
            return _error(503, "storage_unavailable", "Redis is unreachable: retry later")
        return jsonify(body)

    @app.post(IMPORT_HINT_PATH)
    def import_done():
        """OliAI's import-completion webhook: a hint that the lane should poll the import now.
        The token in the URL (kept out of the access log with the rest of the query) is the
        only proof it comes from OliAI; the answer is the same for every wrong guess."""
        try:
            lane = lanes.import_hint(request.args.get("batch", ""), request.args.get("token", ""))
            if lane is None:
                return _error(404, "unknown_import", "no import is waiting for this address")
            kick_lanes(redis, queue, [lane], settings.delivery.job_timeout_seconds)
        except RedisError:
            return _error(503, "storage_unavailable", "Redis is unreachable: retry later")
        return Response(status=204)

    from bridge.admin import admin_blueprint
    from bridge.admin_page import AdminPage

    page = AdminPage(settings, redis, store)
    app.register_blueprint(page.blueprint)
    app.register_blueprint(admin_blueprint(settings, redis, queue, store, page))

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        return _error(*http_problem(exc, settings.max_body_bytes))

    @app.errorhandler(Exception)
    def unexpected(exc: Exception):
        return _error(*failure(request.method, request.path, exc))

    return app


class HookDoor:
    """WSGI middleware: the webhook endpoint, ``POST``/``PUT /hooks/<route>``, served here below
    Flask, which would spend more on a request than the rest of receiving it. A hook whose route
    (or sender) this process already knows to be past its quota is answered 429 before anything
    else, so the rest of a flood costs the server little more than reading it. What wants more
    than the usual (a handshake ``GET``, another method, a body of unknown length or over the
    limit, a source that reads the URL, a path that names no route) goes on to the Flask app,
    which answers it as it answers every other request. Both give the same answers: the
    request id, the access log line and the JSON errors are this module's either way."""

    PREFIX = "/hooks/"

    def __init__(self, app, ingest: Ingest):
        self.app = app
        self.ingest = ingest
        self.routes = ingest.settings.routes
        self.max_body = ingest.settings.max_body_bytes

    def __call__(self, environ, start_response):
        path = environ.get("PATH_INFO", "")
        if not path.startswith(self.PREFIX):
            return self.app(environ, start_response)
        name = path[len(self.PREFIX) :]
        route = self.routes.get(name)
        over = route and self.ingest.quotas.refusal(route, environ.get("REMOTE_ADDR"))
        if over:
            reply = self.ingest.over_quota(route, over)
            return _respond(
                start_response,
                reply.status,
                reply.body_bytes(),
                reply.content_type,
                reply.headers.items(),
            )
        method = environ.get("REQUEST_METHOD", "GET").upper()
        length = _content_length(environ)
        if (
            method not in ("POST", "PUT")
            or not name
            or "/" in name
            or reads_url(route)
            or length is None
            or length > self.max_body
            or "HTTP_TRANSFER_ENCODING" in environ
        ):
            return self.app(environ, start_response)
        started = time.monotonic()
        rid = request_id(environ.get("HTTP_X_REQUEST_ID"))
        token = logs.push(request_id=rid)
        try:
            status, body, content_type, headers = self._answer(environ, method, path, name, length)
            log_access(method, path, status, started, name)
        finally:
            logs.pop(token)
        return _respond(
            start_response, status, body, content_type, [*headers, ("X-Request-Id", rid)]
        )

    def _answer(self, environ, method: str, path: str, name: str, length: int):
        """(status, body, content type, headers) for a webhook of ``length`` bytes."""
        body = environ["wsgi.input"].read(length) if length else b""
        if len(body) < length:  # the sender hung up part way: as werkzeug answers it
            return _json_answer(*http_problem(ClientDisconnected(), self.max_body))
        inbound = InboundRequest(
            method=method,
            route=name,
            body=body,
            headers=environ_headers(environ),
            query=query_args(environ.get("QUERY_STRING", "")),
            remote_addr=environ.get("REMOTE_ADDR"),
        )
        try:
            reply = self.ingest.handle(inbound)
        except Exception as exc:
            return _json_answer(*failure(method, path, exc))
        return reply.status, reply.body_bytes(), reply.content_type, list(reply.headers.items())


def reads_url(route: Route | None) -> bool:
    """Whether the route's source reads the URL (werkzeug builds it at some cost)."""
    return route is not None and get_source(route.source).reads_url


def environ_headers(environ: dict) -> dict[str, str]:
    """The request's headers by lower-case name, as werkzeug's ``request.headers`` lists them."""
    headers = {}
    for key, value in environ.items():
        if key.startswith("HTTP_"):
            if key not in ("HTTP_CONTENT_TYPE", "HTTP_CONTENT_LENGTH"):
                headers[key[5:].replace("_", "-").lower()] = value
        elif key in ("CONTENT_TYPE", "CONTENT_LENGTH") and value:
            headers[key.replace("_", "-").lower()] = value
    return headers


def query_args(query_string: str) -> dict[str, str]:
    """The query's arguments, the first value of each, as werkzeug's ``request.args`` has them
    (a byte no UTF-8 decodes stays percent-encoded)."""
    args: dict[str, str] = {}
    pairs = parse_qsl(
        query_string.encode("latin-1").decode(), keep_blank_values=True, errors="werkzeug.url_quote"
    )
    for key, value in pairs:
        args.setdefault(key, value)
    return args


def _content_length(environ: dict) -> int | None:
    try:
        length = int(environ.get("CONTENT_LENGTH") or "")
    except ValueError:
        return None
    return length if length >= 0 else None


def _respond(start_response, status: int, body: bytes, content_type: str, headers) -> list[bytes]:
    start_response(
        f"{status} {HTTP_STATUS_CODES.get(status, 'unknown').upper()}",
        [("Content-Type", content_type), ("Content-Length", str(len(body))), *headers],
    )
    return [body]


def request_id(given: str | None) -> str:
    """The request's id: the sender's ``X-Request-Id`` when it is a sane one, else a new one."""
    return given if logs.sane_request_id(given) else uuid.uuid4().hex


def log_access(method: str, path: str, status: int, started: float, route: str | None) -> None:
    """The access log line (never the query string: ``?token=`` must not be logged)."""
    level = logging.WARNING if status >= 500 else logging.INFO
    if not log.isEnabledFor(level):
        return
    log.log(
        level,
        '"%s %s" %s',
        method,
        path,
        status,
        extra={
            "event": "http.request",
            "method": method,
            "path": path,
            "status": status,
            "duration_ms": round((time.monotonic() - started) * 1000, 1),
            "route": route[:64] if route else None,
        },
    )


def http_problem(exc: HTTPException, max_body: int) -> tuple[int, str, str]:
    """(status, error, message) for an HTTP error werkzeug raised."""
    error, message = HTTP_ERRORS.get(exc.code or 500, ("error", exc.description or ""))
    if exc.code == 413:
        message = f"the body is larger than {max_body} bytes"
    return exc.code or 500, error, message


def failure(method: str, path: str, exc: Exception) -> tuple[int, str, str, dict]:
    """(status, error, message, headers) for an exception no handler expected, logged: Redis
    failing is a 503 to retry; anything else is our bug, a 500 that tells nothing of it."""
    if isinstance(exc, RedisError):
        log.error(
            "%s %s: %s: %s",
            method,
            path,
            "Redis is full (maxmemory reached)" if is_full(exc) else "Redis is unavailable",
            exc,
            extra={"event": "redis.unavailable"},
        )
        return (
            503,
            "storage_unavailable",
            "Redis is unreachable: retry later",
            {"Retry-After": "30"},
        )
    log.error(
        "unhandled error on %s %s", method, path, exc_info=(type(exc), exc, exc.__traceback__)
    )
    return 500, "internal_error", "the bridge failed to handle this request", {}


def _json_answer(status: int, error: str, message: str, headers: dict | None = None):
    """``_error``'s answer, byte for byte as Flask's ``jsonify`` writes it, outside Flask."""
    body = (json.dumps({"error": error, "message": message}, separators=(",", ":")) + "\n").encode()
    return status, body, "application/json", list((headers or {}).items())


def hook_url(req: Request) -> str:
    """The URL a hook was posted to, as the sender wrote it: signatures that cover the URL
    (HubSpot) need the query exactly as sent."""
    query = req.query_string
    return req.base_url + ("?" + query.decode("latin-1") if query else "")


def _error(status: int, error: str, message: str, headers: dict | None = None):
    return jsonify(error=error, message=message), status, headers or {}
