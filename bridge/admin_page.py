"""The admin page: server-rendered HTML at ``/admin/`` for people, beside the JSON admin API.

Signing in: the admin token in the sign-in form, which sets a signed, HttpOnly, SameSite=Strict
session cookie that expires after ``SESSION_SECONDS``; or HTTP Basic with user ``admin`` and the
token as password (scripts and browser tests; ``/admin/sign-in-basic`` asks a browser for it).
A wrong token is a 401 and counts ``admin_auth_failed``; after too many from one client address,
every token it sends is answered 429 for a while (``bridge.sign_ins``).

Every POST must come from this host (``Origin``, else ``Referer``) and carry the session's form
token; a form posted from another site is refused with 403 even when the browser attaches Basic
credentials to it. Templates autoescape every value (payloads are written by strangers), and
responses carry a Content-Security-Policy that allows scripts and styles only from
``/admin/static/``, and ``X-Frame-Options: DENY``. Nothing shown holds a secret: raw requests are
shown as stored, already redacted, and API keys only by their key id.

Two URLs are shared with the JSON API: ``/admin/failed`` and ``/admin/deliveries/<id>`` give a
browser (a request preferring ``text/html`` without a Bearer token) the page, and JSON otherwise.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import islice
from typing import Any
from urllib.parse import urlsplit

from flask import Blueprint, Response, g, jsonify, redirect, render_template, request, url_for
from itsdangerous import BadSignature, URLSafeTimedSerializer
from redis import Redis

from bridge import metrics
from bridge.deliveries import DeliveryStore
from bridge.overview import OUTCOMES, read_overview
from bridge.record import ACTIVE
from bridge.search import STATUSES, Search, find
from bridge.settings import Settings
from bridge.sign_ins import SignInLimit, waiting_message
from bridge.signatures import equal

SESSION_COOKIE = "oliai_bridge_admin"
SESSION_SECONDS = 12 * 3600
BASIC_USER = "admin"
BASIC_REALM = "oliai-bridge admin"
#: Deliveries replayed by one press of the bulk button; the page offers the rest afterwards.
BULK_REPLAY_MAX = 1000
PAGE_SIZE = 50

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    # Same-origin posts keep their Referer (the fallback check when Origin is absent).
    "Referrer-Policy": "same-origin",
}

#: What the delivery page says after a replay (the outcome arrives in the query string; only
#: these fixed sentences are ever shown for it).
REPLAYED = {
    "requeued": "Replayed: the delivery is queued again.",
    "already_delivered": "Not replayed: this delivery was already delivered.",
    "in_progress": "Not replayed: this delivery is still in progress.",
    "unmappable": "Not replayed: the lead cannot become a contact (see its history).",
    "missing": "Not replayed: the delivery no longer exists.",
}

#: Endpoints anyone may reach: they check credentials themselves, or serve only CSS/JS.
PUBLIC = {"admin_page.static", "admin_page.sign_in", "admin_page.sign_in_basic"}


def wants_page() -> bool:
    """A browser asking for a shared URL: prefers HTML and sends no Bearer token."""
    if request.headers.get("Authorization", "")[:7].lower() == "bearer ":
        return False
    accept = request.accept_mimetypes
    return accept.quality("text/html") > accept.quality("application/json")


class AdminPage:
    """The page's blueprint and views; ``shared`` maps the JSON API's endpoints to the page
    views that answer a browser on the same URLs (``bridge.admin`` hands them over)."""

    def __init__(self, settings: Settings, redis: Redis, store: DeliveryStore):
        self.settings = settings
        self.redis = redis
        self.store = store
        self.sign_ins = SignInLimit(redis)
        self.sessions = URLSafeTimedSerializer(
            session_secret(settings.admin_token or ""), salt="admin-session"
        )
        bp = Blueprint(
            "admin_page",
            __name__,
            url_prefix="/admin",
            template_folder="templates",
            static_folder="static/admin",
            static_url_path="/static",
        )
        bp.before_request(self.gate)
        bp.after_request(self.finish)
        bp.add_url_rule("/", "overview", self.overview)
        bp.add_url_rule("/sign-in", "sign_in", self.sign_in, methods=["GET", "POST"])
        bp.add_url_rule("/sign-in-basic", "sign_in_basic", self.sign_in_basic)
        bp.add_url_rule("/sign-out", "sign_out", self.sign_out, methods=["POST"])
        bp.add_url_rule("/deliveries", "deliveries", self.deliveries)
        bp.add_url_rule("/deliveries/<delivery_id>/replay", "replay", self.replay, methods=["POST"])
        bp.add_url_rule("/failed/replay", "replay_many", self.replay_many, methods=["GET", "POST"])
        self.blueprint = bp
        self.shared: dict[str, Callable[..., Any]] = {
            "admin.failed": self.failed,
            "admin.show": self.delivery,
        }

    # --- signing in ------------------------------------------------------------------------

    def gate(self) -> Response | None:
        """Before every page request: the page exists, the caller is signed in, a POST is ours."""
        if not self.settings.admin_token:
            body = {
                "error": "not_found",
                "message": "the admin page is off: set bridge.admin_token",
            }
            return jsonify(body), 404
        if request.endpoint in PUBLIC:
            return None
        refused = self.identify()
        if refused is not None:
            return refused
        if g.get("admin_session") is None:
            if request.method in ("GET", "HEAD"):
                back = request.full_path.rstrip("?")
                return redirect(url_for("admin_page.sign_in", next=back), 303)
            return self.refuse(401, "Sign in first.")
        if request.method == "POST":
            return self.check_post()
        return None

    def serve_shared(self, endpoint: str, view_args: dict[str, Any]) -> Response | None:
        """The page for a URL shared with the JSON API, or None when the API should answer."""
        view = self.shared.get(endpoint)
        if view is None or request.method != "GET" or not wants_page():
            return None
        refused = self.gate()
        return refused if refused is not None else view(**view_args)

    def identify(self) -> Response | None:
        """Set ``g.admin_session`` from HTTP Basic or the session cookie; a wrong Basic
        password is refused here (401)."""
        auth = request.authorization
        basic = False
        if auth is not None and auth.type == "basic":
            wait = self.sign_ins.retry_after(request.remote_addr)
            if wait is not None:
                metrics.count(self.redis, "admin_auth_locked", "basic")
                return self.locked(self.refuse(429, waiting_message(wait)), wait)
            if auth.username != BASIC_USER or not equal(
                auth.password or "", self.settings.admin_token or ""
            ):
                self.wrong_token("basic")
                return self.challenge(
                    "Wrong user or token: user admin, the admin token as password."
                )
            basic = True
        session = self.read_session()
        if session is None and basic:
            session = self.new_session()  # holds the form token for this Basic user's posts
        g.admin_session = session
        return None

    def read_session(self) -> dict | None:
        cookie = request.cookies.get(SESSION_COOKIE)
        if not cookie:
            return None
        try:
            session = self.sessions.loads(cookie, max_age=SESSION_SECONDS)
        except BadSignature:  # forged, from another token, or expired
            return None
        return session if isinstance(session, dict) and session.get("csrf") else None

    def new_session(self) -> dict:
        session = {"csrf": secrets.token_urlsafe(32)}
        g.admin_new_session = session
        return session

    def check_post(self) -> Response | None:
        problem = cross_site(request.headers, request.host)
        if problem:
            metrics.count(self.redis, "admin_csrf_refused", "origin")
            return self.refuse(403, problem)
        session = g.get("admin_session")
        sent = request.form.get("csrf_token", "")
        if (
            session is None
            or g.get("admin_new_session") is not None  # its cookie did not come with the post
            or not sent
            or not equal(sent, session["csrf"])
        ):
            metrics.count(self.redis, "admin_csrf_refused", "token")
            return self.refuse(
                403, "This form is not from your current session: reload the page and try again."
            )
        return None

    def sign_in(self):
        target = safe_next(request.values.get("next"))
        if request.method == "GET":
            if self.read_session() is not None:
                return redirect(target, 303)
            return self.render("sign_in.html", next=target, error=None)
        problem = cross_site(request.headers, request.host)
        if problem:
            metrics.count(self.redis, "admin_csrf_refused", "origin")
            return self.refuse(403, problem)
        wait = self.sign_ins.retry_after(request.remote_addr)
        if wait is not None:
            metrics.count(self.redis, "admin_auth_locked", "form")
            page = self.render("sign_in.html", next=target, error=waiting_message(wait))
            return self.locked(Response(page, status=429, content_type="text/html"), wait)
        if not equal(request.form.get("token", ""), self.settings.admin_token or ""):
            self.wrong_token("form")
            return self.render("sign_in.html", next=target, error="Wrong token."), 401
        self.new_session()  # a fresh session (and form token) at every sign-in
        return redirect(target, 303)

    def sign_in_basic(self):
        """Asks the browser for HTTP Basic credentials, then goes on to the overview. (At the
        top of /admin/, so that browsers send the credentials to every page below it.)"""
        refused = self.identify()
        if refused is not None:
            return refused
        if request.authorization is None or request.authorization.type != "basic":
            return self.challenge("Sign in with user admin and the admin token as password.")
        return redirect(url_for("admin_page.overview"), 303)

    def sign_out(self):
        response = redirect(url_for("admin_page.sign_in"), 303)
        response.delete_cookie(SESSION_COOKIE, path="/admin", httponly=True, samesite="Strict")
        return response

    def wrong_token(self, via: str) -> None:
        metrics.count(self.redis, "admin_auth_failed", via)
        self.sign_ins.failed(request.remote_addr)

    @staticmethod
    def locked(response: Response, wait: int) -> Response:
        response.headers["Retry-After"] = str(wait)
        return response

    def challenge(self, message: str) -> Response:
        response = self.refuse(401, message)
        response.headers["WWW-Authenticate"] = f'Basic realm="{BASIC_REALM}", charset="UTF-8"'
        return response

    def refuse(self, status: int, message: str) -> Response:
        html = self.render("refused.html", status=status, message=message)
        return Response(html, status=status, content_type="text/html; charset=utf-8")

    def finish(self, response: Response) -> Response:
        """After every admin response: the security headers, and a new session's cookie."""
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        if request.endpoint != "admin_page.static":
            response.headers.setdefault("Cache-Control", "no-store")
        session = g.get("admin_new_session")
        if session is not None and response.status_code < 400:
            response.set_cookie(
                SESSION_COOKIE,
                self.sessions.dumps(session),
                max_age=SESSION_SECONDS,
                path="/admin",
                secure=request.is_secure,
                httponly=True,
                samesite="Strict",
            )
        return response

    def render(self, template: str, **context: Any) -> str:
        session = g.get("admin_session") or g.get("admin_new_session")
        return render_template(
            f"admin/{template}",
            csrf_token=session["csrf"] if session else "",
            signed_in=g.get("admin_session") is not None,
            section=request.endpoint,
            when=when,
            moment=moment,
            pretty=pretty,
            **context,
        )

    # --- pages -----------------------------------------------------------------------------

    def overview(self):
        overview = read_overview(self.redis, self.settings)
        hooks = {r.name: url_for("hook", route=r.name, _external=True) for r in overview.routes}
        return self.render("overview.html", o=overview, hooks=hooks, outcomes=OUTCOMES)

    def deliveries(self):
        search = Search(
            query=request.args.get("q", "")[:100],
            route=request.args.get("route", ""),
            status=request.args.get("status", ""),
            limit=bounded(request.args.get("limit"), PAGE_SIZE, 1, 1000),
        )
        found = find(self.store, search, region=self.settings.oliai.default_region)
        return self.render(
            "deliveries.html",
            search=search,
            found=found,
            routes=list(self.settings.routes),
            statuses=STATUSES,
        )

    def delivery(self, delivery_id: str):
        from bridge.admin import delivery_detail

        d = self.store.get(delivery_id)
        if d is None:
            return self.refuse(404, f"No delivery {delivery_id[:64]} (it may have expired).")
        return self.render(
            "delivery.html",
            d=d,
            detail=delivery_detail(self.store, d),
            notice=REPLAYED.get(request.args.get("replayed", "")),
            refresh=2 if d.status in ACTIVE else None,
        )

    def failed(self):
        route = request.args.get("route", "")
        reason = request.args.get("reason", "")
        offset = bounded(request.args.get("offset"), 0, 0, 10**9)
        ids, total = self.store.failed_ids(
            route=route or None, reason=reason or None, offset=offset, limit=PAGE_SIZE
        )
        items = [d for d in (self.store.get(i) for i in ids) if d is not None]
        return self.render(
            "failed.html",
            items=items,
            total=total,
            offset=offset,
            page_size=PAGE_SIZE,
            route=route,
            reason=reason,
            routes=list(self.settings.routes),
            reasons=self.failure_reasons(),
        )

    def replay(self, delivery_id: str):
        from jobs.replay import Replayer

        remap = request.form.get("remap") == "1"
        result = Replayer(self.settings, self.redis, self.store).replay(delivery_id, remap=remap)
        target = url_for("admin.show", delivery_id=delivery_id, replayed=result.outcome)
        return redirect(target, 303)

    def replay_many(self):
        """GET: what a bulk replay would take, with the button that confirms it. POST: do it."""
        from jobs.replay import Replayer

        route = request.values.get("route", "") or None
        reason = request.values.get("reason", "") or None
        remap = request.values.get("remap") == "1"
        if request.method == "GET":
            _ids, total = self.store.failed_ids(route=route, reason=reason, limit=1)
            return self.render(
                "replay_confirm.html",
                route=route,
                reason=reason,
                remap=remap,
                total=total,
                batch=min(total, BULK_REPLAY_MAX),
            )
        replayer = Replayer(self.settings, self.redis, self.store)
        ids = list(islice(replayer.select(route=route, reason=reason), BULK_REPLAY_MAX))
        results = replayer.replay_many(ids, remap=remap)
        statuses = {}
        for r in results:
            d = self.store.get(r.delivery_id)
            statuses[r.delivery_id] = d.status if d else "missing"
        summary: dict[str, int] = {}
        for r in results:
            summary[r.outcome] = summary.get(r.outcome, 0) + 1
        _ids, left = self.store.failed_ids(route=route, reason=reason, limit=1)
        return self.render(
            "replay_done.html",
            route=route,
            reason=reason,
            remap=remap,
            results=results,
            statuses=statuses,
            summary=summary,
            left=left,
        )

    def failure_reasons(self) -> list[str]:
        """Reason codes seen so far (from the failure counters), for the filter."""
        reasons = {"unmappable"}
        for key in metrics.read_counters(self.redis):
            parts = key.split(metrics.SEP)
            if parts[0] == "failed" and len(parts) == 3:
                reasons.add(parts[2])
        return sorted(reasons)


# --- helpers the views and templates share -------------------------------------------------


def session_secret(admin_token: str) -> bytes:
    """The key that signs session cookies: changing the admin token signs everyone out."""
    return hmac.new(admin_token.encode(), b"oliai-bridge admin session", hashlib.sha256).digest()


def cross_site(headers, host: str) -> str | None:
    """Why a POST does not come from a page of this host, or None when it does.

    The browser's ``Origin`` (else ``Referer``) must name this host, as the client addressed it
    (``Host``) or as a proxy in front says it was addressed (``X-Forwarded-Host``, which a form
    on another site cannot set).
    """
    origin = headers.get("Origin")
    if origin is None or origin == "null":
        origin = headers.get("Referer")
    if not origin:
        return "Refused: this POST carries neither an Origin nor a Referer header."
    given = authority(origin)
    allowed = {authority("//" + host)}
    for forwarded in (headers.get("X-Forwarded-Host") or "").split(","):
        if forwarded.strip():
            allowed.add(authority("//" + forwarded.strip()))
    if given not in allowed:
        return f"Refused: a form from {given or origin[:100]!r} may not post here (cross-site)."
    return None


def authority(url: str) -> str:
    """``host:port`` of a URL, lower case, without the scheme's default port."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    try:
        port = parts.port
    except ValueError:
        return ""
    if port is None or (parts.scheme, port) in (("http", 80), ("https", 443)):
        return host
    return f"{host}:{port}"


def safe_next(value: str | None) -> str:
    """Where to go after signing in: a path of the admin page, never another site."""
    value = (value or "").rstrip("?")
    if value.startswith("/admin") and not any(bad in value for bad in ("//", "\\", "..")):
        return value
    return "/admin/"


def bounded(value: str | None, default: int, low: int, high: int) -> int:
    try:
        return min(high, max(low, int(value))) if value else default
    except ValueError:
        return default


@dataclass(frozen=True)
class Moment:
    """A time for people: ``full`` (``2025-01-31 14:05:09 UTC``) and ``ago`` (``3 min ago``)."""

    iso: str
    full: str
    ago: str


def moment(value: Any) -> Moment | None:
    """From a datetime, ISO text or epoch seconds; None for no time at all."""
    if value in (None, ""):
        return None
    try:
        if isinstance(value, datetime):
            at = value
        elif isinstance(value, int | float):
            at = datetime.fromtimestamp(value, UTC)
        else:
            at = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except (TypeError, ValueError, OverflowError):
        return Moment(str(value), str(value), str(value))
    at = (at if at.tzinfo else at.replace(tzinfo=UTC)).astimezone(UTC)
    seconds = (datetime.now(UTC) - at).total_seconds()
    ago = f"in {age(-seconds)}" if seconds < 0 else f"{age(seconds)} ago"
    return Moment(at.isoformat(), f"{at:%Y-%m-%d %H:%M:%S} UTC", ago)


def when(value: Any) -> str:
    """``2025-01-31 14:05:09 UTC (3 min ago)``, or ``never``."""
    m = moment(value)
    return f"{m.full} ({m.ago})" if m else "never"


def age(seconds: float) -> str:
    if seconds < 60:
        return f"{int(seconds)} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min"
    if seconds < 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def pretty(value: Any) -> str:
    """JSON for a ``<pre>``: indented, keys in their order, non-ASCII kept readable."""
    return json.dumps(value, indent=2, ensure_ascii=False, default=str)
