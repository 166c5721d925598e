"""The validated settings: plain frozen values with no behaviour beyond reading them.

``bridge.config`` builds them from TOML and the environment; everything else receives them.
This module imports nothing of the project but ``bridge.defaults``, so any module may use it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from bridge import defaults

ROUTE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
LANGUAGE = re.compile(r"^[a-z]{2,3}-[A-Z]{2}$")
# Contact fields a route may map; aliases are accepted and folded to the first name.
CONTACT_FIELDS = {
    "name": "name",
    "phoneNumber": "phoneNumber",
    "phone": "phoneNumber",
    "language": "language",
    "email": "email",
    "firstName": "firstName",
    "first_name": "firstName",
    "lastName": "lastName",
    "last_name": "lastName",
    "country": "country",
}
SECRET_KEYS = ("api_key", "secret", "token", "basic_auth", "verify_token", "access_token")
#: Route keys that take a list of values while the credential is rotated (every one is valid).
ROTATABLE_KEYS = ("secret", "token", "basic_auth", "verify_token")


@dataclass(frozen=True)
class OliAISettings:
    base_url: str = defaults.OLIAI_BASE_URL
    api_key: str | None = field(default=None, repr=False)
    default_region: str = defaults.DEFAULT_REGION
    rate_window_seconds: float = defaults.RATE_WINDOW_SECONDS
    general_per_minute: int = defaults.GENERAL_PER_MINUTE
    bulk_per_minute: int = defaults.BULK_PER_MINUTE
    timeout_seconds: float = defaults.OLIAI_TIMEOUT_SECONDS


@dataclass(frozen=True)
class DeliverySettings:
    max_attempts: int = defaults.MAX_ATTEMPTS
    retry_base_seconds: float = defaults.RETRY_BASE_SECONDS
    retry_max_seconds: float = defaults.RETRY_MAX_SECONDS
    job_timeout_seconds: int = defaults.JOB_TIMEOUT_SECONDS
    keep_delivered_days: float = defaults.KEEP_DELIVERED_DAYS
    keep_failed_days: float = defaults.KEEP_FAILED_DAYS
    alert_webhook_url: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class CampaignSettings:
    """A route's ``[routes.campaign]``: put each lead on a call (``bridge`` docs: campaigns)."""

    mode: str  # per_lead | window
    flow_id: str | None = None
    flow_name: str | None = None  # resolved once through GET /flows, then cached
    every_minutes: int = defaults.CAMPAIGN_WINDOW_MINUTES
    #: per_lead campaigns allowed per minute for the route; leads above it join a window
    per_lead_max_per_minute: int = defaults.CAMPAIGN_PER_LEAD_MAX_PER_MINUTE
    calling_hours: str | None = None
    days: str | None = None
    timezone: str | None = None
    #: Dialing settings passed to POST /campaigns (None: the API's defaults)
    calls_per_minute: int | None = None
    max_concurrent_calls: int | None = None
    max_retries: int | None = None
    retry_delay_minutes: int | None = None
    call_timeout_minutes: int | None = None


@dataclass(frozen=True)
class Route:
    """One ``[[routes]]`` entry. Secrets are kept out of ``repr``.

    ``secret``, ``token``, ``basic_auth`` and ``verify_token`` hold a string, or a tuple of
    strings while the credential is rotated (``secret = ["${OLD}", "${NEW}"]``); read them with
    ``values_of``.
    """

    name: str
    source: str
    audience_id: str | None = None
    audience_name: str | None = None
    on_duplicate: str = "update"
    language: str | None = None
    region: str = defaults.DEFAULT_REGION
    fields: Mapping[str, str] = field(default_factory=dict)
    metadata: Mapping[str, str] = field(default_factory=dict)
    options: Mapping[str, Any] = field(default_factory=dict)
    api_base_url: str | None = None
    secret: str | tuple[str, ...] | None = field(default=None, repr=False)
    token: str | tuple[str, ...] | None = field(default=None, repr=False)
    basic_auth: str | tuple[str, ...] | None = field(default=None, repr=False)
    verify_token: str | tuple[str, ...] | None = field(default=None, repr=False)
    access_token: str | None = field(default=None, repr=False)
    api_key: str | None = field(default=None, repr=False)
    campaign: CampaignSettings | None = None
    #: Quotas of this route (None: the ``[bridge]`` defaults; 0 per address: none here).
    max_requests_per_minute: int | None = None
    max_requests_per_minute_per_ip: int | None = None

    def values_of(self, key: str) -> tuple[str, ...]:
        """Every valid value of a credential key: one, or several while it is rotated (the
        newest last, as the rotation steps in the docs add it)."""
        value = getattr(self, key)
        if not value:
            return ()
        return (value,) if isinstance(value, str) else tuple(v for v in value if v)

    def secrets(self) -> list[str]:
        """Every secret value of the route, each value of a rotation list included."""
        return [v for k in SECRET_KEYS for v in self.values_of(k)]


@dataclass(frozen=True)
class Settings:
    oliai: OliAISettings = field(default_factory=OliAISettings)
    delivery: DeliverySettings = field(default_factory=DeliverySettings)
    routes: Mapping[str, Route] = field(default_factory=dict)
    redis_url: str | None = None
    data_dir: str = defaults.DATA_DIR
    max_body_bytes: int = defaults.MAX_BODY_BYTES
    dedup_ttl_seconds: int = defaults.DEDUP_TTL_SECONDS
    queue_name: str = defaults.QUEUE_NAME
    admin_token: str | None = field(default=None, repr=False)
    #: Where OliAI can reach this bridge (``https://bridge.example.com``): imports then tell it
    #: when they are done (a hint; polling confirms). None: polling alone.
    public_url: str | None = None
    #: Inbound quotas (``bridge.quotas``): requests a route accepts a minute, and from one
    #: sender address (None or 0: no per-address quota), unless the route sets its own.
    max_requests_per_minute: int = defaults.MAX_REQUESTS_PER_MINUTE
    max_requests_per_minute_per_ip: int | None = None
    #: Reverse proxies in front of the bridge that each append the client's address to
    #: ``X-Forwarded-For``; 0: the connection's own address is the sender's.
    trusted_proxy_count: int = 0
    source_path: str | None = None
    warnings: tuple[str, ...] = ()
    #: From the environment of the process (``PORT``, ``WEB_CONCURRENCY``, ``LOG_LEVEL``,
    #: ``LOG_FORMAT``, ``REDIS_SSL_CERT_REQS``, ``REDIS_SSL_CA_CERTS``).
    port: int = defaults.PORT
    web_concurrency: int = defaults.WEB_CONCURRENCY
    log_level: str = defaults.LOG_LEVEL
    log_format: str = defaults.LOG_FORMAT
    redis_ssl_cert_reqs: str = defaults.REDIS_SSL_CERT_REQS
    redis_ssl_ca_certs: str | None = None

    def api_key_for(self, route: Route) -> str | None:
        return route.api_key or self.oliai.api_key

    def quotas_for(self, route: Route) -> tuple[int, int | None]:
        """The route's quota, and its per-address quota (None: none)."""
        per_route = route.max_requests_per_minute or self.max_requests_per_minute
        per_address = route.max_requests_per_minute_per_ip
        if per_address is None:
            per_address = self.max_requests_per_minute_per_ip
        return per_route, per_address or None

    def secrets(self) -> list[str]:
        """Every secret value the settings hold (for redaction and for the leak tests)."""
        out = [self.oliai.api_key, self.admin_token, self.delivery.alert_webhook_url]
        for route in self.routes.values():
            out.extend(route.secrets())
        return [s for s in out if s]
