"""``oliai-bridge web``: the Flask app under gunicorn, started in-process (no ``gunicorn`` on PATH
needed), binding ``$PORT`` with ``$WEB_CONCURRENCY`` worker processes.

A hook URL is public, so the server must not be held by clients that connect and then send
slowly or nothing at all. gunicorn's threaded worker gives each connection a thread for as long
as it stays open: ten stalled connections took every thread of the 2 × 4 we shipped. The gevent
worker gives each connection a greenlet (a few KB), so hundreds of stalled ones cost little;
``GuardedWorker`` adds what gevent lacks, deadlines for reading a request
(``defaults.HEADER_TIMEOUT_SECONDS``, ``BODY_TIMEOUT_SECONDS`` and a minimum body rate), after
which the connection is shut. The app itself stays synchronous: Redis and requests calls yield
to other greenlets through gevent's patched sockets, patched in the master before anything
imports ``ssl`` (``bridge/__main__.py`` says why).
"""

from __future__ import annotations

import atexit
import errno
import io
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from gevent import Timeout, getcurrent
from gunicorn import glogging
from gunicorn.app.base import BaseApplication
from gunicorn.workers.ggevent import GeventWorker

from bridge import defaults
from bridge.metrics import Tally
from bridge.settings import Settings

log = logging.getLogger(__name__)

WORKER_CLASS = "bridge.web.GuardedWorker"


class GunicornLogger(glogging.Logger):
    """gunicorn's own lines through the process's one handler (``bridge.logs``), so they are
    JSON like the rest. The access log is the app's (``http.request``, with the request id)."""

    def setup(self, cfg) -> None:
        super().setup(cfg)
        for log in (self.error_log, self.access_log):
            for handler in list(log.handlers):
                log.removeHandler(handler)
            log.propagate = True


class BridgeWeb(BaseApplication):
    """gunicorn run in-process, serving what ``load_app`` builds (in each worker, after the
    fork, so that each gets its own Redis connections)."""

    def __init__(self, load_app: Callable[[], Any], options: dict):
        self.load_app = load_app
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            if key in self.cfg.settings and value is not None:
                self.cfg.set(key, value)

    def load(self):
        return self.load_app()


def gunicorn_options(host: str, port: int, workers: int, *, log_level: str = "INFO") -> dict:
    return {
        "bind": f"{host}:{port}",
        "workers": workers,
        "worker_class": WORKER_CLASS,
        "worker_connections": defaults.WORKER_CONNECTIONS,
        # A request never waits on OliAI, only on Redis: 30 s is generous.
        "timeout": 30,
        "graceful_timeout": 20,
        "keepalive": 5,
        "accesslog": None,  # the app logs each request (bridge.app: event http.request)
        "errorlog": "-",
        "logger_class": GunicornLogger,
        "loglevel": log_level.lower(),
        "proc_name": "oliai-bridge-web",
        "forwarded_allow_ips": "*",
        # gunicorn 27's control socket is one path per user (~/.gunicorn/gunicorn.ctl): two
        # bridges on one machine would take it from each other, and nothing here uses it.
        "control_socket_disable": True,
    }


def run_web(
    settings: Settings,
    *,
    host: str,
    port: int,
    workers: int,
) -> None:
    def load_app():
        from bridge.app import create_app

        app = create_app(settings)
        flush_in_background(app.extensions["oliai_bridge"]["ingest"].refusals)
        return ReadDeadlines(app, settings.max_body_bytes)

    options = gunicorn_options(host, port, workers, log_level=settings.log_level)
    BridgeWeb(load_app, options).run()


def flush_in_background(tally: Tally) -> None:
    """Write the process's counted refusals every ``tally.interval`` and at exit, so that a
    process that gets no further request still adds what it counted (a greenlet under gevent:
    threads are patched by then)."""

    def loop() -> None:
        while True:
            time.sleep(tally.interval)
            try:
                tally.flush()
            except Exception:  # never let the loop die: the next second may work
                log.exception("counting refusals failed")

    threading.Thread(target=loop, name="tally-flush", daemon=True).start()
    atexit.register(tally.flush)


# --- deadlines for reading a request ---------------------------------------------------------


class Deadline:
    """A connection's time to send what it must: when it passes, the greenlet serving the
    connection gets the error a client hang-up gives, which gunicorn closes quietly. Armed only
    while the client owes bytes (headers, body): never while the app works on a request."""

    def __init__(self):
        self.timeout: Timeout | None = None

    def arm(self, seconds: float) -> None:
        self.disarm()
        self.timeout = Timeout(seconds, ConnectionResetError(errno.ECONNRESET, "client too slow"))
        self.timeout.start()

    def disarm(self) -> None:
        if self.timeout is not None:
            self.timeout.close()
            self.timeout = None


def body_seconds(content_length: int | None, max_body: int) -> float:
    """Time allowed for a body of ``content_length`` bytes (unknown: the largest accepted)."""
    size = max_body if content_length is None else min(content_length, max_body)
    return defaults.BODY_TIMEOUT_SECONDS + size / defaults.BODY_MIN_BYTES_PER_SECOND


#: The deadline of the connection each greenlet serves (a greenlet serves one connection).
_deadlines: dict[object, Deadline] = {}


class ReadDeadlines:
    """WSGI middleware: once the headers are in, the body is read here within its allowance;
    then the app runs with no deadline; once it has answered, the next request on a kept-alive
    connection gets the header allowance again (which also bounds a client reading the answer
    too slowly)."""

    def __init__(self, app, max_body: int):
        self.app = app
        self.max_body = max_body

    def __call__(self, environ, start_response):
        deadline = _deadlines.get(getcurrent())
        if deadline is None:  # not under GuardedWorker (the test client, another server)
            return self.app(environ, start_response)
        try:
            length = int(environ.get("CONTENT_LENGTH") or "")
        except ValueError:
            length = None
        if length is None or length <= self.max_body:  # larger: the app answers 413 unread
            deadline.arm(body_seconds(length, self.max_body))
            try:
                body = environ["wsgi.input"].read(self.max_body + 1)
            finally:
                deadline.disarm()
            # What was read is the body now, of a known length: for a chunked one past the
            # limit this is how the app learns it (werkzeug reads a chunked body up to
            # max_body and stops there, silently, handing on a truncated body, not a 413).
            environ["wsgi.input"] = io.BytesIO(body)
            environ["CONTENT_LENGTH"] = str(len(body))
            environ.pop("HTTP_TRANSFER_ENCODING", None)
        try:
            return self.app(environ, start_response)
        finally:
            deadline.arm(defaults.HEADER_TIMEOUT_SECONDS)


class GuardedWorker(GeventWorker):
    """gunicorn's gevent worker with a deadline on every connection's reads."""

    def handle(self, listener, client, addr):
        deadline = Deadline()
        me = getcurrent()
        _deadlines[me] = deadline
        deadline.arm(defaults.HEADER_TIMEOUT_SECONDS)
        try:
            super().handle(listener, client, addr)
        finally:
            deadline.disarm()
            _deadlines.pop(me, None)
