"""The sandbox's OliAI: organizations, their resources and the API's rules, behind one lock.

IO-free: ``server.py`` turns HTTP requests into calls of ``Store`` and ``ApiFailure`` into the
API's error body. Every method that reads or writes takes the one lock, so the threaded HTTP
server and the import threads see a consistent store. Records are kept as dicts of the public
fields plus private ``_``-prefixed ones; insertion order is creation order, so "newest first" is
plain reversal. Time-driven changes (a scheduled campaign starting, a running one completing)
are evaluated lazily whenever a campaign is looked at.
"""

from __future__ import annotations

import copy
import math
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from sandbox.options import Options

E164 = re.compile(r"^\+[1-9]\d{1,14}$")
LANGUAGE = re.compile(r"^[a-z]{2,3}-[A-Z]{2}$")
PHONE_MESSAGE = "phoneNumber must be a valid E.164 phone number"
IMPORT_MAX_ITEMS = 10_000
MAX_PAGE_SIZE = 100

ERROR_NAMES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    413: "Payload Too Large",
    429: "Too Many Requests",
    500: "Internal Server Error",
}

CAMPAIGN_STATUSES = ("DRAFT", "SCHEDULED", "IN_PROGRESS", "PAUSED", "COMPLETED", "CANCELLED")
# Campaigns in these statuses still need their audience (#18).
LIVE_CAMPAIGN = frozenset({"DRAFT", "SCHEDULED", "IN_PROGRESS", "PAUSED"})
# Dialing settings: (default, minimum) per #24 and the documented defaults.
CAMPAIGN_SETTINGS = {
    "callsPerMinute": (10, 1),
    "maxConcurrentCalls": (5, 1),
    "maxRetries": (3, 0),
    "retryDelayMinutes": (5, 1),
    "callTimeoutMinutes": (5, 1),
}
IMPORT_FIXED_KEYS = ("name", "phoneNumber", "language")

# Three flows per organization, as a dashboard user would have made them (flows are read-only).
SEED_FLOWS = (
    {
        "name": "Hindi Customer Survey - Q1",
        "type": "SURVEY",
        "language": "hi-IN",
        "voiceGender": "FEMALE",
        "ttsProvider": "GOOGLE",
        "llmProvider": "GEMINI_API",
        "systemInstruction": "You are Priya, a polite surveyor. Ask three short questions.",
        "initialPrompt": "Namaste! Main Priya bol rahi hoon...",
        "allowInterrupts": True,
    },
    {
        "name": "Payment Reminder",
        "type": "NUDGE",
        "language": "en-IN",
        "voiceGender": "MALE",
        "ttsProvider": "ELEVENLABS",
        "llmProvider": "OLIAI_INFERENCE",
        "systemInstruction": "You are Arjun. Remind the customer of a payment due date.",
        "initialPrompt": "Hello, this is Arjun calling with a quick reminder.",
        "allowInterrupts": False,
    },
    {
        "name": "Product Launch Announcement",
        "type": "MASS_COMMUNICATION",
        "language": "en-IN",
        "voiceGender": "NEUTRAL",
        "ttsProvider": "GEMINI",
        "llmProvider": "GEMINI_API",
        "systemInstruction": "Announce the new product and answer basic questions.",
        "initialPrompt": "Hi! We have exciting news to share with you.",
        "allowInterrupts": True,
    },
)


class ApiFailure(Exception):
    """A request the API refuses: ``status`` and ``message`` become the standard error body."""

    def __init__(self, status: int, message: str):
        self.status = status
        self.message = message
        super().__init__(f"{status} {message}")

    def body(self) -> dict:
        return error_body(self.status, self.message)


def error_body(status: int, message: str) -> dict:
    """The documented error shape ``{statusCode, message, error}``."""
    return {"statusCode": status, "message": message, "error": ERROR_NAMES.get(status, "Error")}


def iso(ts: float) -> str:
    """ISO 8601 in UTC with milliseconds and ``Z``, as the API's responses show."""
    # Whole milliseconds first, so a time parsed from "...123Z" prints back as "...123Z".
    millis = round(ts * 1000)
    moment = datetime.fromtimestamp(millis // 1000, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{millis % 1000:03d}Z"


def new_id(prefix: str) -> str:
    return prefix + uuid.uuid4().hex[:20]


def parse_page(args: Mapping[str, str]) -> tuple[int, int]:
    """``page`` and ``limit`` from a query string, with the documented defaults and bounds (#30)."""
    page = _query_int(args, "page", 1)
    limit = _query_int(args, "limit", 20)
    if page < 1:
        raise ApiFailure(400, "page must not be less than 1")
    if limit < 1:
        raise ApiFailure(400, "limit must not be less than 1")
    if limit > MAX_PAGE_SIZE:
        raise ApiFailure(400, f"limit must not be greater than {MAX_PAGE_SIZE}")
    return page, limit


def _query_int(args: Mapping[str, str], name: str, default: int) -> int:
    raw = args.get(name)
    if raw is None or raw == "":
        return default
    if not re.fullmatch(r"-?\d+", raw.strip()):
        raise ApiFailure(400, f"{name} must be an integer number")
    return int(raw)


def envelope(items: list[dict], page: int, limit: int, *, total_pages: bool = True) -> dict:
    """One page of ``items`` (already newest first) in the documented envelope."""
    start = (page - 1) * limit
    body = {
        "data": items[start : start + limit],
        "total": len(items),
        "page": page,
        "limit": limit,
    }
    if total_pages:
        body["totalPages"] = math.ceil(len(items) / limit)
    return body


def public(record: dict) -> dict:
    """A copy of the record without the private ``_`` fields, safe to hand to a caller."""
    return copy.deepcopy({k: v for k, v in record.items() if not k.startswith("_")})


@dataclass
class Org:
    """One organization (= one API key) and everything it owns."""

    id: str
    contacts: dict[str, dict] = field(default_factory=dict)
    phones: dict[str, str] = field(default_factory=dict)  # phoneNumber -> contact id
    audiences: dict[str, dict] = field(default_factory=dict)
    flows: dict[str, dict] = field(default_factory=dict)
    campaigns: dict[str, dict] = field(default_factory=dict)
    imports: dict[str, dict] = field(default_factory=dict)
    last_used_at: str | None = None


@dataclass
class ImportOutcome:
    """What the import thread needs after processing: the webhook target and its payload."""

    webhook_url: str | None
    payload: dict


class Store:
    """All organizations' data and the API's rules; every public method is atomic."""

    def __init__(self, options: Options, *, clock: Callable[[], float] = time.time):
        self.options = options
        self._clock = clock
        self._lock = threading.RLock()
        # The n-th configured key owns org_n, stable across resets so tests can map them.
        self._org_by_key = {key: f"org_{n}" for n, key in enumerate(options.keys, start=1)}
        self._orgs: dict[str, Org] = {}
        # Bumped by reset() so that an import queued before a reset never writes after it.
        self.generation = 0
        self.reset()

    # --- organizations -----------------------------------------------------------------------

    def reset(self) -> None:
        with self._lock:
            self.generation += 1
            now = self._clock()
            self._orgs = {}
            for org_id in self._org_by_key.values():
                org = Org(org_id)
                for n, flow in enumerate(SEED_FLOWS):
                    created = iso(now - 86_400 * (30 - n))
                    record = {"id": new_id("flow_"), **flow, "organizationId": org_id}
                    record.update(createdAt=created, updatedAt=created)
                    org.flows[record["id"]] = record
                self._orgs[org_id] = org

    def org_for_key(self, key: str) -> str | None:
        return self._org_by_key.get(key)

    def touch(self, org_id: str) -> None:
        """Record a successful request, like the key's ``lastUsedAt``."""
        with self._lock:
            self._orgs[org_id].last_used_at = iso(self._clock())

    def _org(self, org_id: str) -> Org:
        return self._orgs[org_id]

    # --- contacts ----------------------------------------------------------------------------

    def list_contacts(self, org_id: str, page: int, limit: int, search: str | None) -> dict:
        with self._lock:
            org = self._org(org_id)
            items = _search_contacts(reversed(org.contacts.values()), search)
            return envelope([public(c) for c in items], page, limit)

    def get_contact(self, org_id: str, contact_id: str) -> dict:
        with self._lock:
            return public(self._contact(self._org(org_id), contact_id))

    def create_contact(self, org_id: str, body: object) -> dict:
        with self._lock:
            org = self._org(org_id)
            fields_ = self._allowed(_contact_fields(_object(body), partial=False))
            if fields_["phoneNumber"] in org.phones:
                # #8: the standard shape and a plain message, deliberately without the id.
                raise ApiFailure(409, "Contact with this phone number already exists")
            return public(self._insert_contact(org, fields_))

    def update_contact(self, org_id: str, contact_id: str, body: object) -> dict:
        with self._lock:
            org = self._org(org_id)
            contact = self._contact(org, contact_id)
            changes = self._allowed(_contact_fields(_object(body), partial=True))
            phone = changes.get("phoneNumber")
            if phone is not None and org.phones.get(phone, contact_id) != contact_id:
                raise ApiFailure(409, "Contact with this phone number already exists")
            self._apply_contact(org, contact, changes)
            return public(contact)

    def delete_contact(self, org_id: str, contact_id: str) -> dict:
        with self._lock:
            org = self._org(org_id)
            contact = self._contact(org, contact_id)
            del org.contacts[contact_id]
            del org.phones[contact["phoneNumber"]]
            now = iso(self._clock())
            for audience in org.audiences.values():
                if contact_id in audience["_members"]:
                    del audience["_members"][contact_id]
                    audience["contactCount"] = len(audience["_members"])
                    audience["updatedAt"] = now
            return {"success": True}

    def bulk_upsert(self, org_id: str, body: object) -> dict:
        with self._lock:
            org = self._org(org_id)
            items = _item_list(body, self.options.bulk_max_items)
            created = updated = failed = 0
            results = []
            for item in items:
                try:
                    fields_ = self._allowed(_contact_fields(_object(item), partial=False))
                except ApiFailure:
                    # #7: an invalid item is counted and left out, the rest still go in.
                    failed += 1
                    continue
                contact, was_created = self._upsert(org, fields_)
                created += was_created
                updated += not was_created
                results.append(public(contact))
            return {"created": created, "updated": updated, "failed": failed, "contacts": results}

    def _allowed(self, fields_: dict) -> dict:
        """Refuse a number on the configured do-not-call list (``refused_phones``)."""
        if fields_.get("phoneNumber") in self.options.refused_phones:
            raise ApiFailure(400, "phoneNumber is on the organization's do-not-call list")
        return fields_

    def _contact(self, org: Org, contact_id: str) -> dict:
        contact = org.contacts.get(contact_id)
        if contact is None:
            raise ApiFailure(404, f"Contact {contact_id} not found")
        return contact

    def _insert_contact(self, org: Org, fields_: dict) -> dict:
        now = iso(self._clock())
        contact = {
            "id": new_id("ct_"),
            "name": fields_["name"],
            "phoneNumber": fields_["phoneNumber"],
            "language": fields_.get("language"),
            "metadata": fields_.get("metadata") or {},
            "organizationId": org.id,
            "createdAt": now,
            "updatedAt": now,
        }
        org.contacts[contact["id"]] = contact
        org.phones[contact["phoneNumber"]] = contact["id"]
        return contact

    def _apply_contact(self, org: Org, contact: dict, changes: dict) -> None:
        if "phoneNumber" in changes and changes["phoneNumber"] != contact["phoneNumber"]:
            del org.phones[contact["phoneNumber"]]
            org.phones[changes["phoneNumber"]] = contact["id"]
        contact.update(changes)  # metadata, when sent, replaces the old object (#13)
        contact["updatedAt"] = iso(self._clock())

    def _upsert(self, org: Org, fields_: dict) -> tuple[dict, bool]:
        existing = org.phones.get(fields_["phoneNumber"])
        if existing is None:
            return self._insert_contact(org, fields_), True
        contact = org.contacts[existing]
        self._apply_contact(org, contact, fields_)
        return contact, False

    # --- audiences ---------------------------------------------------------------------------

    def list_audiences(self, org_id: str, page: int, limit: int) -> dict:
        with self._lock:
            org = self._org(org_id)
            return envelope([public(a) for a in reversed(org.audiences.values())], page, limit)

    def get_audience(self, org_id: str, audience_id: str) -> dict:
        with self._lock:
            return public(self._audience(self._org(org_id), audience_id))

    def create_audience(self, org_id: str, body: object) -> dict:
        with self._lock:
            org = self._org(org_id)
            body = _object(body)
            now = iso(self._clock())
            audience = {
                "id": new_id("aud_"),
                "name": _name(body.get("name")),
                "description": _description(body.get("description")),
                "organizationId": org.id,
                "contactCount": 0,
                "createdAt": now,
                "updatedAt": now,
                "_members": {},  # contact id -> None, in the order they joined
            }
            org.audiences[audience["id"]] = audience
            return public(audience)

    def update_audience(self, org_id: str, audience_id: str, body: object) -> dict:
        with self._lock:
            audience = self._audience(self._org(org_id), audience_id)
            body = _object(body)
            changes = {}
            if "name" in body:
                changes["name"] = _name(body["name"])
            if "description" in body:
                changes["description"] = _description(body["description"])
            audience.update(changes)
            audience["updatedAt"] = iso(self._clock())
            return public(audience)

    def delete_audience(self, org_id: str, audience_id: str) -> dict:
        with self._lock:
            org = self._org(org_id)
            self._audience(org, audience_id)
            for campaign in org.campaigns.values():
                self._advance(campaign)
                if campaign["audienceId"] == audience_id and campaign["status"] in LIVE_CAMPAIGN:
                    raise ApiFailure(
                        409,
                        f"Audience is used by campaign {campaign['id']} "
                        f"({campaign['status']}) and cannot be deleted",
                    )
            del org.audiences[audience_id]
            return {"success": True}

    def add_members(self, org_id: str, audience_id: str, body: object) -> dict:
        with self._lock:
            org = self._org(org_id)
            audience = self._audience(org, audience_id)
            ids = self._member_ids(org, body)
            for contact_id in ids:
                audience["_members"].setdefault(contact_id, None)  # already a member: no-op
            return self._members_changed(audience)

    def remove_members(self, org_id: str, audience_id: str, body: object) -> dict:
        with self._lock:
            org = self._org(org_id)
            audience = self._audience(org, audience_id)
            for contact_id in self._member_ids(org, body):
                audience["_members"].pop(contact_id, None)  # not a member: no-op
            return self._members_changed(audience)

    def list_members(
        self, org_id: str, audience_id: str, page: int, limit: int, search: str | None
    ) -> dict:
        with self._lock:
            org = self._org(org_id)
            members = self._audience(org, audience_id)["_members"]
            contacts = (c for c in reversed(org.contacts.values()) if c["id"] in members)
            return envelope([public(c) for c in _search_contacts(contacts, search)], page, limit)

    def list_available(
        self, org_id: str, audience_id: str, page: int, limit: int, search: str | None
    ) -> dict:
        with self._lock:
            org = self._org(org_id)
            members = self._audience(org, audience_id)["_members"]
            contacts = (c for c in reversed(org.contacts.values()) if c["id"] not in members)
            return envelope([public(c) for c in _search_contacts(contacts, search)], page, limit)

    def _audience(self, org: Org, audience_id: str) -> dict:
        audience = org.audiences.get(audience_id)
        if audience is None:
            raise ApiFailure(404, f"Audience {audience_id} not found")
        return audience

    def _member_ids(self, org: Org, body: object) -> list[str]:
        ids = _object(body).get("contactIds")
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise ApiFailure(400, "contactIds must be an array of strings")
        # Checked before anything changes, so a 404 leaves the audience as it was.
        for contact_id in ids:
            self._contact(org, contact_id)
        return ids

    def _members_changed(self, audience: dict) -> dict:
        if audience["contactCount"] != len(audience["_members"]):
            audience["contactCount"] = len(audience["_members"])
            audience["updatedAt"] = iso(self._clock())
        return public(audience)

    # --- flows -------------------------------------------------------------------------------

    def list_flows(self, org_id: str, page: int, limit: int) -> dict:
        with self._lock:
            flows = [public(f) for f in reversed(self._org(org_id).flows.values())]
            # The documented flows example has no totalPages; keep it that way (#30).
            return envelope(flows, page, limit, total_pages=False)

    def get_flow(self, org_id: str, flow_id: str) -> dict:
        with self._lock:
            flow = self._org(org_id).flows.get(flow_id)
            if flow is None:
                raise ApiFailure(404, f"Flow {flow_id} not found")
            return public(flow)

    # --- campaigns ---------------------------------------------------------------------------

    def list_campaigns(
        self, org_id: str, page: int, limit: int, status: str | None, search: str | None
    ) -> dict:
        with self._lock:
            if status and status not in CAMPAIGN_STATUSES:
                allowed = ", ".join(CAMPAIGN_STATUSES)
                raise ApiFailure(400, f"status must be one of the following values: {allowed}")
            items = []
            for campaign in reversed(self._org(org_id).campaigns.values()):
                self._advance(campaign)
                if status and campaign["status"] != status:
                    continue
                if search and search.lower() not in campaign["name"].lower():
                    continue
                items.append(public(campaign))
            return envelope(items, page, limit)

    def get_campaign(self, org_id: str, campaign_id: str) -> dict:
        with self._lock:
            return public(self._campaign(self._org(org_id), campaign_id))

    def create_campaign(self, org_id: str, body: object) -> dict:
        with self._lock:
            org = self._org(org_id)
            body = _object(body)
            name = _name(body.get("name"))
            flow_id = _required_id(body, "flowId")
            audience_id = _required_id(body, "audienceId")
            settings = {}
            for key, (default, minimum) in CAMPAIGN_SETTINGS.items():
                value = body.get(key)
                if value is None:
                    value = default
                elif isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                    raise ApiFailure(400, f"{key} must be an integer not less than {minimum}")
                settings[key] = value
            timezone = body.get("timezone")
            if timezone is not None:
                _zone(timezone)
            scheduled_ts = None
            if body.get("scheduledAt") is not None:
                if timezone is None:
                    raise ApiFailure(400, "timezone is required when scheduledAt is set")
                scheduled_ts = _parse_scheduled(body["scheduledAt"], timezone)
                if scheduled_ts <= self._clock():
                    raise ApiFailure(400, "scheduledAt must be in the future")
            if flow_id not in org.flows:
                raise ApiFailure(404, f"Flow {flow_id} not found")
            self._audience(org, audience_id)
            now = iso(self._clock())
            campaign = {
                "id": new_id("camp_"),
                "name": name,
                "status": "DRAFT",
                "flowId": flow_id,
                "audienceId": audience_id,
                **settings,
                "scheduledAt": iso(scheduled_ts) if scheduled_ts is not None else None,
                "timezone": timezone,
                "organizationId": org.id,
                "createdAt": now,
                "updatedAt": now,
                "startedAt": None,
                "completedAt": None,
                "_scheduled_ts": scheduled_ts,
                "_snapshot": [],  # contact ids the campaign calls, fixed at start (#19)
                "_duration": 0.0,  # simulated seconds of dialing
                "_ran": 0.0,  # seconds of dialing already done before the current run
                "_run_since": None,  # when the current IN_PROGRESS period began
            }
            org.campaigns[campaign["id"]] = campaign
            return public(campaign)

    def campaign_action(self, org_id: str, campaign_id: str, action: str) -> dict:
        """start / pause / resume / cancel per the state machine of #21."""
        with self._lock:
            org = self._org(org_id)
            campaign = self._campaign(org, campaign_id)
            status = campaign["status"]
            allowed = {
                "start": {"DRAFT"},
                "pause": {"IN_PROGRESS"},
                "resume": {"PAUSED"},
                "cancel": LIVE_CAMPAIGN,
            }[action]
            if status not in allowed:
                raise ApiFailure(400, f"Cannot {action} a campaign with status {status}")
            now = self._clock()
            if action == "start":
                if self.options.quota_exhausted:
                    raise ApiFailure(
                        403, "Insufficient call minutes to start this campaign; top up your plan"
                    )
                audience = org.audiences.get(campaign["audienceId"])
                campaign["_snapshot"] = list(audience["_members"]) if audience else []
                campaign["_duration"] = min(
                    self.options.campaign_seconds_per_contact * len(campaign["_snapshot"]),
                    self.options.campaign_max_seconds,
                )
                scheduled = campaign["_scheduled_ts"]
                if scheduled is not None and scheduled > now:
                    campaign["status"] = "SCHEDULED"
                else:
                    self._run(campaign, now, first=True)
            elif action == "pause":
                campaign["_ran"] += now - campaign["_run_since"]
                campaign["_run_since"] = None
                campaign["status"] = "PAUSED"
            elif action == "resume":
                self._run(campaign, now)
            else:
                if campaign["_run_since"] is not None:
                    campaign["_ran"] += now - campaign["_run_since"]
                    campaign["_run_since"] = None
                campaign["status"] = "CANCELLED"
            campaign["updatedAt"] = iso(now)
            return public(campaign)

    def _campaign(self, org: Org, campaign_id: str) -> dict:
        campaign = org.campaigns.get(campaign_id)
        if campaign is None:
            raise ApiFailure(404, f"Campaign {campaign_id} not found")
        self._advance(campaign)
        return campaign

    def _run(self, campaign: dict, since: float, *, first: bool = False) -> None:
        campaign["status"] = "IN_PROGRESS"
        campaign["_run_since"] = since
        if first:
            campaign["startedAt"] = iso(since)

    def _advance(self, campaign: dict) -> None:
        """Apply the transitions that time alone causes, as of now."""
        now = self._clock()
        if campaign["status"] == "SCHEDULED" and now >= campaign["_scheduled_ts"]:
            self._run(campaign, campaign["_scheduled_ts"], first=True)
            campaign["updatedAt"] = iso(campaign["_scheduled_ts"])
        if campaign["status"] == "IN_PROGRESS":
            done_at = campaign["_run_since"] + campaign["_duration"] - campaign["_ran"]
            if now >= done_at:
                campaign["status"] = "COMPLETED"
                campaign["completedAt"] = campaign["updatedAt"] = iso(done_at)
                campaign["_ran"] = campaign["_duration"]
                campaign["_run_since"] = None

    # --- imports -----------------------------------------------------------------------------

    def create_import(self, org_id: str, body: object) -> tuple[dict, int]:
        """Accept an import; returns the 201 body and the generation the import belongs to."""
        with self._lock:
            org = self._org(org_id)
            body = _object(body)
            rows = _item_list(body, IMPORT_MAX_ITEMS)
            audience_id = body.get("audienceId")
            if audience_id is not None:
                if not isinstance(audience_id, str):
                    raise ApiFailure(400, "audienceId must be a string")
                self._audience(org, audience_id)
            webhook_url = body.get("webhookUrl")
            if webhook_url is not None and (
                not isinstance(webhook_url, str) or not re.match(r"^https?://[^\s/]+", webhook_url)
            ):
                raise ApiFailure(400, "webhookUrl must be a URL address")
            record = {
                "id": new_id("imp_"),
                "status": "PROCESSING",
                "total": len(rows),
                "created": 0,
                "updated": 0,
                "failed": 0,
                "errorCount": 0,
                "createdAt": iso(self._clock()),
                "completedAt": None,
                "_rows": copy.deepcopy(rows),
                "_audience_id": audience_id,
                "_webhook_url": webhook_url,
            }
            org.imports[record["id"]] = record
            accepted = {"importId": record["id"], "status": "PROCESSING", "total": len(rows)}
            return accepted, self.generation

    def process_import(self, org_id: str, import_id: str, generation: int) -> ImportOutcome | None:
        """Run a queued import to its terminal status; None if a reset discarded it."""
        with self._lock:
            if generation != self.generation:
                return None
            org = self._org(org_id)
            record = org.imports[import_id]
            rows = record.pop("_rows")
            audience = org.audiences.get(record["_audience_id"] or "")
            if record["_audience_id"] and audience is None:
                # The audience went away between accept and processing: nothing is imported.
                record.update(failed=len(rows), errorCount=len(rows), status="FAILED")
            else:
                for row in rows:
                    fields_ = _import_fields(row)
                    if (
                        fields_ is not None
                        and fields_["phoneNumber"] in self.options.refused_phones
                    ):
                        fields_ = None
                    if fields_ is None:
                        record["failed"] += 1
                        continue
                    contact, created = self._upsert(org, fields_)
                    record["created" if created else "updated"] += 1
                    if audience is not None:
                        audience["_members"].setdefault(contact["id"], None)
                if audience is not None:
                    self._members_changed(audience)
                record["errorCount"] = record["failed"]
                if not record["failed"]:
                    record["status"] = "COMPLETED"
                elif record["failed"] == record["total"]:
                    record["status"] = "FAILED"
                else:
                    record["status"] = "COMPLETED_WITH_ERRORS"
            record["completedAt"] = iso(self._clock())
            payload = {**public(record), "importId": record["id"]}
            return ImportOutcome(record["_webhook_url"], payload)

    def import_status(self, org_id: str, import_id: str) -> dict:
        with self._lock:
            record = self._org(org_id).imports.get(import_id)
            if record is None:
                raise ApiFailure(404, f"Import {import_id} not found")
            return public(record)

    def list_imports(self, org_id: str, page: int, limit: int) -> dict:
        with self._lock:
            records = [public(r) for r in reversed(self._org(org_id).imports.values())]
            return envelope(records, page, limit)

    # --- inspection (test control) -----------------------------------------------------------

    def dump(self) -> dict:
        """Every organization's data, for assertions; contacts etc. oldest first."""
        with self._lock:
            orgs = {}
            for org in self._orgs.values():
                for campaign in org.campaigns.values():
                    self._advance(campaign)
                orgs[org.id] = {
                    "counts": {
                        "contacts": len(org.contacts),
                        "audiences": len(org.audiences),
                        "flows": len(org.flows),
                        "campaigns": len(org.campaigns),
                        "imports": len(org.imports),
                    },
                    "lastUsedAt": org.last_used_at,
                    "contacts": [public(c) for c in org.contacts.values()],
                    "audiences": [
                        {**public(a), "contactIds": list(a["_members"])}
                        for a in org.audiences.values()
                    ],
                    "flows": [public(f) for f in org.flows.values()],
                    "campaigns": [
                        {**public(c), "snapshotContactIds": list(c["_snapshot"])}
                        for c in org.campaigns.values()
                    ],
                    "imports": [public(r) for r in org.imports.values()],
                }
            return {"orgs": orgs}


# --- validation (pure) -----------------------------------------------------------------------


def _object(body: object) -> dict:
    if not isinstance(body, dict):
        raise ApiFailure(400, "Request body must be a JSON object")
    return body


def _name(value: object, field_name: str = "name") -> str:
    if value is None or (isinstance(value, str) and not value.strip()):
        raise ApiFailure(400, f"{field_name} should not be empty")
    if not isinstance(value, str):
        raise ApiFailure(400, f"{field_name} must be a string")
    return value


def _description(value: object) -> str | None:
    if value is not None and not isinstance(value, str):
        raise ApiFailure(400, "description must be a string")
    return value


def _required_id(body: dict, key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value.strip():
        raise ApiFailure(400, f"{key} should not be empty")
    return value


def _phone(value: object) -> str:
    if not isinstance(value, str) or not E164.fullmatch(value):
        raise ApiFailure(400, PHONE_MESSAGE)
    return value


def _language(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not LANGUAGE.fullmatch(value):
        raise ApiFailure(400, "language must be a language code such as hi-IN")
    return value


def _contact_fields(body: dict, *, partial: bool) -> dict:
    """The contact fields present in ``body``, validated; all required ones unless ``partial``."""
    out = {}
    if not partial or "name" in body:
        out["name"] = _name(body.get("name"))
    if not partial or "phoneNumber" in body:
        out["phoneNumber"] = _phone(body.get("phoneNumber"))
    if "language" in body:
        out["language"] = _language(body["language"])
    if "metadata" in body:
        metadata = body["metadata"]
        if metadata is not None and not isinstance(metadata, dict):
            raise ApiFailure(400, "metadata must be an object")
        out["metadata"] = copy.deepcopy(metadata) if metadata is not None else {}
    return out


def _import_fields(row: object) -> dict | None:
    """A contact from an import row (extra top-level keys become metadata), None if invalid."""
    if not isinstance(row, dict):
        return None
    try:
        fields_ = _contact_fields({k: row[k] for k in IMPORT_FIXED_KEYS if k in row}, partial=False)
    except ApiFailure:
        return None
    extra = {k: v for k, v in row.items() if k not in IMPORT_FIXED_KEYS}
    if extra:
        fields_["metadata"] = copy.deepcopy(extra)
    return fields_


def _item_list(body: object, cap: int) -> list:
    items = _object(body).get("contacts")
    if not isinstance(items, list):
        raise ApiFailure(400, "contacts must be an array")
    if not items:
        raise ApiFailure(400, "contacts should not be empty")
    if len(items) > cap:
        raise ApiFailure(400, f"contacts must contain no more than {cap} elements")
    return items


def _search_contacts(contacts: Iterable[dict], search: str | None) -> list[dict]:
    """Case-insensitive substring on name or phone number (#9): never an exact match."""
    if not search:
        return list(contacts)
    needle = search.lower()
    return [c for c in contacts if needle in c["name"].lower() or needle in c["phoneNumber"]]


def _zone(name: object) -> ZoneInfo:
    try:
        if not isinstance(name, str):
            raise ValueError(name)
        return ZoneInfo(name)
    except Exception:
        raise ApiFailure(400, "timezone must be a valid IANA time zone") from None


def _parse_scheduled(value: object, timezone: str) -> float:
    """Epoch seconds; an offset in the value wins, a naive time is read in ``timezone``."""
    try:
        if not isinstance(value, str):
            raise ValueError(value)
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ApiFailure(400, "scheduledAt must be a valid ISO 8601 date string") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=_zone(timezone))
    return moment.timestamp()
