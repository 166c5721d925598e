"""Salesforce adapter: outbound messages (SOAP, batches, OrganizationId, Ack) and Flow callouts."""

from __future__ import annotations

import json
from xml.sax.saxutils import escape

import pytest
from defusedxml import ElementTree as SafeET
from hypothesis import strategies as st

from bridge.event import InboundRequest, Lead
from bridge.exceptions import MalformedBody, SignatureInvalid, StorageUnavailable, Unmappable
from bridge.sources.base import Accepted, Outcome
from bridge.sources.salesforce import SOURCE
from tests import strategies as S
from tests.sources import harness

TOKEN = "sf-route-token-5b8e"
ORG_18 = "00D5g000004SxYzEAK"
ORG_15 = ORG_18[:15]
OUTBOUND_NS = "http://soap.sforce.com/2005/09/outbound"
ROUTE_DATA = {"name": "sf", "source": "salesforce", "audience_id": "aud_1", "token": TOKEN}


def make_route(**keys):
    return harness.make_route(ROUTE_DATA, **keys)


def notification(notification_id: str, sobject_type: str = "Lead", **fields) -> str:
    inner = "".join(
        f'<sf:{k} xsi:nil="true"/>' if v is None else f"<sf:{k}>{escape(str(v))}</sf:{k}>"
        for k, v in fields.items()
    )
    return (
        f"<Notification><Id>{notification_id}</Id>"
        f'<sObject xsi:type="sf:{sobject_type}" xmlns:sf="urn:sobject.enterprise.soap.sforce.com">'
        f"{inner}</sObject></Notification>"
    )


def outbound_message(*notifications: str, org: str = ORG_18) -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" '
        'xmlns:xsd="http://www.w3.org/2001/XMLSchema" '
        'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">'
        "<soapenv:Body>"
        f'<notifications xmlns="{OUTBOUND_NS}">'
        f"<OrganizationId>{org}</OrganizationId>"
        "<ActionId>04k5g000000XyZaAAK</ActionId>"
        '<SessionId xsi:nil="true"/>'
        f"<EnterpriseUrl>https://acme.my.salesforce.com/services/Soap/c/59.0/{org}</EnterpriseUrl>"
        f"<PartnerUrl>https://acme.my.salesforce.com/services/Soap/u/59.0/{org}</PartnerUrl>"
        + "".join(notifications)
        + "</notifications></soapenv:Body></soapenv:Envelope>"
    ).encode()


def delivered(body: bytes, *, token: str | None = TOKEN, json_body: bool = False, headers=None):
    """A request as Salesforce posts it to an endpoint URL ending in ?token=..."""
    ctype = "application/json" if json_body else "text/xml; charset=utf-8"
    h = {"content-type": ctype}
    if not json_body:
        h["soapaction"] = '""'
    h.update(headers or {})
    query = {"token": token} if token is not None else {}
    return harness.request(body, h, query, route="sf")


def leads_of(req: InboundRequest, route=None):
    return harness.leads_of(SOURCE, req, route or make_route())


def contact_of(lead: Lead, route=None):
    return harness.contact_of(SOURCE, lead, route or make_route())


def refusal(req: InboundRequest, route=None):
    return harness.refusal(SOURCE, req, route or make_route())


ASHA = notification(
    "04l5g000001AbCdAAK",
    Id="00Q5g00000AbCdEEAZ",
    FirstName="Asha",
    LastName="Rao",
    Email="asha@example.in",
    MobilePhone="+91-98765-43210",
    Phone="022 2345 6789",
    LeadSource="Web",
    UTM_Campaign__c="diwali-2025",
    Company=None,
)
JOHN = notification(
    "04l5g000001AbCeAAK",
    Id="00Q5g00000AbCdFEAZ",
    FirstName="John",
    LastName="Smith",
    Phone="(415) 555-0132",
    CountryCode="US",
)
NO_PHONE = notification("04l5g000001AbCfAAK", Id="00Q5g00000AbCdGEAZ", LastName="Nobody")
CONTACT = notification(
    "04l5g000001AbCgAAK",
    "Contact",
    Id="0035g00000XyZ1AAA",
    Name="Meera Iyer",
    MobilePhone="9820011223",
)


# --- verification --------------------------------------------------------------------------------


def test_outbound_message_with_url_token_is_accepted():
    SOURCE.verify(delivered(outbound_message(ASHA)), make_route(organization_id=ORG_18))


def test_15_character_organization_id_matches_the_18_character_one():
    SOURCE.verify(delivered(outbound_message(ASHA)), make_route(organization_id=ORG_15))


def test_missing_token_is_rejected():
    assert refusal(delivered(outbound_message(ASHA), token=None)).reason == "missing_token"


def test_wrong_token_is_rejected():
    error = refusal(delivered(outbound_message(ASHA), token="guess"))
    assert error.reason == "bad_token"
    assert TOKEN not in error.message


def test_other_organization_is_rejected():
    body = outbound_message(ASHA, org="00D000000000001EAA")
    error = refusal(delivered(body), make_route(organization_id=ORG_18))
    assert error.reason == "bad_token"
    assert "OrganizationId" in error.message


def test_organization_id_differing_only_in_case_is_rejected():
    body = outbound_message(ASHA, org=ORG_18.lower())
    refusal(delivered(body), make_route(organization_id=ORG_18))


def test_message_without_organization_id_is_rejected():
    body = outbound_message(ASHA).replace(
        f"<OrganizationId>{ORG_18}</OrganizationId>".encode(), b""
    )
    assert refusal(delivered(body), make_route(organization_id=ORG_18)).reason == "missing_token"


def test_config_checks_organization_id():
    from bridge.exceptions import ConfigError

    with pytest.raises(ConfigError) as exc:
        make_route(organization_id="00D-nope")
    assert "organization_id" in exc.value.problems[0]


# --- outbound messages ---------------------------------------------------------------------------


def test_batch_of_notifications():
    leads = leads_of(delivered(outbound_message(ASHA, JOHN, NO_PHONE, CONTACT)))
    assert [lead.event_id for lead in leads] == [
        "04l5g000001AbCdAAK",
        "04l5g000001AbCeAAK",
        "04l5g000001AbCfAAK",
        "04l5g000001AbCgAAK",
    ]
    asha, john, nobody, meera = leads
    assert asha.fields == {
        "Id": "00Q5g00000AbCdEEAZ",
        "FirstName": "Asha",
        "LastName": "Rao",
        "Email": "asha@example.in",
        "MobilePhone": "+91-98765-43210",
        "Phone": "022 2345 6789",
        "LeadSource": "Web",
        "UTM_Campaign__c": "diwali-2025",
    }
    contact = contact_of(asha)
    assert contact["name"] == "Asha Rao"
    assert contact["phoneNumber"] == "+919876543210"  # MobilePhone before Phone
    assert contact["metadata"]["email"] == "asha@example.in"
    assert contact["metadata"]["UTM_Campaign__c"] == "diwali-2025"
    assert contact["metadata"]["LeadSource"] == "Web"

    assert john.country == "US"
    assert contact_of(john)["phoneNumber"] == "+14155550132"
    with pytest.raises(Unmappable):
        contact_of(nobody)
    assert contact_of(meera)["name"] == "Meera Iyer"
    assert contact_of(meera)["phoneNumber"] == "+919820011223"


def test_session_id_never_becomes_a_field():
    body = outbound_message(ASHA).replace(
        b'<SessionId xsi:nil="true"/>', b"<SessionId>00D5g!AQ8AQsecret</SessionId>"
    )
    [lead] = leads_of(delivered(body))
    assert "secret" not in json.dumps(lead.fields)


def test_do_not_call_records_are_left_out_unless_the_route_says_otherwise():
    dnc = notification(
        "04l5g000001AbChAAK", LastName="Quiet", MobilePhone="9876543210", DoNotCall="true"
    )
    assert [lead.event_id for lead in leads_of(delivered(outbound_message(ASHA, dnc)))] == [
        "04l5g000001AbCdAAK"
    ]
    leads = leads_of(delivered(outbound_message(ASHA, dnc)), make_route(respect_do_not_call=False))
    assert len(leads) == 2


@pytest.mark.parametrize(
    "body, words",
    [
        (
            b"<soapenv:Envelope xmlns:soapenv='http://schemas.xmlsoap.org/soap/envelope/'/>",
            "no notifications",
        ),
        (outbound_message("<Notification><Id>04l</Id></Notification>"), "has no sObject"),
        (b"<notifications><OrganizationId>1", "not valid XML"),
        (b'<!DOCTYPE x [<!ENTITY a "b">]><x>&a;</x>', "entities"),
    ],
)
def test_malformed_outbound_messages(body, words):
    with pytest.raises(MalformedBody) as exc:
        leads_of(delivered(body))
    assert words in exc.value.message


# --- Flow callouts -------------------------------------------------------------------------------


def test_flow_callout_json():
    body = json.dumps(
        {
            "FirstName": "Ravi",
            "LastName": "Kumar",
            "MobilePhone": "098200 11223",
            "Course__c": "MBA",
        }
    ).encode()
    req = delivered(
        body,
        token=None,
        json_body=True,
        headers={"x-bridge-token": TOKEN, "idempotency-key": "flow-1"},
    )
    [lead] = leads_of(req)
    assert lead.event_id == "flow-1"
    contact = contact_of(lead)
    assert contact["name"] == "Ravi Kumar"
    assert contact["phoneNumber"] == "+919820011223"
    assert contact["metadata"]["Course__c"] == "MBA"


def test_flow_callout_list_is_a_batch():
    body = json.dumps([{"Phone": "9876543210"}, {"Phone": "+65 8123 4567"}]).encode()
    leads = leads_of(delivered(body, json_body=True))
    assert [contact_of(lead)["phoneNumber"] for lead in leads] == ["+919876543210", "+6581234567"]


def test_flow_callout_with_organization_option_needs_no_org_id():
    body = json.dumps({"Phone": "9876543210"}).encode()
    SOURCE.verify(delivered(body, json_body=True), make_route(organization_id=ORG_18))


@pytest.mark.parametrize("body", [b'"x"', b"[]", b"[1]"])
def test_malformed_flow_callouts(body):
    with pytest.raises(MalformedBody):
        leads_of(delivered(body, json_body=True))


# --- replies -------------------------------------------------------------------------------------


def reply_after(req: InboundRequest, outcome: Outcome, route=None):
    try:
        SOURCE.verify(req, route or make_route())
    except SignatureInvalid as exc:
        outcome = Outcome(error=exc)
    outcome.request = req
    return SOURCE.reply(outcome)


def ack_of(reply) -> str | None:
    """The Ack of a ``Reply`` or of a Flask response."""
    data = reply.body_bytes() if hasattr(reply, "body_bytes") else reply.data
    root = SafeET.fromstring(data)
    ack = root.find(f".//{{{OUTBOUND_NS}}}Ack")
    return None if ack is None else ack.text


@pytest.mark.parametrize(
    "accepted",
    [
        [Accepted("d1", "queued"), Accepted("d2", "queued")],
        [Accepted("d1", "duplicate")],
        [Accepted("d1", "skipped", reason="no phone number")],
        [],
    ],
)
def test_outbound_message_is_acknowledged(accepted):
    reply = reply_after(delivered(outbound_message(ASHA)), Outcome(accepted=accepted))
    assert reply.status == 200
    assert reply.content_type.startswith("text/xml")
    assert ack_of(reply) == "true"


def test_rejected_outbound_message_gets_a_soap_fault():
    reply = reply_after(delivered(outbound_message(ASHA), token="guess"), Outcome())
    assert reply.status == 401
    assert reply.content_type.startswith("text/xml")
    root = SafeET.fromstring(reply.body_bytes())
    fault = root.find(".//{http://schemas.xmlsoap.org/soap/envelope/}Fault")
    assert fault.findtext("faultcode") == "soapenv:Client"
    assert "token" in fault.findtext("faultstring")
    assert TOKEN not in reply.body_bytes().decode()
    assert ack_of(reply) is None


def test_storage_outage_is_not_acknowledged():
    req = delivered(outbound_message(ASHA))
    reply = SOURCE.reply(Outcome(error=StorageUnavailable("Redis is unreachable"), request=req))
    assert reply.status == 503
    assert reply.headers["Retry-After"] == "30"
    assert ack_of(reply) is None
    assert "soapenv:Server" in reply.body_bytes().decode()


def test_flow_callout_gets_json_replies():
    body = json.dumps({"Phone": "9876543210"}).encode()
    reply = reply_after(
        delivered(body, json_body=True), Outcome(accepted=[Accepted("d1", "queued")])
    )
    assert (reply.status, reply.content_type) == (202, "application/json")
    assert json.loads(reply.body_bytes()) == {"deliveryId": "d1", "status": "queued"}


# --- through the real Flask app and Redis ---------------------------------------------------------


def test_through_the_app_ack_and_redelivery(make_client):
    route = {
        "name": "sf",
        "source": "salesforce",
        "token": TOKEN,
        "organization_id": ORG_18,
        "audience_name": "Salesforce leads",
    }
    client = make_client(routes=[route])
    req = delivered(outbound_message(ASHA, NO_PHONE))  # to /hooks/sf?token=...
    resp = harness.post(client, req)
    assert resp.status_code == 200
    assert resp.mimetype == "text/xml"
    assert ack_of(resp) == "true"
    received = client.store.counts()["received"]
    assert received == 2  # one queued, one skipped (no phone)
    again = harness.post(client, req)
    assert again.status_code == 200
    assert ack_of(again) == "true"
    assert client.store.counts()["received"] == received  # the repeat stored nothing

    flow = json.dumps({"LastName": "Kumar", "MobilePhone": "9820011223"}).encode()
    harness.post_twice(client, delivered(flow, json_body=True))


# --- for the property tests (tests/test_properties.py) ------------------------------------------

#: A Flow callout's minimal record; outbound messages are built from it by ``property_bodies``.
MINIMAL = {"FirstName": "A", "MobilePhone": "9876543210", "DoNotCall": "false"}
PROPERTY_SAMPLES = [MINIMAL]
#: Route options that reach the adapter's other branches.
PROPERTY_OPTIONS = {"organization_id": ORG_18, "respect_do_not_call": False}


def property_bodies(value):
    """Half the time an outbound message (SOAP) holding the records, else a Flow's JSON."""
    records = value if isinstance(value, list) else [value]
    message = (S.salesforce_message(records, org=ORG_18), "text/xml; charset=utf-8")
    return st.one_of(st.just(message), S.sender_bodies(value))
