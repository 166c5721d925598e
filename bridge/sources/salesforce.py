"""Salesforce: Outbound Messages (SOAP, up to 100 notifications) and Flow HTTP callouts (JSON).

An outbound message carries the fields ticked in its definition for each record, one
``Notification`` each, and must be answered with a SOAP ``<Ack>true</Ack>``: anything else is a
failure Salesforce retries for 24 hours. Salesforce signs nothing; a route authenticates it by a
token in the endpoint URL (``?token=``) and, with the ``organization_id`` option, by the
``OrganizationId`` every message names. A Flow callout is a JSON body the admin designed, sent
with a Named Credential header (the route's token or Basic credentials); it gets a JSON answer.
"""

from __future__ import annotations

from typing import Any
from xml.etree.ElementTree import Element
from xml.sax.saxutils import escape

from bridge.event import InboundRequest, Lead
from bridge.exceptions import IngestError, MalformedBody, SignatureInvalid, StorageUnavailable
from bridge.parsing import local_name, media_kind, parse_xml, xml_to_data
from bridge.settings import Route
from bridge.signatures import check_shared_credentials, equal
from bridge.sources.base import MAX_EVENT_ID_CHARS, Outcome, Reply, Source, default_reply
from bridge.values import clean_text, first_country, first_text

XSI = "{http://www.w3.org/2001/XMLSchema-instance}"
SOAP_CONTENT_TYPE = "text/xml; charset=utf-8"
ACK = (
    '<?xml version="1.0" encoding="UTF-8"?>'
    '<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/">'
    "<soapenv:Body>"
    '<notificationsResponse xmlns="http://soap.sforce.com/2005/09/outbound">'
    "<Ack>true</Ack>"
    "</notificationsResponse>"
    "</soapenv:Body>"
    "</soapenv:Envelope>"
)
FAULT = (
    '<?xml version="1.0" encoding="UTF-8"?>'
    '<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/">'
    "<soapenv:Body><soapenv:Fault>"
    "<faultcode>soapenv:{code}</faultcode><faultstring>{message}</faultstring>"
    "</soapenv:Fault></soapenv:Body>"
    "</soapenv:Envelope>"
)
#: Salesforce ids: 15 case-sensitive characters, or 18 with a case-checksum suffix.
ORG_ID_CHARS = 15
#: Field API names by preference for each hint (Lead and Contact objects).
PHONE_FIELDS = ("MobilePhone", "Phone", "OtherPhone", "HomePhone")
COUNTRY_FIELDS = ("CountryCode", "MailingCountryCode", "Country", "MailingCountry")


class SalesforceSource(Source):
    name = "salesforce"
    # Anything but an Ack makes Salesforce re-send the whole message (up to 100 records) for a
    # day: a record without a usable phone is recorded as skipped and acknowledged.
    unmappable = "accept"
    kept_headers = ("idempotency-key",)

    def check_route(self, route: Route) -> list[str]:
        problems = []
        org = route.options.get("organization_id")
        if org is not None and not (
            isinstance(org, str) and len(org) in (15, 18) and org.isalnum()
        ):
            problems.append("organization_id: must be the 15- or 18-character org id (00D...)")
        flag = route.options.get("respect_do_not_call")
        if flag is not None and not isinstance(flag, bool):
            problems.append("respect_do_not_call: must be true or false")
        return problems

    def verify(self, req: InboundRequest, route: Route) -> None:
        soap = is_soap(req)
        check_shared_credentials(req, route)
        expected = route.options.get("organization_id")
        if soap and isinstance(expected, str) and expected:
            check_organization(req, expected)

    def normalize(self, req: InboundRequest, payload: Any, route: Route) -> list[Lead]:
        respect_dnc = route.options.get("respect_do_not_call", True) is not False
        if isinstance(payload, Element):
            leads = outbound_message_leads(payload)
        else:
            leads = callout_leads(req, payload)
        if respect_dnc:
            leads = [lead for lead in leads if not do_not_call(lead.fields)]
        return leads

    def reply(self, outcome: Outcome) -> Reply:
        # An outbound message needs a SOAP answer; a Flow callout gets the usual JSON one.
        if outcome.request is None or not is_soap(outcome.request):
            return default_reply(outcome)
        error = outcome.error
        if error is None:
            # Duplicates, skipped and ignored records too: Salesforce must stop re-sending.
            return Reply(200, ACK, content_type=SOAP_CONTENT_TYPE)
        return soap_fault(error)


# --- outbound messages ---------------------------------------------------------------------------


def is_soap(req: InboundRequest) -> bool:
    return media_kind(req) == "xml"


def check_organization(req: InboundRequest, expected: str) -> None:
    try:
        root = parse_xml(req.body)
    except IngestError:
        return  # normalize reports the unreadable body
    notifications = find_notifications(root)
    given = None
    if notifications is not None:
        given = next(
            (
                (child.text or "").strip()
                for child in notifications
                if local_name(child.tag) == "OrganizationId"
            ),
            None,
        )
    if not given:
        raise SignatureInvalid("outbound message names no OrganizationId", reason="missing_token")
    # The 18-character form only adds a checksum of the first 15 characters' case.
    if not equal(given[:ORG_ID_CHARS], expected[:ORG_ID_CHARS]):
        raise SignatureInvalid(
            f"OrganizationId {given[:18]!r} is not this route's organization_id",
            reason="bad_token",
        )


def find_notifications(root: Element) -> Element | None:
    for element in root.iter():
        if local_name(element.tag) == "notifications":
            return element
    return None


def outbound_message_leads(root: Element) -> list[Lead]:
    notifications = find_notifications(root)
    if notifications is None:
        raise MalformedBody("no notifications element: not a Salesforce outbound message")
    leads = []
    for index, notification in enumerate(
        n for n in notifications if local_name(n.tag) == "Notification"
    ):
        notification_id = None
        sobject = None
        for child in notification:
            name = local_name(child.tag)
            if name == "Id":
                notification_id = (child.text or "").strip() or None
            elif name == "sObject":
                sobject = child
        if sobject is None:
            raise MalformedBody(f"Notification [{index}] has no sObject")
        fields = sobject_fields(sobject)
        leads.append(with_hints(Lead(fields=fields, event_id=notification_id), fields))
    return leads


def sobject_fields(sobject: Element) -> dict[str, Any]:
    """The record's ticked fields by API name; nil and empty fields are left out."""
    fields: dict[str, Any] = {}
    for child in sobject:
        if child.get(f"{XSI}nil") in ("true", "1"):
            continue
        value = xml_to_data(child)
        if value in ("", {}, []):
            continue
        fields[local_name(child.tag)] = value
    return fields


# --- flow callouts -------------------------------------------------------------------------------


def callout_leads(req: InboundRequest, payload: Any) -> list[Lead]:
    if isinstance(payload, dict):
        key = (req.header("idempotency-key") or "").strip()[:MAX_EVENT_ID_CHARS] or None
        return [with_hints(Lead(fields=payload, event_id=key), payload)]
    if isinstance(payload, list) and payload and all(isinstance(p, dict) for p in payload):
        return [with_hints(Lead(fields=record), record) for record in payload]
    raise MalformedBody(
        "expected an outbound message (SOAP XML), or a JSON object (or a list of objects) from "
        f"a Flow callout, got {type(payload).__name__}"
    )


# --- shared --------------------------------------------------------------------------------------


def with_hints(lead: Lead, fields: dict[str, Any]) -> Lead:
    lead.first_name = clean_text(fields.get("FirstName"))
    lead.last_name = clean_text(fields.get("LastName"))
    lead.name = clean_text(fields.get("Name"))
    lead.email = clean_text(fields.get("Email"))
    lead.phone = first_text(fields, PHONE_FIELDS)
    lead.country = first_country(fields, COUNTRY_FIELDS)
    return lead


def do_not_call(fields: dict[str, Any]) -> bool:
    value = fields.get("DoNotCall")
    return value is True or (isinstance(value, str) and value.strip().lower() in ("true", "1"))


def soap_fault(error: IngestError) -> Reply:
    code = "Server" if error.status >= 500 else "Client"
    headers = {}
    if isinstance(error, StorageUnavailable):
        headers["Retry-After"] = str(error.retry_after)
    body = FAULT.format(code=code, message=escape(f"{error.error}: {error.message}"))
    return Reply(error.status, body, content_type=SOAP_CONTENT_TYPE, headers=headers)


SOURCE = SalesforceSource()
