"""Pipedrive: webhooks v2 (``meta`` + ``data``) and v1 (``meta`` + ``current``) for persons,
leads and deals.

A person's record carries its own phones and emails. A lead or a deal only points at its person
(``person_id``): the delivery job fetches that person from the API v2 with the route's
``access_token`` (a Pipedrive API token). Pipedrive signs nothing; protect the route with the
HTTP Basic credentials set on the webhook (``http_auth_user`` / ``http_auth_password``).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from bridge.event import InboundRequest, Lead
from bridge.exceptions import MalformedBody, ProviderFetchError
from bridge.redaction import redact
from bridge.sources.base import MAX_ERROR_CHARS, Source
from bridge.sources.fetching import fetch_reference, provider_get, refused_fetch
from bridge.values import clean_text, id_text

if TYPE_CHECKING:
    import requests

    from bridge.event import Event
    from bridge.settings import Route

DEFAULT_API_BASE_URL = "https://api.pipedrive.com"
#: v1 action names → the v2 names the route's ``actions`` option uses.
V1_ACTIONS = {"added": "create", "updated": "change", "merged": "change", "deleted": "delete"}
ACTIONS = ("create", "change")
#: Events that are not about these objects (organizations, activities, notes...) are ignored.
ENTITIES = ("person", "lead", "deal")
#: v1 puts custom fields at the top of ``current``, keyed by a 40-hex-character field key.
CUSTOM_FIELD_KEY = re.compile(r"^[0-9a-f]{40}$")
#: Scalar fields of a person kept as they are; phones, emails, organization and owner are
#: flattened separately.
PERSON_FIELDS = ("id", "name", "first_name", "last_name", "label", "label_ids", "add_time")


class PipedriveSource(Source):
    name = "pipedrive"
    # A failed first attempt counts towards Pipedrive's ban (10 → 30 minutes of lost events) and
    # three days without success delete the webhook: a person without a usable phone is
    # recorded as skipped and acknowledged.
    unmappable = "accept"

    def check_route(self, route: Route) -> list[str]:
        actions = route.options.get("actions")
        if actions is not None and not (
            isinstance(actions, list) and actions and all(a in ACTIONS for a in actions)
        ):
            return [f"actions: must be a list of {' / '.join(ACTIONS)}"]
        return []

    def normalize(self, req: InboundRequest, payload: Any, route: Route) -> list[Lead]:
        if not isinstance(payload, dict):
            raise MalformedBody(
                f"expected a Pipedrive webhook JSON object, got {type(payload).__name__}"
            )
        meta = payload.get("meta")
        if not isinstance(meta, dict):
            raise MalformedBody("no meta object: not a Pipedrive webhook")
        if "data" in payload or str(meta.get("version", "")).startswith("2"):
            action, entity, record_key = meta.get("action"), meta.get("entity"), "data"
            event_id = id_text(meta.get("id"))
        else:
            action, entity, record_key = v1_event(payload, meta)
            event_id = v1_event_id(meta)
        if not isinstance(action, str) or not isinstance(entity, str):
            raise MalformedBody("meta has no action / entity: not a Pipedrive webhook")
        wanted = route.options.get("actions") or ("create",)
        if action not in wanted or entity not in ENTITIES:
            return []
        record = payload.get(record_key)
        if not isinstance(record, dict):
            raise MalformedBody(f"{action} {entity} event without a {record_key} object")
        lead = person_lead(record) if entity == "person" else linked_lead(entity, record)
        lead.event_id = event_id
        return [lead]

    def fetch(self, event: Event, route: Route, http: requests.Session, timeout: float) -> Lead:
        """The person a lead or a deal points at, with the lead's / deal's own fields kept."""
        person_id = fetch_reference(event, "pipedrive_person", "Pipedrive person")
        if not route.access_token:
            raise ProviderFetchError(
                "this route has no access_token: set a Pipedrive API token to fetch the person "
                "of a lead or a deal",
                transient=False,
            )
        base = (route.api_base_url or DEFAULT_API_BASE_URL).rstrip("/")
        url = f"{base}/api/v2/persons/{quote(person_id, safe='')}"
        resp, body = provider_get(
            http,
            url,
            provider="Pipedrive API",
            timeout=timeout,
            headers={"x-api-token": route.access_token, "Accept": "application/json"},
        )
        if resp.status_code != 200:
            raise refused_fetch(
                "Pipedrive API",
                resp.status_code,
                f"person {person_id}",
                _api_error(resp, body, route),
            )
        record = body.get("data") if isinstance(body, dict) else None
        if not isinstance(record, dict):
            raise ProviderFetchError(
                f"Pipedrive API answered 200 without a person for {person_id}",
                transient=True,
                status=200,
            )
        lead = person_lead(record)
        for entity in ("lead", "deal"):
            if isinstance(event.fields.get(entity), dict):
                lead.fields[entity] = event.fields[entity]
        lead.event_id = event.event_id
        return lead


# --- payload helpers -----------------------------------------------------------------------------


def v1_event(payload: dict[str, Any], meta: dict[str, Any]) -> tuple[Any, Any, str]:
    """(action, entity, record key) of a v1 webhook, in v2's words."""
    action, entity = meta.get("action"), meta.get("object")
    event = payload.get("event")
    if (not action or not entity) and isinstance(event, str) and "." in event:
        action, entity = event.split(".", 1)
    return V1_ACTIONS.get(action, action) if isinstance(action, str) else action, entity, "current"


def v1_event_id(meta: dict[str, Any]) -> str | None:
    """v1 has no event id; the webhook, the object and the change's microsecond stamp make
    one (``retry`` changes the body, so the body hash would not catch redeliveries)."""
    record_id = id_text(meta.get("id"))
    stamp = id_text(meta.get("timestamp_micro")) or id_text(meta.get("timestamp"))
    if record_id is None or stamp is None:
        return None
    parts = [id_text(meta.get("webhook_id")) or "-", str(meta.get("object")), record_id, stamp]
    return "v1:" + ":".join(parts)


def person_lead(record: dict[str, Any]) -> Lead:
    """A person (webhook v1/v2 or API v2) → fields as Pipedrive shows them, plus hints."""
    fields: dict[str, Any] = {k: record[k] for k in PERSON_FIELDS if _present(record.get(k))}
    phones = contact_values(record.get("phones", record.get("phone")))
    emails = contact_values(record.get("emails", record.get("email")))
    if phones:
        fields["phone"] = phones[0]
        if len(phones) > 1:
            fields["other_phones"] = phones[1:]
    if emails:
        fields["email"] = emails[0]
    organization = _named(record.get("org_name")) or _named(record.get("org_id"))
    if organization is not None:
        fields["organization"] = organization
    owner = _named(record.get("owner_name")) or _named(record.get("owner_id"))
    if owner is not None:
        fields["owner"] = owner
    custom = custom_fields(record)
    if custom:
        fields["custom_fields"] = custom
    return Lead(
        fields=fields,
        name=clean_text(record.get("name")),
        first_name=clean_text(record.get("first_name")),
        last_name=clean_text(record.get("last_name")),
        phone=phones[0] if phones else None,
        email=emails[0] if emails else None,
    )


def linked_lead(entity: str, record: dict[str, Any]) -> Lead:
    """A lead or a deal: its own scalar fields now, its person fetched by the delivery job."""
    own = {k: v for k, v in record.items() if _present(v) and not isinstance(v, (dict, list))}
    custom = custom_fields(record)
    if custom:
        own["custom_fields"] = custom
    person = record.get("person_id")
    person_id = id_text(person.get("value") if isinstance(person, dict) else person)
    fetch = {"kind": "pipedrive_person", "id": person_id} if person_id else None
    return Lead(fields={entity: own}, fetch=fetch)


def contact_values(entries: Any) -> list[str]:
    """Phone or email values, the primary one first, blanks dropped."""
    if isinstance(entries, (str, int)):
        entries = [{"value": entries}]
    if not isinstance(entries, list):
        return []
    values: list[tuple[bool, str]] = []
    for entry in entries:
        value = entry.get("value") if isinstance(entry, dict) else entry
        text = clean_text(value)
        if text:
            primary = isinstance(entry, dict) and entry.get("primary") is True
            values.append((not primary, text))
    values.sort(key=lambda item: item[0])  # stable: primary first, then in Pipedrive's order
    return list(dict.fromkeys(text for _, text in values))


def custom_fields(record: dict[str, Any]) -> dict[str, Any]:
    """v2 ``custom_fields`` (values may be ``{"value": ...}`` objects) or v1's top-level
    40-hex keys, by field key."""
    found: dict[str, Any] = {}
    nested = record.get("custom_fields")
    items = list(nested.items()) if isinstance(nested, dict) else []
    items += [(k, v) for k, v in record.items() if CUSTOM_FIELD_KEY.match(str(k))]
    for key, value in items:
        if isinstance(value, dict) and "value" in value:
            value = value["value"]
        if _present(value):
            found[str(key)] = value
    return found


def _api_error(resp: Any, body: Any, route: Route) -> str:
    if isinstance(body, dict) and body.get("error"):
        text = str(body["error"])
        if body.get("error_info"):
            text += f" ({body['error_info']})"
    else:
        text = resp.reason or "error"
    return redact(text, route.secrets(), min_chars=1)[:MAX_ERROR_CHARS]


def _named(value: Any) -> Any:
    """v1 sends related records as ``{"name": ..., "value": id}``; v2 sends the id alone."""
    if isinstance(value, dict):
        value = value.get("name") or value.get("value")
    return value if _present(value) and isinstance(value, (str, int)) else None


def _present(value: Any) -> bool:
    # Unlike ``base.present``, a non-empty list or object is kept (label_ids, custom values).
    if value is None or value in ([], {}):
        return False
    return not (isinstance(value, str) and not value.strip())


SOURCE = PipedriveSource()
