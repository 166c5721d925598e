"""The admin API: failed deliveries and replay over HTTP, behind ``bridge.admin_token``.

``GET /admin/failed`` (filters ``route``, ``reason``, ``since``; ``offset``/``limit``),
``GET /admin/deliveries/<id>`` (raw payload, mapped contact, history), ``POST /admin/replay``
(``{"ids": [...]}`` or ``{"route": ..., "since": ..., "all": true}``, ``remap``, ``dry_run``).
Without a configured admin token the whole API answers 404: it does not exist. A browser asking
for the first two URLs gets the admin page's views of them instead (``bridge.admin_page``).
"""

from __future__ import annotations

import base64
import time
from typing import Any, Protocol

from flask import Blueprint, Response, jsonify, request
from redis import Redis
from rq import Queue

from bridge import metrics
from bridge.deliveries import DeliveryStore
from bridge.settings import Settings
from bridge.sign_ins import SignInLimit, waiting_message
from bridge.signatures import equal

MAX_REPLAY_PER_REQUEST = 10_000


class Page(Protocol):
    """The admin page (``bridge.admin_page.AdminPage``), which answers browsers on two of the
    API's URLs and adds its security headers to every admin response."""

    def serve_shared(self, endpoint: str, view_args: dict[str, Any]) -> Any: ...

    def finish(self, response: Response) -> Response: ...


# The blueprint's complexity is the sum of its views, each a small closure over the store.
def admin_blueprint(  # noqa: C901
    settings: Settings,
    redis: Redis,
    queue: Queue,
    store: DeliveryStore,
    page: Page | None = None,
) -> Blueprint:
    bp = Blueprint("admin", __name__, url_prefix="/admin")
    sign_ins = SignInLimit(redis)
    if page is not None:
        bp.after_request(page.finish)

    @bp.before_request
    def authorize():
        if not settings.admin_token:
            return _error(404, "not_found", "the admin API is off: set bridge.admin_token")
        if page is not None:
            shown = page.serve_shared(request.endpoint, request.view_args or {})
            if shown is not None:
                return shown
        header = request.headers.get("Authorization", "")
        scheme, _, given = header.partition(" ")
        bearer = scheme.lower() == "bearer" and bool(given)
        if bearer:
            wait = sign_ins.retry_after(request.remote_addr)
            if wait is not None:
                metrics.count(redis, "admin_auth_locked", "bearer")
                refused = _error(429, "too_many_attempts", waiting_message(wait))
                refused[0].headers["Retry-After"] = str(wait)
                return refused
        if not bearer or not equal(given.strip(), settings.admin_token):
            if bearer:
                metrics.count(redis, "admin_auth_failed", "bearer")
                sign_ins.failed(request.remote_addr)
            return _error(401, "unauthorized", "send Authorization: Bearer <admin token>")
        return None

    @bp.get("/failed")
    def failed():
        try:
            offset = max(0, int(request.args.get("offset", 0)))
            limit = min(500, max(1, int(request.args.get("limit", 50))))
            since = parse_since(request.args.get("since"))
        except ValueError as exc:
            return _error(400, "bad_request", str(exc))
        ids, total = store.failed_ids(
            route=request.args.get("route"),
            reason=request.args.get("reason"),
            since=since,
            offset=offset,
            limit=limit,
        )
        items = [d.summary() for d in (store.get(i) for i in ids) if d is not None]
        return jsonify(total=total, offset=offset, limit=limit, items=items)

    @bp.get("/deliveries/<delivery_id>")
    def show(delivery_id: str):
        d = store.get(delivery_id)
        if d is None:
            return _error(404, "unknown_delivery", f"no delivery {delivery_id[:64]!r}")
        return jsonify(delivery_detail(store, d))

    @bp.post("/replay")
    def replay():
        from jobs.replay import Replayer

        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            return _error(400, "malformed_body", "send a JSON object")
        replayer = Replayer(settings, redis, store)
        try:
            since = parse_since(body.get("since"))
        except ValueError as exc:
            return _error(400, "bad_request", str(exc))
        ids = body.get("ids")
        if ids is not None:
            if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
                return _error(400, "bad_request", "ids must be a list of delivery ids")
        elif body.get("all") or body.get("route") or since is not None:
            ids = replayer.select(route=body.get("route"), reason=body.get("reason"), since=since)
        else:
            return _error(400, "bad_request", "name ids, or a route / since filter, or all")
        results = []
        for delivery_id in ids:
            if len(results) >= MAX_REPLAY_PER_REQUEST:
                break
            results.append(
                replayer.replay(
                    delivery_id, remap=bool(body.get("remap")), dry_run=bool(body.get("dry_run"))
                ).to_dict()
            )
        summary: dict[str, int] = {}
        for r in results:
            summary[r["outcome"]] = summary.get(r["outcome"], 0) + 1
        return jsonify(summary=summary, results=results)

    return bp


def delivery_detail(store: DeliveryStore, d) -> dict:
    """Everything known about a delivery, for ``failed show`` and the admin page."""
    body = d.summary()
    body["contact"] = d.contact
    body["event"] = d.event.to_dict()
    raw = store.raw(d)
    if raw is not None:
        data = base64.b64decode(raw.get("body_b64", ""))
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            text = None
        body["raw"] = {
            "headers": raw.get("headers"),
            "query": raw.get("query"),
            "body": text,
            "bodyBase64": None if text is not None else raw.get("body_b64"),
        }
    body["history"] = store.history(d.id)
    return body


def parse_since(value) -> float | None:
    """``since`` as epoch seconds, or a duration back from now: ``90s``, ``15m``, ``2h``, ``7d``."""
    if value in (None, ""):
        return None
    text = str(value).strip().lower()
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    try:
        if text[-1] in units:
            return time.time() - float(text[:-1]) * units[text[-1]]
        return float(text)
    except ValueError:
        raise ValueError(
            f"since: {value!r} is not a time (use 15m, 2h, 7d or epoch seconds)"
        ) from None


def _error(status: int, error: str, message: str):
    return jsonify(error=error, message=message), status
