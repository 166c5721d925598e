"""Every source that signs its requests, as the security tests need it: its route, a second
valid secret for rotations, and a request signed with a given secret (and, where the signature
covers one, a given timestamp), built by the source's own test builder in ``tests/sources``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bridge.event import InboundRequest
from tests.sources import (
    test_calendly,
    test_hubspot,
    test_meta_lead_ads,
    test_shopify,
    test_standard_webhooks,
    test_tally,
    test_typeform,
    test_webflow,
)

#: The URL the Flask test client shows the app (HubSpot's v2/v3 signatures cover it).
HUBSPOT_URL = "http://localhost/hooks/hs"


@dataclass(frozen=True)
class SignedSource:
    name: str
    route: dict[str, Any]
    secret: str
    #: Another valid secret of the same kind (the new one of a rotation).
    new_secret: str
    #: ``sign(secret, at)``: the source's one valid request, signed with ``secret`` at ``at``
    #: (seconds since the epoch; sources that sign no timestamp ignore it).
    sign: Callable[[str, float], InboundRequest]
    #: What the provider's first delivery is answered (a few providers want exactly 200).
    accepted: int = 202
    #: Seconds a signed timestamp may be off (None: the provider signs no timestamp).
    tolerance: float | None = None

    def signed(self, secret: str | None = None, at: float | None = None) -> InboundRequest:
        return self.sign(secret or self.secret, time.time() if at is None else at)

    def route_with(self, secret: Any) -> dict[str, Any]:
        return {**self.route, "secret": secret}


def _hubspot(payload: Any) -> Callable[[str, float], InboundRequest]:
    def sign(secret: str, at: float) -> InboundRequest:
        return test_hubspot.signed(
            payload, secret=secret, url=HUBSPOT_URL, timestamp=int(at * 1000)
        )

    return sign


SIGNED_SOURCES = [
    SignedSource(
        "typeform",
        test_typeform.ROUTE_DATA,
        test_typeform.SECRET,
        "tf-new-secret-0c9d8e7f6a5b",
        lambda secret, at: test_typeform.signed(secret=secret),
    ),
    SignedSource(
        "tally",
        test_tally.ROUTE_DATA,
        test_tally.SECRET,
        "tally-new-secret-5e4d3c2b",
        lambda secret, at: test_tally.signed(secret=secret),
    ),
    SignedSource(
        "shopify",
        test_shopify.ROUTE_DATA,
        test_shopify.SECRET,
        "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",
        lambda secret, at: test_shopify.signed(secret=secret),
    ),
    SignedSource(
        "meta_lead_ads",
        test_meta_lead_ads.ROUTE_DATA,
        test_meta_lead_ads.APP_SECRET,
        "7e6d5c4b3a2f1e0d9c8b7a6f5e4d3c2b",
        lambda secret, at: test_meta_lead_ads.signed(secret=secret),
        accepted=200,
    ),
    SignedSource(
        "calendly",
        test_calendly.ROUTE_DATA,
        test_calendly.SECRET,
        "calendly-new-signing-key-4d2e",
        lambda secret, at: test_calendly.signed(secret=secret, timestamp=at),
        tolerance=180,
    ),
    SignedSource(
        "webflow",
        test_webflow.ROUTE_DATA,
        test_webflow.SECRET,
        "f0e1d2c3b4a5968778695a4b3c2d1e0f",
        lambda secret, at: test_webflow.signed(secret=secret, timestamp=str(int(at * 1000))),
        accepted=200,
        tolerance=300,
    ),
    SignedSource(
        "standard_webhooks",
        test_standard_webhooks.ROUTE_DATA,
        test_standard_webhooks.SECRET,
        test_standard_webhooks.OTHER_SECRET,
        lambda secret, at: test_standard_webhooks.signed(secret=secret, timestamp=at),
        tolerance=300,
    ),
    SignedSource(
        "hubspot-workflow",
        test_hubspot.ROUTE_DATA,
        test_hubspot.SECRET,
        "hs-new-client-secret-2b7d",
        _hubspot(test_hubspot.WORKFLOW_CUSTOM_BODY),
        tolerance=300,
    ),
    SignedSource(
        "hubspot-webhooks-api",
        {**test_hubspot.ROUTE_DATA, "access_token": test_hubspot.ACCESS_TOKEN},
        test_hubspot.SECRET,
        "hs-new-client-secret-2b7d",
        _hubspot(test_hubspot.WEBHOOKS_BATCH),
        tolerance=300,
    ),
]

TIMESTAMPED = [s for s in SIGNED_SOURCES if s.tolerance is not None]


def by_name(sources: list[SignedSource]) -> dict[str, Any]:
    """``pytest.mark.parametrize`` arguments: the sources, each named."""
    return {"argvalues": sources, "ids": [s.name for s in sources]}
