"""HubSpot: workflow "Send a webhook" actions and Webhooks API subscriptions, told apart by shape.

A workflow action posts one JSON object: the enrolled contact with all its properties
(``properties.<name>.value``), or a flat body the user composed. The Webhooks API posts a JSON
array of up to 100 events that carry object ids only; each wanted contact event becomes a lead
whose contact the delivery job fetches from the CRM API with the route's ``access_token``.

HubSpot signs with the app's client secret: ``X-HubSpot-Signature-v3`` (HMAC over method, URL,
body and a millisecond timestamp) plus the older ``X-HubSpot-Signature`` hash (v1 for the
Webhooks API, v2 for workflows). Three versions, two of them over a URL that has candidates,
are not one ``Scheme``: this module checks them itself, in ``bridge.signatures``' order and with
its helpers. A route without the app secret can use a token instead (the workflow action's
"API key" authentication).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode, urlsplit

from bridge.event import InboundRequest, Lead
from bridge.exceptions import MalformedBody, ProviderFetchError, SignatureInvalid
from bridge.redaction import redact
from bridge.signatures import (
    check_signed,
    check_window,
    decode,
    equal_any,
    hmac_digest,
    read_timestamp,
    require_header,
)
from bridge.sources.base import MAX_ERROR_CHARS, Source
from bridge.sources.fetching import fetch_reference, provider_get, refused_fetch
from bridge.values import clean_text, first_country, first_text, id_text

if TYPE_CHECKING:
    import requests

    from bridge.event import Event
    from bridge.settings import Route

DEFAULT_API_BASE_URL = "https://api.hubapi.com"
V3_HEADER = "x-hubspot-signature-v3"
LEGACY_HEADER = "x-hubspot-signature"
TIMESTAMP_HEADER = "x-hubspot-request-timestamp"
#: HubSpot's documented limit: reject a request timestamp older than five minutes.
TIMESTAMP_TOLERANCE = 300
#: Contact properties fetched for a Webhooks API event; ``properties`` in the route adds more.
FETCH_PROPERTIES = (
    "firstname",
    "lastname",
    "email",
    "mobilephone",
    "phone",
    "hs_calculated_phone_number",
    "hs_calculated_phone_number_country_code",
    "hs_country_region_code",
    "country",
    "city",
    "company",
    "hs_language",
    "lifecyclestage",
    "hs_analytics_source",
    "hs_analytics_source_data_1",
    "hs_analytics_source_data_2",
)
#: Webhooks API subscriptions that become leads unless the route lists its own.
DEFAULT_SUBSCRIPTIONS = ("contact.creation",)
#: ``objectTypeId`` of contacts in generic (``object.*``) subscriptions.
CONTACT_OBJECT_TYPE = "0-1"
#: Escapes HubSpot decodes in the URL before signing v3 (its validating-requests page).
URI_ESCAPES = re.compile(r"%(3A|2F|3F|40|21|24|27|28|29|2A|2C|3B)", re.IGNORECASE)
#: Phone properties by preference: a mobile number first, then HubSpot's own E.164 rendering
#: of ``phone`` (it resolves numbers typed without a country code), then ``phone`` as typed.
PHONE_PROPERTIES = ("mobilephone", "hs_calculated_phone_number", "phone")
COUNTRY_PROPERTIES = (
    "hs_calculated_phone_number_country_code",
    "hs_country_region_code",
    "country",
)
EVENT_FIELDS = (
    "objectId",
    "portalId",
    "subscriptionType",
    "occurredAt",
    "changeSource",
    "propertyName",
    "propertyValue",
)


class HubSpotSource(Source):
    name = "hubspot"
    signs = True
    # The Webhooks API retries any 4xx for a day and a workflow shows a 4xx only as a failed
    # action: a contact without a usable phone is recorded as skipped and acknowledged instead.
    unmappable = "accept"
    reads_url = True  # the v3 signature covers the URL (``request_uris``)

    def check_route(self, route: Route) -> list[str]:
        problems = []
        public_url = route.options.get("public_url")
        if public_url is not None and not (
            isinstance(public_url, str) and public_url.startswith(("https://", "http://"))
        ):
            problems.append("public_url: must be the http(s) URL HubSpot calls")
        for key in ("subscription_types", "properties"):
            value = route.options.get(key)
            if value is not None and not _string_list(value):
                problems.append(f"{key}: must be a list of strings")
        return problems

    # --- verification ----------------------------------------------------------------------------

    def verify(self, req: InboundRequest, route: Route) -> None:
        # The v2 and v3 signatures cover the URL, which the route's public_url may correct.
        check_signed(req, route, lambda req, secrets: self.check_request(req, route, secrets))

    def check_request(
        self,
        req: InboundRequest,
        route: Route,
        secrets: Sequence[str],
        now: float | None = None,
    ) -> None:
        """Accept the request when any signature version HubSpot sent is valid with one of
        ``secrets``. The request timestamp, when sent, must be readable and within the window
        whichever version matched: v1 and v2 sign none, and must not let a captured request
        through late."""
        if not req.header(V3_HEADER) and not req.header(LEGACY_HEADER):
            raise SignatureInvalid(
                "missing X-HubSpot-Signature-v3 (or X-HubSpot-Signature) header",
                reason="missing_header",
            )
        stamp = (req.header(TIMESTAMP_HEADER) or "").strip()
        seconds = read_timestamp(stamp, "ms", TIMESTAMP_HEADER) if stamp else None
        failures: list[SignatureInvalid] = []
        for header, check in ((V3_HEADER, self._check_v3), (LEGACY_HEADER, self._check_legacy)):
            if not req.header(header):
                continue
            try:
                check(req, route, secrets)
                break
            except SignatureInvalid as exc:
                failures.append(exc)
        else:
            raise failures[0]
        # After the signature, so a late genuine request is not counted as a forgery.
        if seconds is not None:
            check_window(seconds, TIMESTAMP_TOLERANCE, now)

    def _check_v3(self, req: InboundRequest, route: Route, secrets: Sequence[str]) -> None:
        given = decode(require_header(req, V3_HEADER), "base64")
        timestamp = require_header(req, TIMESTAMP_HEADER)
        signed = [
            f"{req.method.upper()}{uri}".encode() + req.body + timestamp.encode()
            for uri in request_uris(req, route)
        ]
        expected = [hmac_digest(secret, message) for secret in secrets for message in signed]
        if not equal_any(given, expected):
            raise SignatureInvalid(
                "X-HubSpot-Signature-v3 does not match (check the app's client secret and, behind "
                "a proxy, the route's public_url)",
                reason="bad_signature",
            )

    def _check_legacy(self, req: InboundRequest, route: Route, secrets: Sequence[str]) -> None:
        given = decode(require_header(req, LEGACY_HEADER), "hex")
        version = (req.header("x-hubspot-signature-version") or "").strip().lower()
        sources = []
        for secret in secrets:
            if version in ("v1", ""):
                sources.append(secret.encode() + req.body)
            if version in ("v2", ""):
                for uri in request_uris(req, route):
                    sources.append(f"{secret}{req.method.upper()}{uri}".encode() + req.body)
        # A plain SHA-256 of secret and request, not an HMAC: HubSpot's v1/v2 definition.
        if not equal_any(given, [hashlib.sha256(source).digest() for source in sources]):
            label = version or "v1/v2"
            raise SignatureInvalid(
                f"X-HubSpot-Signature ({label}) does not match (check the app's client secret)",
                reason="bad_signature",
            )

    # --- normalization ---------------------------------------------------------------------------

    def normalize(self, req: InboundRequest, payload: Any, route: Route) -> list[Lead]:
        if isinstance(payload, list):
            return self._webhook_events(payload, route)
        if isinstance(payload, dict):
            return [workflow_lead(payload)]
        raise MalformedBody(
            "expected a JSON object (workflow webhook) or a JSON array of events (Webhooks API), "
            f"got {type(payload).__name__}"
        )

    def _webhook_events(self, events: list, route: Route) -> list[Lead]:
        wanted = set(route.options.get("subscription_types") or DEFAULT_SUBSCRIPTIONS)
        leads = []
        for index, item in enumerate(events):
            if not isinstance(item, dict):
                raise MalformedBody(f"event [{index}] is not a JSON object")
            subscription = item.get("subscriptionType")
            if not isinstance(subscription, str) or not subscription:
                raise MalformedBody(f"event [{index}] has no subscriptionType")
            kind = contact_subscription(subscription, item.get("objectTypeId"))
            if kind is None or kind not in wanted:
                continue  # deals, companies, deletions...: not leads
            object_id = id_text(item.get("objectId"))
            if object_id is None:
                raise MalformedBody(f"event [{index}] ({subscription}) has no objectId")
            fields = {k: item[k] for k in EVENT_FIELDS if _scalar(item.get(k))}
            leads.append(
                Lead(
                    fields=fields,
                    event_id=event_key(item),
                    fetch={"kind": "hubspot_contact", "id": object_id},
                )
            )
        return leads

    # --- worker side -----------------------------------------------------------------------------

    def fetch(self, event: Event, route: Route, http: requests.Session, timeout: float) -> Lead:
        contact_id = fetch_reference(event, "hubspot_contact", "HubSpot contact")
        if not route.access_token:
            raise ProviderFetchError(
                "this route has no access_token: set a HubSpot private app token with the "
                "crm.objects.contacts.read scope to fetch Webhooks API contacts",
                transient=False,
            )
        base = (route.api_base_url or DEFAULT_API_BASE_URL).rstrip("/")
        url = f"{base}/crm/v3/objects/contacts/{quote(contact_id, safe='')}"
        extra = route.options.get("properties")
        names = list(dict.fromkeys(FETCH_PROPERTIES + tuple(extra if _string_list(extra) else ())))
        resp, data = provider_get(
            http,
            url,
            provider="HubSpot CRM API",
            timeout=timeout,
            params={"properties": ",".join(names)},
            headers={"Authorization": f"Bearer {route.access_token}", "Accept": "application/json"},
        )
        if resp.status_code != 200:
            raise refused_fetch(
                "HubSpot CRM API",
                resp.status_code,
                f"contact {contact_id}",
                _api_error(resp, route),
            )
        properties = data.get("properties") if isinstance(data, dict) else None
        if not isinstance(properties, dict):
            raise ProviderFetchError(
                f"HubSpot CRM API answered 200 without contact properties for {contact_id}",
                transient=True,
                status=200,
            )
        fields = property_fields(properties)
        fields.setdefault("hs_object_id", data.get("id", contact_id))
        return with_hints(Lead(fields=fields, event_id=event.event_id), fields)


# --- signing helpers -----------------------------------------------------------------------------


def request_uris(req: InboundRequest, route: Route) -> list[str]:
    """The URL HubSpot signed, as received and with HubSpot's escapes decoded.

    ``public_url`` (route option) replaces scheme, host and path when a proxy in front of the
    bridge changes them; the query string always comes from the request.
    """
    url = req.url
    if url and "?" not in url and req.query:
        # Given the URL without its query string: rebuild it from the parsed arguments (exact
        # for the plain values a webhook URL holds, such as ?token=...).
        url += "?" + urlencode(dict(req.query))
    public_url = route.options.get("public_url")
    if isinstance(public_url, str) and public_url:
        query = urlsplit(url).query if url else ""
        url = public_url + (f"?{query}" if query and "?" not in public_url else "")
    if not url:
        return []
    decoded = URI_ESCAPES.sub(lambda m: bytes.fromhex(m.group(1)).decode(), url)
    return list(dict.fromkeys((decoded, url)))


# --- payload helpers -----------------------------------------------------------------------------


def workflow_lead(payload: dict[str, Any]) -> Lead:
    """The lead of a workflow action: the contact's properties, or the user's flat body."""
    properties = payload.get("properties")
    if isinstance(properties, dict):
        fields = property_fields(properties)
        record_id = next(
            (
                id_text(payload.get(k))
                for k in ("vid", "canonical-vid", "objectId", "id")
                if id_text(payload.get(k))
            ),
            None,
        )
        if record_id is not None:
            fields.setdefault("hs_object_id", record_id)
        submission = latest_form_submission(payload.get("form-submissions"))
        if submission:
            fields["form_submission"] = submission
    else:
        fields = dict(payload)
    return with_hints(Lead(fields=fields), fields)


def property_fields(properties: dict[str, Any]) -> dict[str, Any]:
    """``{name: {"value": v, ...}}`` (legacy contact) or ``{name: v}`` (object API) → ``{name: v}``.

    HubSpot's own ``hs_*`` properties come after the user's, so that the metadata limit cuts
    analytics counters before custom fields.
    """
    values: dict[str, Any] = {}
    for name, prop in properties.items():
        value = prop.get("value") if isinstance(prop, dict) else prop
        if _scalar(value) and not (isinstance(value, str) and not value.strip()):
            values[str(name)] = value
    own = {k: v for k, v in values.items() if not k.startswith("hs_")}
    return own | {k: v for k, v in values.items() if k.startswith("hs_")}


def latest_form_submission(submissions: Any) -> dict[str, Any] | None:
    if not isinstance(submissions, list):
        return None
    entries = [s for s in submissions if isinstance(s, dict)]
    if not entries:
        return None
    latest = max(entries, key=lambda s: s.get("timestamp") if _number(s.get("timestamp")) else 0)
    keep = ("form-id", "title", "page-url", "page-title")
    return {k: latest[k] for k in keep if _scalar(latest.get(k))} or None


def with_hints(lead: Lead, fields: dict[str, Any]) -> Lead:
    """Typed hints from HubSpot's standard contact property names."""
    lead.first_name = clean_text(fields.get("firstname"))
    lead.last_name = clean_text(fields.get("lastname"))
    lead.email = clean_text(fields.get("email"))
    lead.phone = first_text(fields, PHONE_PROPERTIES)
    lead.country = first_country(fields, COUNTRY_PROPERTIES)
    return lead


def contact_subscription(subscription: str, object_type: Any) -> str | None:
    """``contact.creation`` for both ``contact.creation`` and generic ``object.creation`` on
    contacts; None for other objects."""
    if subscription.startswith("contact."):
        return subscription
    if subscription.startswith("object.") and str(object_type) == CONTACT_OBJECT_TYPE:
        return "contact." + subscription[len("object.") :]
    return None


def event_key(item: dict[str, Any]) -> str | None:
    """HubSpot does not promise that ``eventId`` is unique on its own: qualify it with the
    portal, the subscription and the object."""
    event_id = id_text(item.get("eventId"))
    if event_id is None:
        return None
    parts = [id_text(item.get(k)) or "-" for k in ("portalId", "subscriptionId")]
    return ":".join([*parts, event_id, id_text(item.get("objectId")) or "-"])


def _api_error(resp: Any, route: Route) -> str:
    """HubSpot's ``category: message``, trimmed, with any route secret masked."""
    try:
        body = resp.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        parts = [str(body[k]) for k in ("category", "message") if body.get(k)]
        text = ": ".join(parts) or resp.reason or "error"
    else:
        text = resp.reason or "error"
    return redact(text, route.secrets(), min_chars=1)[:MAX_ERROR_CHARS]


def _scalar(value: Any) -> bool:
    return isinstance(value, (str, int, float, bool))


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _string_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) and v for v in value)


SOURCE = HubSpotSource()
