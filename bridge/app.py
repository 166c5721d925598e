"""The web side: ``create_app(settings)`` wires the hooks endpoint, health, metrics and status.

A thin IO layer over ``bridge.ingest``: it turns the Flask request into an ``InboundRequest``
and the ``Reply`` back into a response. Every error is JSON naming the problem; no traceback,
no secret, ever reaches a response.
"""

from __future__ import annotations

import logging
import time
import uuid

from flask import Flask, Request, Response, g, jsonify, request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis import Redis
from redis.exceptions import RedisError
from werkzeug.exceptions import HTTPException
from werkzeug.middleware.proxy_fix import ProxyFix

from bridge import logs
from bridge.event import InboundRequest
from bridge.ingest import Ingest
from bridge.metrics import registry_for
from bridge.queue import make_queue
from bridge.settings import Settings
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
    app.wsgi_app = QuotaGate(app.wsgi_app, ingest)
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
        given = request._get_current_object().headers.get("X-Request-Id")
        state.request_id = given if logs.sane_request_id(given) else uuid.uuid4().hex
        state.started = time.monotonic()
        state.log_token = logs.push(request_id=state.request_id)

    @app.after_request
    def finish_request(response: Response) -> Response:
        state = g._get_current_object()
        if "request_id" not in state:  # a request refused before our first hook ran
            start_request()
        response.headers["X-Request-Id"] = state.request_id
        status = response.status_code
        level = logging.WARNING if status >= 500 else logging.INFO
        if not log.isEnabledFor(level):
            return response
        req = request._get_current_object()
        route = (req.view_args or {}).get("route") if req.endpoint == "hook" else None
        log.log(
            level,
            '"%s %s" %s',
            req.method,
            req.path,  # never the query string: ``?token=`` must not be logged
            status,
            extra={
                "event": "http.request",
                "method": req.method,
                "path": req.path,
                "status": status,
                "duration_ms": round((time.monotonic() - state.started) * 1000, 1),
                "route": route[:64] if route else None,
            },
        )
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
            url=hook_url(req) if reads_url(route) else "",
            remote_addr=req.remote_addr,
        )
        reply = ingest.handle(inbound)
        response = Response(
            reply.body_bytes(), status=reply.status, content_type=reply.content_type
        )
        for name, value in reply.headers.items():
            response.headers[name] = value
        return response

    def reads_url(name: str) -> bool:
        """Whether the route's source reads the URL (werkzeug builds it at some cost)."""
        route = settings.routes.get(name)
        return route is not None and get_source(route.source).reads_url

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
        error, message = HTTP_ERRORS.get(exc.code or 500, ("error", exc.description or ""))
        if exc.code == 413:
            message = f"the body is larger than {settings.max_body_bytes} bytes"
        return _error(exc.code or 500, error, message)

    @app.errorhandler(Exception)
    def unexpected(exc: Exception):
        if isinstance(exc, RedisError):
            log.error(
                "%s %s: %s: %s",
                request.method,
                request.path,
                "Redis is full (maxmemory reached)" if is_full(exc) else "Redis is unavailable",
                exc,
                extra={"event": "redis.unavailable"},
            )
            return _error(
                503,
                "storage_unavailable",
                "Redis is unreachable: retry later",
                {"Retry-After": "30"},
            )
        log.exception("unhandled error on %s %s", request.method, request.path)
        return _error(500, "internal_error", "the bridge failed to handle this request")

    return app


class QuotaGate:
    """WSGI middleware: a hook whose route (or sender) this process already knows to be past its
    quota is answered 429 here, before Flask makes a request of it. The rest of a flood then
    costs the server little more than reading it; ``Ingest.handle`` decides everything else."""

    PREFIX = "/hooks/"

    def __init__(self, app, ingest: Ingest):
        self.app = app
        self.ingest = ingest

    def __call__(self, environ, start_response):
        path = environ.get("PATH_INFO", "")
        if path.startswith(self.PREFIX):
            route = self.ingest.settings.routes.get(path[len(self.PREFIX) :])
            over = route and self.ingest.quotas.refusal(route, environ.get("REMOTE_ADDR"))
            if over:
                reply = self.ingest.over_quota(route, over)
                body = reply.body_bytes()
                headers = [
                    ("Content-Type", reply.content_type),
                    ("Content-Length", str(len(body))),
                    *reply.headers.items(),
                ]
                start_response("429 Too Many Requests", headers)
                return [body]
        return self.app(environ, start_response)


def hook_url(req: Request) -> str:
    """The URL a hook was posted to, as the sender wrote it: signatures that cover the URL
    (HubSpot) need the query exactly as sent."""
    query = req.query_string
    return req.base_url + ("?" + query.decode("latin-1") if query else "")


def _error(status: int, error: str, message: str, headers: dict | None = None):
    return jsonify(error=error, message=message), status, headers or {}
