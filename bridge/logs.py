"""Log lines: one JSON object per line (``LOG_FORMAT=json``) or a line of text for people.

Every line carries ``time``, ``level``, ``event`` and ``message``, plus whatever it belongs to:
the ``route``, ``delivery_id`` and ``request_id`` bound for the request or job being handled
(``context``/``bind``), and a call's own fields passed as ``extra`` (``method``, ``path``,
``status``, ``duration_ms`` for OliAI API calls). ``event`` names what happened
(``http.request``, ``webhook.accepted``, ``oliai.call``, ``delivery.delivered``...); a library's
line without one is named by its logger.

No secret ever reaches a line: nothing logs headers, bodies or query strings, and as a last
guard every value the settings hold as secret (``hide``) is replaced before a line is written.
Set up once per process by the command line (``setup``); gunicorn's own lines and RQ's go
through the same handler.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar, Token
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, TextIO
from urllib.parse import quote, quote_plus

FORMATS = ("json", "text")
#: What a bound context may carry; anything else is passed per call as ``extra``.
CONTEXT_FIELDS = ("route", "delivery_id", "request_id")
#: A request id we accept from a proxy (``X-Request-Id``): Heroku's router sends a UUID, others
#: similar tokens; anything longer or with other characters is replaced by our own.
REQUEST_ID = re.compile(r"^[A-Za-z0-9+/=_.:-]{8,200}$")
#: Shorter "secrets" are not searched for: they would match ordinary text.
MIN_HIDDEN_CHARS = 6
HIDDEN = "[redacted]"

_context: ContextVar[Mapping[str, Any]] = ContextVar(
    "oliai_bridge_log_context", default=MappingProxyType({})
)
_hidden: list[str] = []
# Attributes every LogRecord has; anything else on a record came in as ``extra``.
_RECORD_ATTRS = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
    "taskName",
}


# --- context -----------------------------------------------------------------------------------


@contextmanager
def context(**fields: Any) -> Iterator[None]:
    """Bind ``fields`` (added to what is bound already) for the lines logged inside."""
    token = push(**fields)
    try:
        yield
    finally:
        pop(token)


def push(**fields: Any) -> Token:
    return _context.set({**_context.get(), **_clean(fields)})


def pop(token: Token) -> None:
    _context.reset(token)


def bind(**fields: Any) -> None:
    """Add ``fields`` to the current context (until the enclosing ``context`` ends)."""
    _context.set({**_context.get(), **_clean(fields)})


def bound(name: str) -> Any:
    return _context.get().get(name)


def _clean(fields: Mapping[str, Any]) -> dict[str, Any]:
    unknown = set(fields) - set(CONTEXT_FIELDS)
    if unknown:
        raise ValueError(f"not a context field: {', '.join(sorted(unknown))}")
    return {k: v for k, v in fields.items() if v is not None}


def sane_request_id(value: str | None) -> bool:
    return bool(value) and REQUEST_ID.match(value) is not None


# --- secrets -----------------------------------------------------------------------------------


def hide(secrets: Iterable[str | None]) -> None:
    """Never write these values (nor their URL-encoded forms) in a line."""
    for secret in secrets:
        if not secret or len(secret) < MIN_HIDDEN_CHARS:
            continue
        for form in (secret, quote(secret, safe=""), quote_plus(secret)):
            if form not in _hidden:
                _hidden.append(form)
    _hidden.sort(key=len, reverse=True)  # a secret that contains another goes first


def scrub(text: str) -> str:
    for secret in _hidden:
        if secret in text:
            text = text.replace(secret, HIDDEN)
    return text


# --- formatting --------------------------------------------------------------------------------


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    """The context and ``extra`` fields of a record, secrets scrubbed."""
    out: dict[str, Any] = dict(getattr(record, "_bridge_context", None) or {})
    for key, value in vars(record).items():
        if key in _RECORD_ATTRS or key.startswith("_") or key == "event":
            continue
        out[key] = value
    return {
        k: scrub(v) if isinstance(v, str) else v
        for k, v in out.items()
        if v is not None and k not in ("time", "level", "message")
    }


def _event(record: logging.LogRecord) -> str:
    return getattr(record, "event", None) or record.name


def _time(record: logging.LogRecord) -> str:
    moment = datetime.fromtimestamp(record.created, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, event, message, then context and extras."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": _time(record),
            "level": record.levelname.lower(),
            "event": _event(record),
            "message": scrub(record.getMessage()),
        }
        line.update(_fields(record))
        if record.exc_info:
            line["error"] = scrub(self.formatException(record.exc_info))
        elif record.exc_text:
            line["error"] = scrub(record.exc_text)
        return json.dumps(line, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """``time LEVEL event: message  key=value ...`` for a terminal."""

    def format(self, record: logging.LogRecord) -> str:
        fields = _fields(record)
        text = f"{_time(record)} {record.levelname:<7} {_event(record)}: "
        text += scrub(record.getMessage())
        if fields:
            text += "  " + " ".join(f"{k}={v}" for k, v in fields.items())
        if record.exc_info:
            text += "\n" + scrub(self.formatException(record.exc_info))
        return text


class _ContextFilter(logging.Filter):
    """Copies the bound context onto the record when it is made (the thread that logs it)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "_bridge_context"):
            record._bridge_context = _context.get()
        return True


def formatter(fmt: str) -> logging.Formatter:
    return TextFormatter() if fmt == "text" else JsonFormatter()


def setup(level: str = "INFO", fmt: str = "json", stream: TextIO | None = None) -> None:
    """One handler on the root logger (standard error), in ``fmt``; called once per process."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(formatter(fmt))
    handler.addFilter(_ContextFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # Python's warnings and a crash's traceback become lines like any other.
    logging.captureWarnings(True)
    sys.excepthook = _log_uncaught
    # Libraries whose INFO lines are noise in production (one per HTTP connection).
    logging.getLogger("urllib3").setLevel(max(logging.WARNING, root.level))


def _log_uncaught(kind, value, tb) -> None:
    if issubclass(kind, KeyboardInterrupt):
        sys.__excepthook__(kind, value, tb)
        return
    logging.getLogger("bridge").critical(
        "uncaught %s", kind.__name__, exc_info=(kind, value, tb), extra={"event": "crash"}
    )
