"""Google Forms, through the Apps Script ``onFormSubmit`` trigger published in the docs page.

Google Forms has no webhook of its own, so the script defines the body:
``{"formId", "formTitle", "responseId", "submittedAt", "respondentEmail", "answers": {title:
answer}}`` with the route's token in ``X-Bridge-Token``. Also accepted: a spreadsheet trigger's
``namedValues`` (every answer a one-item list) and a script posting its answers as a plain form.
Answers are keyed by question title; ``responseId`` is the event id.
"""

from __future__ import annotations

from typing import Any

from bridge.event import InboundRequest, Lead
from bridge.exceptions import MalformedBody
from bridge.parsing import parse_body, parse_json
from bridge.settings import Route
from bridge.sources.base import MAX_EVENT_ID_CHARS, Source
from bridge.values import text

# Keys of the script's envelope: not answers.
ENVELOPE = set(
    "source formId formTitle responseId submittedAt respondentEmail answers namedValues values "
    "token".split()
)
# A spreadsheet trigger's own column, not a question.
SHEET_COLUMNS = {"Timestamp"}


class GoogleFormsSource(Source):
    name = "google_forms"
    # The script's owner sees a failed fetch (execution log, failure e-mail) and the trigger does
    # not retry: a 422 naming the problem is the useful answer.
    unmappable = "reject"

    def parse(self, req: InboundRequest) -> Any:
        # UrlFetchApp labels a body form-urlencoded unless the script sets contentType, so a
        # JSON.stringify'd payload often arrives under the wrong type.
        if req.body.lstrip()[:1] in (b"{", b"["):
            return parse_json(req.body)
        return parse_body(req)

    def normalize(self, req: InboundRequest, payload: Any, route: Route) -> list[Lead]:
        if not isinstance(payload, dict):
            raise MalformedBody("expected a JSON object from the bridge's Apps Script")
        answers = payload.get("answers")
        named = payload.get("namedValues")
        lead = Lead()
        if answers is not None:
            if not isinstance(answers, dict):
                raise MalformedBody("answers must be an object of question title → answer")
            lead.fields.update({str(k): v for k, v in answers.items()})
        elif named is not None:
            if not isinstance(named, dict):
                raise MalformedBody("namedValues must be an object of question title → [answer]")
            for key, value in named.items():
                if key in SHEET_COLUMNS:
                    continue
                if isinstance(value, list) and len(value) == 1:
                    value = value[0]
                lead.fields[str(key)] = value
        # Anything else the script adds (UTM parameters, a page URL) is kept as well.
        for key, value in payload.items():
            if key not in ENVELOPE:
                lead.fields.setdefault(str(key), value)
        if not lead.fields:
            raise MalformedBody("no answers in the body: expected an answers object")

        email = text(payload.get("respondentEmail"))
        lead.email = email or None
        lead.event_id = text(payload.get("responseId"))[:MAX_EVENT_ID_CHARS] or None
        return [lead]


SOURCE = GoogleFormsSource()
