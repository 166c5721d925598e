"""Reading a lead from a provider's API, for sources whose webhooks carry ids only
(``Source.fetch``, run by the delivery job): one GET, and the provider's refusals as
``ProviderFetchError`` that say whether a retry can help.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bridge.exceptions import ProviderFetchError
from bridge.values import id_text

if TYPE_CHECKING:
    import requests

    from bridge.event import Event


def provider_get(
    http: requests.Session,
    url: str,
    *,
    provider: str,
    timeout: float,
    params: dict | None = None,
    headers: dict | None = None,
) -> tuple[requests.Response, Any]:
    """GET a provider's JSON API for ``Source.fetch``: the response and its JSON (None when the
    body is not JSON). Network trouble is a transient ``ProviderFetchError`` that names only
    the provider and the error type: the exception's own text holds the URL, which may hold a
    token."""
    import requests

    try:
        resp = http.get(url, params=params, headers=headers, timeout=timeout)
    except requests.Timeout:
        raise ProviderFetchError(
            f"{provider} did not answer within {timeout:g} s", transient=True
        ) from None
    except requests.RequestException as exc:
        raise ProviderFetchError(
            f"{provider} unreachable ({type(exc).__name__})", transient=True
        ) from None
    try:
        data = resp.json()
    except ValueError:
        data = None
    return resp, data


def fetch_reference(event: Event, kind: str, what: str) -> str:
    """The id of the record ``event.fetch`` names, when it names a ``kind`` record. Anything else
    is a permanent ``ProviderFetchError``: the stored event will not change on a retry."""
    spec = event.fetch or {}
    record_id = id_text(spec.get("id"))
    if spec.get("kind") != kind or record_id is None:
        raise ProviderFetchError(f"not a {what} reference: {spec!r}", transient=False)
    return record_id


def refused_fetch(provider: str, status: int, what: str, detail: str) -> ProviderFetchError:
    """A provider API's non-200 answer for ``what``: transient for 429 and 5xx (the provider's
    own trouble passes), permanent otherwise (a missing record or a bad token stays so)."""
    return ProviderFetchError(
        f"{provider} answered {status} for {what}: {detail}",
        transient=status == 429 or status >= 500,
        status=status,
    )
