"""The OliAI Public API client: one method per endpoint, one HTTP request per call.

Every answer becomes either the decoded JSON body or exactly one error from
``bridge.exceptions`` (see ``_raise_for``), so callers decide retries by error type; the client
itself never retries. An optional limiter is asked before every request and told about every
429. The API key only ever travels in the ``x-api-key`` header: it is kept out of ``repr``,
error messages and logs. Each call logs one ``oliai.call`` line with its method, path (never
the query: searches carry phone numbers), status and duration, and tells ``on_answer`` (the
metrics) the same.
"""

from __future__ import annotations

import email.utils
import logging
import math
import re
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from typing import Any, Protocol
from urllib.parse import quote

import requests
from requests.adapters import HTTPAdapter

from bridge import defaults
from bridge.exceptions import (
    ApiError,
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

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = (defaults.OLIAI_CONNECT_TIMEOUT_SECONDS, defaults.OLIAI_TIMEOUT_SECONDS)
DEFAULT_RETRY_AFTER = defaults.DEFAULT_RETRY_AFTER_SECONDS
MAX_PAGE_SIZE = defaults.OLIAI_MAX_PAGE_SIZE
GENERAL = "general"
BULK = "bulk"

_QUERY = re.compile(r"\?[^\s'\")]*")

_ERROR_BY_STATUS: dict[int, type[ApiError]] = {
    400: ValidationFailed,
    401: Unauthorized,
    403: ApiForbidden,
    404: NotFound,
    409: Conflict,
    413: ValidationFailed,
    422: ValidationFailed,
}


class Limiter(Protocol):
    """What the client needs from a rate limiter (``jobs.ratelimit`` provides one)."""

    def acquire(self, rate_class: str) -> None:
        """Block or raise ``RateLimited`` until a request of ``rate_class`` may go out."""

    def pause(self, seconds: float) -> None:
        """The API answered 429: no request for this key before ``seconds`` from now."""


def parse_retry_after(value: str | None, *, now: float | None = None) -> float:
    """Seconds to wait from a ``Retry-After`` value: delta-seconds or an RFC 7231 HTTP date.

    Missing, negative or unparseable values mean a full ``DEFAULT_RETRY_AFTER``; a date in the
    past means no wait.
    """
    if value is None or not value.strip():
        return DEFAULT_RETRY_AFTER
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        if not math.isfinite(seconds) or seconds < 0:
            return DEFAULT_RETRY_AFTER
        return seconds
    try:
        moment = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return DEFAULT_RETRY_AFTER
    if moment.tzinfo is None:  # HTTP dates are GMT by definition
        moment = moment.replace(tzinfo=UTC)
    current = time.time() if now is None else now
    return max(0.0, moment.timestamp() - current)


def iter_pages(fetch: Callable[..., dict], **params: Any) -> Iterator[dict]:
    """Every item of a paginated list, page by page, each id once.

    ``fetch(page=, limit=, **params)`` returns the API's envelope. Robust to what the docs leave
    open (#30): ``totalPages`` may be missing (computed from ``total``), a page past the end
    may come back empty, and items may shift between pages while we read.
    """
    limit = min(max(int(params.pop("limit", MAX_PAGE_SIZE)), 1), MAX_PAGE_SIZE)
    seen: set = set()
    page = 1
    while True:
        body = fetch(page=page, limit=limit, **params)
        data = body.get("data") or []
        fresh = 0
        for item in data:
            key = item.get("id") if isinstance(item, dict) else None
            if key is not None:
                if key in seen:
                    continue
                seen.add(key)
            fresh += 1
            yield item
        total_pages = body.get("totalPages")
        if total_pages is None and body.get("total") is not None:
            total_pages = math.ceil(body["total"] / (body.get("limit") or limit))
        # A page with nothing new means the server ignores paging or the data shrank under us.
        if not data or not fresh or (total_pages is not None and page >= total_pages):
            return
        page += 1


class OliAIClient:
    """A pooled session against one OliAI base URL with one API key (= one organization)."""

    iter_pages = staticmethod(iter_pages)

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: tuple[float, float] = DEFAULT_TIMEOUT,
        limiter: Limiter | None = None,
        session: requests.Session | None = None,
        on_answer: Callable[[str, str, int | None, float], None] | None = None,
    ):
        self.base_url = base_url.rstrip("/")
        self._api_key = api_key
        self.timeout = timeout
        self.limiter = limiter
        #: Called after every call with (method, path, status or None, seconds).
        self.on_answer = on_answer
        self._owns_session = session is None
        if session is None:
            session = requests.Session()
            adapter = HTTPAdapter(
                pool_connections=defaults.OLIAI_POOL_SIZE, pool_maxsize=defaults.OLIAI_POOL_SIZE
            )
            session.mount("http://", adapter)
            session.mount("https://", adapter)
        self._session = session

    def __repr__(self) -> str:
        return f"OliAIClient(base_url={self.base_url!r})"

    def close(self) -> None:
        if self._owns_session:
            self._session.close()

    def __enter__(self) -> OliAIClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- contacts ----------------------------------------------------------------------------

    def list_contacts(self, page: int = 1, limit: int = 20, search: str | None = None) -> dict:
        return self._get("/contacts", page=page, limit=limit, search=search)

    def get_contact(self, contact_id: str) -> dict:
        return self._get(f"/contacts/{_seg(contact_id)}")

    def create_contact(
        self,
        name: str,
        phone_number: str,
        language: str | None = None,
        metadata: dict | None = None,
    ) -> dict:
        body: dict[str, Any] = {"name": name, "phoneNumber": phone_number}
        if language is not None:
            body["language"] = language
        if metadata is not None:
            body["metadata"] = metadata
        return self._request("POST", "/contacts", json=body)

    def update_contact(self, contact_id: str, **fields: Any) -> dict:
        """PATCH with fields by their API names (``phoneNumber``...); ``metadata`` is replaced."""
        return self._request("PATCH", f"/contacts/{_seg(contact_id)}", json=fields)

    def delete_contact(self, contact_id: str) -> dict:
        return self._request("DELETE", f"/contacts/{_seg(contact_id)}")

    def bulk_upsert_contacts(self, contacts: list[dict]) -> dict:
        """``POST /contacts/bulk``: ``{created, updated, failed, contacts}``; map by phone."""
        return self._request("POST", "/contacts/bulk", json={"contacts": contacts}, rate=BULK)

    # --- audiences ---------------------------------------------------------------------------

    def list_audiences(self, page: int = 1, limit: int = 20) -> dict:
        return self._get("/audiences", page=page, limit=limit)

    def get_audience(self, audience_id: str) -> dict:
        return self._get(f"/audiences/{_seg(audience_id)}")

    def create_audience(self, name: str, description: str | None = None) -> dict:
        body = {"name": name}
        if description is not None:
            body["description"] = description
        return self._request("POST", "/audiences", json=body)

    def update_audience(self, audience_id: str, **fields: Any) -> dict:
        return self._request("PATCH", f"/audiences/{_seg(audience_id)}", json=fields)

    def delete_audience(self, audience_id: str) -> dict:
        return self._request("DELETE", f"/audiences/{_seg(audience_id)}")

    def add_audience_contacts(self, audience_id: str, contact_ids: Iterable[str]) -> dict:
        path = f"/audiences/{_seg(audience_id)}/contacts"
        return self._request("POST", path, json={"contactIds": list(contact_ids)})

    def remove_audience_contacts(self, audience_id: str, contact_ids: Iterable[str]) -> dict:
        # The POST form, because some HTTP stacks drop the body of a DELETE (#17).
        path = f"/audiences/{_seg(audience_id)}/contacts/remove"
        return self._request("POST", path, json={"contactIds": list(contact_ids)})

    def list_audience_contacts(
        self, audience_id: str, page: int = 1, limit: int = 20, search: str | None = None
    ) -> dict:
        path = f"/audiences/{_seg(audience_id)}/contacts"
        return self._get(path, page=page, limit=limit, search=search)

    def list_available_contacts(
        self, audience_id: str, page: int = 1, limit: int = 20, search: str | None = None
    ) -> dict:
        path = f"/audiences/{_seg(audience_id)}/available-contacts"
        return self._get(path, page=page, limit=limit, search=search)

    # --- flows -------------------------------------------------------------------------------

    def list_flows(self, page: int = 1, limit: int = 20) -> dict:
        return self._get("/flows", page=page, limit=limit)

    def get_flow(self, flow_id: str) -> dict:
        return self._get(f"/flows/{_seg(flow_id)}")

    # --- campaigns ---------------------------------------------------------------------------

    def list_campaigns(
        self,
        page: int = 1,
        limit: int = 20,
        status: str | None = None,
        search: str | None = None,
    ) -> dict:
        return self._get("/campaigns", page=page, limit=limit, status=status, search=search)

    def get_campaign(self, campaign_id: str) -> dict:
        return self._get(f"/campaigns/{_seg(campaign_id)}")

    def create_campaign(self, name: str, flow_id: str, audience_id: str, **settings: Any) -> dict:
        """Create in ``DRAFT``; ``settings`` by API names (``callsPerMinute``, ``timezone``...)."""
        body = {"name": name, "flowId": flow_id, "audienceId": audience_id, **settings}
        return self._request("POST", "/campaigns", json=body)

    def start_campaign(self, campaign_id: str) -> dict:
        return self._campaign_action(campaign_id, "start")

    def pause_campaign(self, campaign_id: str) -> dict:
        return self._campaign_action(campaign_id, "pause")

    def resume_campaign(self, campaign_id: str) -> dict:
        return self._campaign_action(campaign_id, "resume")

    def cancel_campaign(self, campaign_id: str) -> dict:
        return self._campaign_action(campaign_id, "cancel")

    def _campaign_action(self, campaign_id: str, action: str) -> dict:
        return self._request("POST", f"/campaigns/{_seg(campaign_id)}/{action}")

    # --- imports -----------------------------------------------------------------------------

    def bulk_import(
        self,
        contacts: list[dict],
        audience_id: str | None = None,
        webhook_url: str | None = None,
    ) -> dict:
        """Queue an async import (≤10,000 rows, extra keys become metadata).

        The answer carries the id as both ``importId`` and ``id`` whichever the API sent (#29).
        """
        body: dict[str, Any] = {"contacts": contacts}
        if audience_id is not None:
            body["audienceId"] = audience_id
        if webhook_url is not None:
            body["webhookUrl"] = webhook_url
        result = self._request("POST", "/imports/api/bulk", json=body, rate=BULK)
        return _both_ids(result)

    def import_status(self, import_id: str) -> dict:
        return _both_ids(self._get(f"/imports/{_seg(import_id)}/status"))

    def list_imports(self, page: int = 1, limit: int = 20) -> dict:
        return self._get("/imports", page=page, limit=limit)

    # --- helpers over several requests -------------------------------------------------------

    def iter_contacts(self, search: str | None = None) -> Iterator[dict]:
        return iter_pages(self.list_contacts, search=search)

    def iter_audiences(self) -> Iterator[dict]:
        return iter_pages(self.list_audiences)

    def find_contact_by_phone(self, e164: str) -> dict | None:
        """The contact whose ``phoneNumber`` is exactly ``e164``, or None.

        ``search`` matches more than the exact number (#9), so every page of results is checked
        until the exact one turns up.
        """
        for contact in self.iter_contacts(search=e164):
            if contact.get("phoneNumber") == e164:
                return contact
        return None

    def find_audiences_by_name(self, name: str) -> list[dict]:
        """Audiences named exactly ``name``, oldest first (the API has no name search, #16)."""
        found = [a for a in self.iter_audiences() if a.get("name") == name]
        return sorted(found, key=lambda a: _timestamp(a.get("createdAt")))

    # --- one request -------------------------------------------------------------------------

    def _get(self, path: str, **params: Any) -> Any:
        return self._request("GET", path, params=params)

    def _request(
        self,
        method: str,
        path: str,
        *,
        params: dict | None = None,
        json: Any = None,
        rate: str = GENERAL,
    ) -> Any:
        if self.limiter is not None:
            self.limiter.acquire(rate)
        query = {k: v for k, v in (params or {}).items() if v is not None}
        kwargs: dict[str, Any] = {
            "params": query or None,
            "headers": {"x-api-key": self._api_key, "Accept": "application/json"},
            "timeout": self.timeout,
        }
        if json is not None:
            kwargs["json"] = json
        started = time.monotonic()
        failure = None
        try:
            response = self._session.request(method, self.base_url + path, **kwargs)
        except requests.RequestException as exc:
            failure = self._unreachable(exc, method, path)
        elapsed = time.monotonic() - started
        self._answered(method, path, None if failure else response.status_code, elapsed)
        if failure is not None:
            # Raised outside the except block so that neither __cause__ nor __context__ keeps
            # the requests exception, whose prepared request carries the key in its headers.
            raise failure
        if 200 <= response.status_code < 300:
            return self._decode(response, method, path)
        self._raise_for(response, method, path)

    def _answered(self, method: str, path: str, status: int | None, seconds: float) -> None:
        log.log(
            logging.WARNING if status is None or status >= 500 else logging.INFO,
            "OliAI %s %s -> %s (%.0f ms)",
            method,
            path,
            status or "no answer",
            seconds * 1000,
            extra={
                "event": "oliai.call",
                "method": method,
                "path": path,
                "status": status,
                "duration_ms": round(seconds * 1000, 1),
            },
        )
        if self.on_answer is not None:
            self.on_answer(method, path, status, seconds)

    def _unreachable(self, exc: requests.RequestException, method: str, path: str) -> Unreachable:
        # Query strings (phone numbers in searches) stay out of messages like out of logs.
        reason = _QUERY.sub("", f"{type(exc).__name__}: {exc}")
        return Unreachable(self._scrub(reason), method=method, path=path)

    def _decode(self, response: requests.Response, method: str, path: str) -> Any:
        if response.status_code == 204 or not response.content:
            return {}
        try:
            return response.json()
        except ValueError:
            raise Unreachable(
                f"{response.status_code} answer is not JSON",
                status=response.status_code,
                method=method,
                path=path,
            ) from None

    def _raise_for(self, response: requests.Response, method: str, path: str) -> None:
        status = response.status_code
        message = self._scrub(_error_message(response))
        where = {"status": status, "method": method, "path": path}
        if status == 429:
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            if self.limiter is not None:
                self.limiter.pause(retry_after)
            raise RateLimited(retry_after, message, **where)
        if status >= 500:
            raise ServerError(message, **where)
        raise _ERROR_BY_STATUS.get(status, PermanentApiError)(message, **where)

    def _scrub(self, text: str) -> str:
        return text.replace(self._api_key, "[api key]") if self._api_key else text


def _error_message(response: requests.Response) -> str:
    """The API's ``message`` (a string, or a list joined with "; "), else something readable."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        message = body.get("message")
        if isinstance(message, list):
            return "; ".join(str(m) for m in message)
        if message:
            return str(message)
    return response.reason or f"HTTP {response.status_code}"


def _both_ids(result: Any) -> Any:
    if isinstance(result, dict):
        import_id = result.get("importId") or result.get("id")
        if import_id:
            result.setdefault("importId", import_id)
            result.setdefault("id", import_id)
    return result


def _seg(value: str) -> str:
    """An id as one path segment, so no id can reach another endpoint."""
    return quote(str(value), safe="")


def _timestamp(value: object) -> float:
    try:
        return datetime.fromisoformat(str(value)).timestamp()
    except ValueError:
        return math.inf  # undated ones last
