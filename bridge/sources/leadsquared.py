"""LeadSquared: webhooks on lead creation / update, landing page submissions and the like.

The body is the lead as one flat object (JSON, form-encoded or JSON sent as ``text/plain``):
every mandatory field plus the fields that have values, custom fields prefixed ``mx_``, phone
numbers stored as ``+91-9876543210``. LeadSquared signs nothing; the webhook's custom header
carries the route's token (``X-Bridge-Token``, or ``x-api-key`` as in LeadSquared's examples).

LeadSquared may disable a webhook that answers anything but 2xx, so every answer is ``200``
with the outcome in the body (``{"Status": "Error", "StatusReason": ...}`` for a refusal) — except
when nothing could be stored (Redis down): that stays a ``503`` so the event is not lost
silently. ``HEAD`` (its probe) is answered ``200``.
"""

from __future__ import annotations

from typing import Any

from bridge.event import InboundRequest, Lead
from bridge.exceptions import MalformedBody, SignatureInvalid, StorageUnavailable
from bridge.settings import Route
from bridge.signatures import TOKEN_HEADER, TOKEN_QUERY, check_basic_auth, check_token_value
from bridge.sources.base import Outcome, Reply, Source, default_reply, error_reply
from bridge.values import clean_text, first_text

#: LeadSquared's own example of a custom auth header, accepted besides ``X-Bridge-Token``.
API_KEY_HEADER = "x-api-key"
#: Bookkeeping fields LeadSquared adds to every lead; they go after the user's fields so that
#: the metadata limit drops them first.
SYSTEM_FIELDS = frozenset(
    {
        "ProspectAutoId",
        "Origin",
        "Score",
        "EngagementScore",
        "QualityScore01",
        "TotalVisits",
        "PageViewsPerVisit",
        "AvgTimePerVisit",
        "OwnerId",
        "OwnerIdName",
        "OwnerIdEmailAddress",
        "CreatedBy",
        "CreatedByName",
        "CreatedOn",
        "ModifiedBy",
        "ModifiedByName",
        "ModifiedOn",
        "LastModifiedOn",
        "LastVisitDate",
        "DoNotEmail",
        "DoNotCall",
        "DoNotTrack",
        "IsLead",
        "ProspectActivityDate_Max",
        "ProspectActivityDate_Min",
        "ProspectActivityId_Max",
        "ProspectActivityId_Min",
        "ProspectActivityName_Max",
        "StatusCode",
        "StatusReason",
        "DeletionStatusCode",
        "LeadConversionDate",
        "ConversionReferrerURL",
        "NotableEvent",
        "NotableEventdate",
        "LastActivity",
        "OptInDate",
        "OptInDetails",
        "Groups",
        "Web_Referrer",
        "RelatedLandingPageId",
        "IsStarredLead",
        "IsTaggedLead",
    }
)
PHONE_FIELDS = ("Mobile", "Phone", "mx_Alternate_Mobile_Number", "mx_WhatsApp_Number")


class LeadSquaredSource(Source):
    name = "leadsquared"
    # Non-2xx answers can get the webhook disabled: a lead without a usable phone is recorded as
    # skipped and acknowledged.
    unmappable = "accept"

    def check_route(self, route: Route) -> list[str]:
        flag = route.options.get("respect_do_not_call")
        if flag is not None and not isinstance(flag, bool):
            return ["respect_do_not_call: must be true or false"]
        return []

    def handshake(self, req: InboundRequest, route: Route) -> Reply | None:
        if req.method.upper() == "HEAD":
            return Reply(200, b"", content_type="text/plain")
        return None

    def verify(self, req: InboundRequest, route: Route) -> None:
        if route.token:
            given = (
                req.header(TOKEN_HEADER) or req.header(API_KEY_HEADER) or req.query.get(TOKEN_QUERY)
            )
            if not given:
                raise SignatureInvalid(
                    "missing token: add the custom header X-Bridge-Token (or x-api-key) to the "
                    "webhook",
                    reason="missing_token",
                )
            check_token_value(given.strip(), route.values_of("token"))
        if route.basic_auth:
            check_basic_auth(req, route.values_of("basic_auth"))

    def normalize(self, req: InboundRequest, payload: Any, route: Route) -> list[Lead]:
        if isinstance(payload, dict):
            records = [payload]
        elif isinstance(payload, list) and payload and all(isinstance(p, dict) for p in payload):
            records = payload
        else:
            raise MalformedBody(
                f"expected the lead as a JSON object or a form, got {type(payload).__name__}"
            )
        respect_dnc = route.options.get("respect_do_not_call", True) is not False
        leads = []
        for record in records:
            if respect_dnc and str(record.get("DoNotCall", "")).strip() in ("1", "true", "True"):
                continue  # the lead asked not to be called
            leads.append(lead_of(record))
        return leads

    def reply(self, outcome: Outcome) -> Reply:
        error = outcome.error
        if isinstance(error, StorageUnavailable):
            return error_reply(error)  # nothing stored: LeadSquared must see a failure
        if error is not None:
            body = error.to_dict() | {"Status": "Error", "StatusReason": error.message}
            return Reply(200, body)
        reply = default_reply(outcome)
        body = reply.body if isinstance(reply.body, dict) else {}
        return Reply(200, {"Status": "Success"} | body)


def lead_of(record: dict[str, Any]) -> Lead:
    present = {
        str(k): v
        for k, v in record.items()
        if v is not None and not (isinstance(v, str) and not v.strip())
    }
    own = {k: v for k, v in present.items() if k not in SYSTEM_FIELDS}
    fields = own | {k: v for k, v in present.items() if k in SYSTEM_FIELDS}
    activity_id = clean_text(record.get("ProspectActivityId"))
    return Lead(
        fields=fields,
        # Activity events carry their own id; lead events only the lead's, which repeats on
        # every update: those fall back to the body hash.
        event_id=f"activity:{activity_id}" if activity_id else None,
        first_name=clean_text(record.get("FirstName")),
        last_name=clean_text(record.get("LastName")),
        email=clean_text(record.get("EmailAddress")),
        phone=first_text(record, PHONE_FIELDS),
    )


SOURCE = LeadSquaredSource()
