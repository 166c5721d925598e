"""Errors by meaning, for both sides of the bridge.

Ingest errors (``IngestError``) each map to exactly one HTTP status in ``bridge.app``; OliAI API
errors (``ApiError``) each map to exactly one job outcome in ``jobs.deliver``. No message built
here ever contains an API key, a webhook secret or a token.
"""

from __future__ import annotations


class BridgeError(Exception):
    """Base of every error the bridge raises on purpose."""


class ConfigError(BridgeError):
    """The configuration is invalid; ``problems`` lists every problem found."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("invalid configuration:\n  " + "\n  ".join(self.problems))


# --- ingest (web side) -------------------------------------------------------------------------


class IngestError(BridgeError):
    """A webhook request we refuse; ``status`` and ``error`` become the JSON answer."""

    status = 400
    error = "bad_request"

    def __init__(self, message: str, *, field: str | None = None):
        self.message = message
        self.field = field
        super().__init__(message)

    def to_dict(self) -> dict:
        body = {"error": self.error, "message": self.message}
        if self.field:
            body["field"] = self.field
        return body


class MalformedBody(IngestError):
    status = 400
    error = "malformed_body"


class SignatureInvalid(IngestError):
    """Missing or wrong signature / token, or a stale timestamp; ``reason`` feeds a metric."""

    status = 401
    error = "unauthorized"

    def __init__(self, message: str, *, reason: str = "bad_signature"):
        self.reason = reason
        super().__init__(message)


class Forbidden(IngestError):
    status = 403
    error = "forbidden"


class UnknownRoute(IngestError):
    status = 404
    error = "unknown_route"


class MethodNotAllowed(IngestError):
    status = 405
    error = "method_not_allowed"


class BodyTooLarge(IngestError):
    status = 413
    error = "body_too_large"


class UnsupportedMediaType(IngestError):
    status = 415
    error = "unsupported_media_type"


class Unmappable(IngestError):
    """The submission cannot become a contact (no usable phone, a mapping failed)."""

    status = 422
    error = "unmappable"


class QuotaExceeded(IngestError):
    """More requests than a quota allows (``max_requests_per_minute``, or its per-address
    counterpart): refused before the request is read, to be retried after ``retry_after``."""

    status = 429
    error = "quota_exceeded"

    def __init__(self, message: str, *, quota: str, limit: int, retry_after: int):
        self.quota = quota
        self.limit = limit
        self.retry_after = retry_after
        super().__init__(message)

    def to_dict(self) -> dict:
        return super().to_dict() | {
            "quota": self.quota,
            "limit": self.limit,
            "retryAfter": self.retry_after,
        }


class StorageUnavailable(IngestError):
    """Redis cannot be reached: the sender must retry, we stored nothing."""

    status = 503
    error = "storage_unavailable"
    retry_after = 30


# --- OliAI API (worker side) ---------------------------------------------------------------


class ApiError(BridgeError):
    """An OliAI API call failed. ``status`` is None when no HTTP answer arrived."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        method: str | None = None,
        path: str | None = None,
    ):
        self.message = message
        self.status = status
        self.method = method
        self.path = path
        where = f"{method} {path}: " if method and path else ""
        code = f"{status} " if status else ""
        super().__init__(f"{where}{code}{message}")


class TransientApiError(ApiError):
    """Worth retrying with backoff: the API or the network failed, not our request."""


class ServerError(TransientApiError):
    """5xx from the API."""


class Unreachable(TransientApiError):
    """No usable answer: connection refused or dropped, timeout, unreadable response."""


class RateLimited(ApiError):
    """429 (or our own limiter said no): retry no earlier than ``retry_after`` seconds."""

    def __init__(self, retry_after: float, message: str = "Too Many Requests", **kw):
        self.retry_after = float(retry_after)
        super().__init__(message, **kw)


class PermanentApiError(ApiError):
    """A 4xx that retrying the same request will not fix."""


class ValidationFailed(PermanentApiError):
    """400: the API's ``message`` (a string, or several joined) says what is wrong."""


class PayloadRefused(ValidationFailed):
    """A body OliAI would refuse, caught by ``jobs.payloads`` before any request (no status):
    the message names the field."""

    def __init__(self, message: str, *, field: str | None = None):
        self.field = field
        super().__init__(f"refused before sending: {message}")


class Unauthorized(PermanentApiError):
    """401: key missing, unknown, revoked or expired."""


class ApiForbidden(PermanentApiError):
    """403: insufficient permissions or quota."""


class NotFound(PermanentApiError):
    """404: no such resource in this organization."""


class Conflict(PermanentApiError):
    """409: the resource already exists (a contact with this phone number)."""


class ProviderFetchError(BridgeError):
    """Fetching a lead from a provider API (Meta Graph, HubSpot CRM) failed.

    ``transient`` tells the job whether to retry with backoff or fail at once.
    """

    def __init__(self, message: str, *, transient: bool, status: int | None = None):
        self.message = message
        self.transient = transient
        self.status = status
        super().__init__(message)


class Deferred(BridgeError):
    """Not now, through nobody's fault (another worker holds a lock): try again shortly."""

    def __init__(self, retry_after: float, message: str):
        self.retry_after = float(retry_after)
        self.message = message
        super().__init__(message)
