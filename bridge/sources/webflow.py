"""Webflow ``form_submission`` webhooks, answered with exactly ``200``.

Webflow counts any status but 200 as a failed delivery (three retries, then the webhook is
deactivated), so every accepted request — queued, duplicate, ignored, or unmappable and recorded
as skipped — gets 200. Webhooks created through the API are signed: ``x-webflow-signature`` is
the hex HMAC-SHA256 of ``"<x-webflow-timestamp>:<raw body>"`` (timestamp in milliseconds);
dashboard-created webhooks are not, and use the route's ``token`` in the URL instead.
The form's ``data`` are the fields, keyed by the field names set in the Designer; the form's name
is kept as ``form_name`` (one site-wide webhook serves every form); ``payload.id`` is the event id.
"""

from __future__ import annotations

from typing import Any

from bridge.event import InboundRequest, Lead
from bridge.exceptions import MalformedBody
from bridge.settings import Route
from bridge.signatures import Scheme
from bridge.sources.base import MAX_EVENT_ID_CHARS, Source
from bridge.values import text

#: ``x-webflow-signature``: hex HMAC-SHA256 of ``"<x-webflow-timestamp>:<raw body>"``, the
#: timestamp in milliseconds.
SCHEME = Scheme(
    header="x-webflow-signature",
    signed="{timestamp}:{body}",
    timestamp_header="x-webflow-timestamp",
    timestamp_unit="ms",
    # Webflow's documented replay window.
    tolerance=300,
    hint="that the route's secret is the webhook's secretKey or the app's client secret",
)


class WebflowSource(Source):
    name = "webflow"
    signs = True
    # A non-200 counts as a failure and failures deactivate the webhook.
    unmappable = "accept"
    answers_200 = True
    schemes = (SCHEME,)

    def normalize(self, req: InboundRequest, payload: Any, route: Route) -> list[Lead]:
        if not isinstance(payload, dict):
            raise MalformedBody("expected a Webflow webhook object")
        if "triggerType" in payload:
            if payload["triggerType"] != "form_submission":
                return []  # site_publish, ecomm_*, collection_item_*: no lead
            submission = payload.get("payload")
            if not isinstance(submission, dict):
                raise MalformedBody("payload is missing or not an object")
            event_id = text(submission.get("id"))
        else:
            submission = payload  # the deprecated v1 shape: {name, site, data, d, _id}
            event_id = text(submission.get("_id"))
        data = submission.get("data")
        if not isinstance(data, dict):
            raise MalformedBody("payload.data (the submitted fields) is missing or not an object")

        fields = {str(k): v for k, v in data.items()}
        form_name = text(submission.get("name"))
        if form_name:
            fields.setdefault("form_name", form_name)
        return [Lead(fields=fields, event_id=event_id[:MAX_EVENT_ID_CHARS] or None)]


SOURCE = WebflowSource()
