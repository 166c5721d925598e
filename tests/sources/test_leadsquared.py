"""LeadSquared adapter: custom-header token, HEAD probe, always-200 replies, lead payloads."""

from __future__ import annotations

import json
from urllib.parse import urlencode

import pytest

from bridge.event import InboundRequest, Lead
from bridge.exceptions import MalformedBody, StorageUnavailable, Unmappable
from bridge.sources.base import Accepted, Outcome
from bridge.sources.leadsquared import SOURCE
from tests.sources import harness

TOKEN = "lsq-route-token-2c7a"
ROUTE_DATA = {"name": "lsq", "source": "leadsquared", "audience_id": "aud_1", "token": TOKEN}


def make_route(**keys):
    return harness.make_route(ROUTE_DATA, **keys)


def delivered(
    lead, *, content_type: str = "application/json", header: str = "x-bridge-token", token=TOKEN
) -> InboundRequest:
    """A webhook as LeadSquared posts it, with the custom header the admin added."""
    if content_type == "application/x-www-form-urlencoded":
        body = urlencode({k: "" if v is None else v for k, v in lead.items()}).encode()
    else:
        body = lead if isinstance(lead, bytes) else json.dumps(lead).encode()
    headers = {"content-type": content_type}
    if token is not None:
        headers[header] = token
    return harness.request(body, headers, route="lsq")


def leads_of(req: InboundRequest, route=None):
    return harness.leads_of(SOURCE, req, route or make_route())


def contact_of(lead: Lead, route=None):
    return harness.contact_of(SOURCE, lead, route or make_route())


def refusal(req: InboundRequest, route=None):
    return harness.refusal(SOURCE, req, route or make_route())


LEAD_CREATED = {
    "ProspectID": "a311900c-0e56-4601-b580-f931645e7b32",
    "ProspectAutoId": "3142",
    "FirstName": "Asha",
    "LastName": "Rao",
    "EmailAddress": "asha@example.in",
    "Phone": "+91-9876543210",
    "Mobile": None,
    "Origin": "API",
    "Source": "Facebook Ads",
    "SourceMedium": "cpc",
    "SourceCampaign": "",
    "ProspectStage": "Prospect",
    "DoNotCall": "0",
    "DoNotEmail": "0",
    "Score": "0",
    "OwnerId": "8d4b2b2e-2c8a-11e6-9f4a-22000aa8e760",
    "CreatedOn": "2025-05-14 09:12:41",
    "mx_City": "Pune",
    "mx_Preferred_Language": "Marathi",
}


# --- verification and handshake ------------------------------------------------------------------


@pytest.mark.parametrize("header", ["x-bridge-token", "x-api-key"])
def test_token_header_is_accepted(header):
    SOURCE.verify(delivered(LEAD_CREATED, header=header), make_route())


def test_missing_token_is_rejected():
    assert refusal(delivered(LEAD_CREATED, token=None)).reason == "missing_token"


def test_wrong_token_is_rejected():
    error = refusal(delivered(LEAD_CREATED, token="guess"))
    assert error.reason == "bad_token"
    assert TOKEN not in error.message


def test_basic_auth_is_checked_too():
    route = make_route(basic_auth="lsq:pass-1")
    assert refusal(delivered(LEAD_CREATED), route).reason == "missing_header"


def test_head_probe_is_answered_200():
    req = InboundRequest(method="HEAD", route="lsq")
    reply = SOURCE.handshake(req, make_route())
    assert reply.status == 200
    assert SOURCE.handshake(InboundRequest(method="GET", route="lsq"), make_route()) is None


# --- normalization -------------------------------------------------------------------------------


def test_lead_created_json():
    [lead] = leads_of(delivered(LEAD_CREATED))
    assert lead.event_id is None  # lead events have no event id: the body hash de-duplicates
    assert "Mobile" not in lead.fields and "SourceCampaign" not in lead.fields
    keys = list(lead.fields)
    assert keys.index("mx_Preferred_Language") < keys.index("ProspectAutoId")  # system last
    contact = contact_of(lead)
    assert contact["name"] == "Asha Rao"
    assert contact["phoneNumber"] == "+919876543210"
    meta = contact["metadata"]
    assert meta["email"] == "asha@example.in"
    assert meta["mx_City"] == "Pune"
    assert meta["Source"] == "Facebook Ads"
    assert meta["ProspectID"] == "a311900c-0e56-4601-b580-f931645e7b32"


def test_form_encoded_lead_prefers_mobile():
    lead_data = dict(LEAD_CREATED, Mobile="+91-9820011223")
    [lead] = leads_of(delivered(lead_data, content_type="application/x-www-form-urlencoded"))
    assert lead.fields["mx_City"] == "Pune"
    assert contact_of(lead)["phoneNumber"] == "+919820011223"


def test_text_plain_json_and_foreign_number():
    lead_data = dict(LEAD_CREATED, Phone="+44-7911123456")
    [lead] = leads_of(delivered(lead_data, content_type="text/plain"))
    assert contact_of(lead)["phoneNumber"] == "+447911123456"


def test_activity_event_has_its_own_id():
    activity = dict(LEAD_CREATED, ProspectActivityId="5d2c7f1e-aaaa-bbbb-cccc-000000000001")
    [lead] = leads_of(delivered(activity))
    assert lead.event_id == "activity:5d2c7f1e-aaaa-bbbb-cccc-000000000001"


def test_do_not_call_leads_are_left_out_unless_the_route_says_otherwise():
    quiet = dict(LEAD_CREATED, DoNotCall="1")
    assert leads_of(delivered(quiet)) == []
    assert len(leads_of(delivered(quiet), make_route(respect_do_not_call=False))) == 1


def test_lead_without_phone_is_unmappable():
    [lead] = leads_of(delivered(dict(LEAD_CREATED, Phone=None)))
    with pytest.raises(Unmappable):
        contact_of(lead)
    assert SOURCE.unmappable == "accept"


@pytest.mark.parametrize("body", [b'"x"', b"[]", b"[1]", b"{broken"])
def test_malformed_bodies(body):
    with pytest.raises(MalformedBody):
        leads_of(delivered(body))


# --- replies -------------------------------------------------------------------------------------


def test_success_reply():
    reply = SOURCE.reply(Outcome(accepted=[Accepted("d1", "queued")]))
    assert (reply.status, reply.content_type) == (200, "application/json")
    assert json.loads(reply.body_bytes()) == {
        "Status": "Success",
        "deliveryId": "d1",
        "status": "queued",
    }


def test_duplicate_and_skipped_replies_are_200():
    reply = SOURCE.reply(Outcome(accepted=[Accepted("d1", "duplicate")]))
    assert reply.status == 200
    assert json.loads(reply.body_bytes())["duplicate"] is True
    reply = SOURCE.reply(Outcome(accepted=[Accepted("d2", "skipped", reason="no phone number")]))
    assert reply.status == 200
    assert json.loads(reply.body_bytes())["reason"] == "no phone number"
    reply = SOURCE.reply(Outcome())
    assert reply.status == 200
    assert json.loads(reply.body_bytes())["Status"] == "Success"


def test_refusals_are_200_with_the_error_in_the_body():
    reply = SOURCE.reply(Outcome(error=refusal(delivered(LEAD_CREATED, token="guess"))))
    assert reply.status == 200
    body = json.loads(reply.body_bytes())
    assert body["Status"] == "Error"
    assert "token" in body["StatusReason"]
    assert body["error"] == "unauthorized"
    reply = SOURCE.reply(Outcome(error=MalformedBody("body is not valid JSON")))
    assert reply.status == 200
    assert json.loads(reply.body_bytes())["StatusReason"] == "body is not valid JSON"


def test_storage_outage_stays_503():
    reply = SOURCE.reply(Outcome(error=StorageUnavailable("Redis is unreachable")))
    assert reply.status == 503
    assert reply.headers["Retry-After"] == "30"


# --- through the real Flask app and Redis ---------------------------------------------------------


def test_through_the_app_head_and_redelivery(make_client):
    route = {"name": "lsq", "source": "leadsquared", "token": TOKEN, "audience_name": "LSQ"}
    client = make_client(routes=[route])
    assert client.head("/hooks/lsq").status_code == 200
    req = delivered(LEAD_CREATED)
    resp, _ = harness.post_twice(client, req, status=200)
    assert resp.get_json()["Status"] == "Success"
    assert resp.get_json()["status"] == "queued"
    refused = client.post("/hooks/lsq", data=req.body, headers={"content-type": "application/json"})
    assert refused.status_code == 200
    assert refused.get_json()["Status"] == "Error"


# --- for the property tests (tests/test_properties.py) ------------------------------------------

#: A minimal valid payload, beside the documented one, for the mutation tests to start from.
MINIMAL = {"FirstName": "A", "Mobile": "+91-9876543210", "ProspectActivityId": "p"}
PROPERTY_SAMPLES = [MINIMAL, LEAD_CREATED]
#: Route options that reach the adapter's other branches.
PROPERTY_OPTIONS = {"respect_do_not_call": False}
