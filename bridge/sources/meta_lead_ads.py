"""Meta (Facebook / Instagram) Lead Ads: the ``leadgen`` webhook names leads by id only, so each
one is fetched from the Graph API by the delivery job before it is mapped.

Meta checks the callback URL with a GET ``hub.challenge`` handshake against the route's
``verify_token``, signs every POST with the app secret (``X-Hub-Signature-256``), and may batch
several leads (``entry[].changes[]``) in one POST.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import requests

from bridge.event import InboundRequest, Lead
from bridge.exceptions import MalformedBody, ProviderFetchError
from bridge.redaction import redact
from bridge.settings import Route
from bridge.signatures import Scheme, equal_any
from bridge.sources.base import MAX_ERROR_CHARS, Reply, Source
from bridge.sources.fetching import provider_get
from bridge.values import clean_text, country_code, id_text

if TYPE_CHECKING:
    from bridge.event import Event

#: The Graph API the leads are read from when the route sets no ``api_base_url``. Meta keeps a
#: version for about two years; pinning one keeps the response shape from changing under us.
GRAPH_API_BASE_URL = "https://graph.facebook.com/v23.0"

#: Fields asked for per lead (route option ``lead_fields`` overrides): the answers plus what
#: tells campaigns apart. All are readable with ``leads_retrieval``.
DEFAULT_LEAD_FIELDS = "created_time,field_data,ad_id,form_id,campaign_id,platform,is_organic"

#: ``Lead.fetch["kind"]`` for a lead this module fetches.
FETCH_KIND = "meta_lead"

#: ``X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the raw body>``, and the legacy
#: ``X-Hub-Signature: sha1=<hex>`` beside or instead of it: either valid one is enough.
HINT = "that the route's secret is the app secret"
SCHEMES = (
    Scheme(header="x-hub-signature-256", prefix="sha256=", hint=HINT),
    Scheme(header="x-hub-signature", prefix="sha1=", digest="sha1", hint=HINT),
)

# Graph object ids are decimal; anything else must never reach the request path.
LEAD_ID = re.compile(r"^[0-9]{1,32}$")
# Webhook value keys kept as fields (the ids the user sees in Ads Manager).
WEBHOOK_ID_KEYS = ("leadgen_id", "page_id", "form_id", "ad_id", "adgroup_id", "created_time")
# Lead node keys (besides field_data) kept as fields when the Graph API returns them.
LEAD_NODE_KEYS = ("created_time", "ad_id", "form_id", "campaign_id", "platform", "is_organic")
# Graph error codes that mean "later": unknown/service errors, throttling (documented in
# "Handling Errors"); 80000-80099 are business-use-case rate limits.
TRANSIENT_CODES = {1, 2, 4, 17, 32, 341, 613}


class MetaLeadAdsSource(Source):
    name = "meta_lead_ads"
    signs = True
    # Nothing in the webhook can be unmappable (ids only); a lead without a phone is found by
    # the job after the fetch. A 4xx to Meta would only bring the same ids back for 36 h.
    unmappable = "accept"
    # Meta's docs ask for "200 OK"; a 202 is not promised to count as delivered.
    answers_200 = True
    schemes = SCHEMES

    # --- configuration ---------------------------------------------------------------------

    def check_route(self, route: Route) -> list[str]:
        problems = []
        if not route.verify_token:
            problems.append(
                "verify_token: required for meta_lead_ads (the Verify Token you type in the "
                "app's Webhooks settings)"
            )
        if not route.access_token:
            problems.append(
                "access_token: required for meta_lead_ads (a Page access token with "
                "leads_retrieval, to read each lead from the Graph API)"
            )
        fields = route.options.get("lead_fields")
        if fields is not None and (not isinstance(fields, str) or not fields.strip()):
            problems.append("lead_fields: must be a comma-separated string of lead fields")
        return problems

    # --- web side ----------------------------------------------------------------------------

    def handshake(self, req: InboundRequest, route: Route) -> Reply | None:
        if req.method.upper() != "GET":
            return None
        mode = req.query.get("hub.mode")
        challenge = req.query.get("hub.challenge")
        given = req.query.get("hub.verify_token")
        if mode != "subscribe" or not challenge:
            return Reply(
                400,
                {
                    "error": "bad_request",
                    "message": "expected hub.mode=subscribe with hub.challenge and "
                    "hub.verify_token (Meta's subscription check)",
                },
            )
        if not given or not equal_any(given, route.values_of("verify_token")):
            return Reply(
                403,
                {
                    "error": "forbidden",
                    "message": "hub.verify_token does not match this route's verify_token",
                },
            )
        # Meta wants the challenge back as the bare body; text/plain + nosniff keeps a browser
        # from treating the echoed value as markup.
        return Reply(
            200, challenge, content_type="text/plain", headers={"X-Content-Type-Options": "nosniff"}
        )

    def normalize(self, req: InboundRequest, payload: Any, route: Route) -> list[Lead]:
        if not isinstance(payload, dict):
            raise MalformedBody("expected a JSON object with 'object' and 'entry'")
        obj = payload.get("object")
        if not isinstance(obj, str):
            raise MalformedBody("'object' is missing: not a Meta webhook notification")
        if obj != "page":
            # The same app callback may receive other objects' notifications: not leads.
            return []
        entries = payload.get("entry")
        if not isinstance(entries, list):
            raise MalformedBody("'entry' must be an array")
        leads = []
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict):
                raise MalformedBody(f"entry[{i}] must be an object")
            changes = entry.get("changes", [])
            if not isinstance(changes, list):
                raise MalformedBody(f"entry[{i}].changes must be an array")
            for j, change in enumerate(changes):
                where = f"entry[{i}].changes[{j}]"
                if not isinstance(change, dict):
                    raise MalformedBody(f"{where} must be an object")
                if change.get("field") != "leadgen":
                    continue  # feed, mentions, ...: the Page may be subscribed to more
                leads.append(self._webhook_lead(change.get("value"), where))
        return leads

    def _webhook_lead(self, value: Any, where: str) -> Lead:
        if not isinstance(value, dict):
            raise MalformedBody(f"{where}.value must be an object")
        lead_id = id_text(value.get("leadgen_id"), max_chars=None)
        if lead_id is None or not LEAD_ID.match(lead_id):
            raise MalformedBody(f"{where}.value.leadgen_id is missing or not a numeric id")
        fields = {}
        for key in WEBHOOK_ID_KEYS:
            text = id_text(value.get(key), max_chars=None)
            if text is not None:
                fields[key] = text
        return Lead(fields=fields, event_id=lead_id, fetch={"kind": FETCH_KIND, "id": lead_id})

    # --- worker side -------------------------------------------------------------------------

    def fetch(self, event: Event, route: Route, http: requests.Session, timeout: float) -> Lead:
        spec = event.fetch if isinstance(event.fetch, dict) else {}
        lead_id = spec.get("id")
        if (
            spec.get("kind") != FETCH_KIND
            or not isinstance(lead_id, str)
            or not LEAD_ID.match(lead_id)
        ):
            raise ProviderFetchError("event carries no Meta lead id to fetch", transient=False)
        if not route.access_token:
            raise ProviderFetchError(
                "route has no access_token: cannot read the lead from the Graph API",
                transient=False,
            )
        base = (route.api_base_url or GRAPH_API_BASE_URL).rstrip("/")
        fields = route.options.get("lead_fields")
        params = {
            "access_token": route.access_token,
            "fields": fields if isinstance(fields, str) and fields.strip() else DEFAULT_LEAD_FIELDS,
        }
        secrets = route.values_of("secret")
        if secrets:
            # Required when the app has "Require App Secret" on (harmless otherwise). Made with
            # the newest secret, the last listed: the one the app holds after a rotation.
            params["appsecret_proof"] = hmac.new(
                secrets[-1].encode(), route.access_token.encode(), hashlib.sha256
            ).hexdigest()
        resp, data = provider_get(
            http, f"{base}/{quote(lead_id)}", provider="Graph API", timeout=timeout, params=params
        )
        if resp.status_code >= 400 or (isinstance(data, dict) and "error" in data):
            raise graph_error(resp.status_code, data, route)
        if not isinstance(data, dict) or not isinstance(data.get("field_data"), list):
            raise ProviderFetchError(
                f"Graph API answered {resp.status_code} without the lead's field_data",
                transient=resp.status_code >= 500,
                status=resp.status_code,
            )
        return lead_from_node(data, event, lead_id)


def graph_error(status: int, data: Any, route: Route) -> ProviderFetchError:
    """A ``ProviderFetchError`` naming Meta's error (type, code, message), never the token."""
    error = data.get("error") if isinstance(data, dict) else None
    error = error if isinstance(error, dict) else {}
    code = error.get("code")
    subcode = error.get("error_subcode")
    kind = error.get("type")
    message = error.get("message")
    parts = [f"Graph API {status}"]
    if isinstance(kind, str):
        parts.append(kind)
    if isinstance(code, int):
        parts.append(f"code {code}" + (f"/{subcode}" if isinstance(subcode, int) else ""))
    text = ": ".join([" ".join(parts)] + ([message] if isinstance(message, str) else []))
    transient = (
        status >= 500
        or status == 429
        or error.get("is_transient") is True
        or (isinstance(code, int) and (code in TRANSIENT_CODES or 80000 <= code < 80100))
    )
    text = redact(text, route.secrets(), min_chars=1)[:MAX_ERROR_CHARS]
    return ProviderFetchError(text, transient=transient, status=status)


def lead_from_node(node: dict[str, Any], event: Event, lead_id: str) -> Lead:
    """The Graph API lead node → a ``Lead`` keyed by the form's field names."""
    fields: dict[str, Any] = dict(event.fields) if isinstance(event.fields, dict) else {}
    fields["leadgen_id"] = lead_id
    for key in LEAD_NODE_KEYS:
        value = node.get(key)
        if isinstance(value, (str, int, float)):  # bool is an int: is_organic passes
            fields[key] = value
    answers: dict[str, Any] = {}
    for item in node["field_data"]:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            continue
        values = item.get("values")
        if not isinstance(values, list):
            values = [values] if values is not None else []
        values = [str(v) for v in values if isinstance(v, (str, int, float))]
        answers[item["name"]] = values[0] if len(values) == 1 else ("" if not values else values)
    fields.update(answers)

    def one(key: str) -> str | None:
        return clean_text(answers.get(key), (str,))

    return Lead(
        fields=fields,
        event_id=event.event_id or lead_id,
        name=one("full_name"),
        first_name=one("first_name"),
        last_name=one("last_name"),
        phone=one("phone_number"),
        email=one("email"),
        country=country_code(answers.get("country")),
    )


SOURCE = MetaLeadAdsSource()
