"""One pure path from a webhook request to its events and contacts, for every entry point.

Ingest (``bridge.ingest``), ``oliai-bridge try``, replay ``--remap`` (``jobs.replay``) and the
delivery job after a provider fetch (``jobs.deliver``) all turn requests into events and events
into contacts here, so they cannot drift apart: the same request gives the same event ids and
the same contacts wherever it is run. No IO and no clock of its own: the caller passes the
moment the request was received. Verifying the sender is not part of it (``try`` and replay
have no signature to check); neither are dedup, storage and metrics, which stay with ingest.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bridge.event import Event, InboundRequest, Lead
from bridge.exceptions import MalformedBody, Unmappable
from bridge.mapping import map_event
from bridge.settings import Route
from bridge.sources.base import MAX_EVENT_ID_CHARS, Source

#: Providers batch at most 100 records (Salesforce, HubSpot); a request carrying thousands is
#: garbage or abuse, and mapping and storing each would hold a web worker for a minute.
MAX_LEADS_PER_REQUEST = 1000


@dataclass(frozen=True)
class LeadResult:
    """One lead of a request: its event, and either its contact or why it has none.

    Both ``contact`` and ``unmappable`` are None while the event waits for the delivery job to
    fetch the lead from the provider (``fetch``: what to fetch).
    """

    event: Event
    contact: dict[str, Any] | None = None
    unmappable: Unmappable | None = None

    @property
    def fetch(self) -> dict[str, Any] | None:
        return self.event.fetch or None

    def contact_or_raise(self) -> dict[str, Any] | None:
        """The contact, raising the ``Unmappable`` that stopped it (None: not fetched yet)."""
        if self.unmappable is not None:
            raise self.unmappable
        return self.contact


def map_request(
    req: InboundRequest, route: Route, source: Source, received_at: str
) -> list[LeadResult]:
    """Every lead of ``req`` as an event with its contact (or the reason there is none).

    Raises the source's ``IngestError`` when the body cannot be read as leads at all.
    """
    return [map_lead(event, route) for event in request_events(req, route, source, received_at)]


def request_events(
    req: InboundRequest, route: Route, source: Source, received_at: str
) -> list[Event]:
    """The leads of ``req`` as events, each with the id dedup keys on."""
    leads = source.normalize(req, source.parse(req), route)
    if len(leads) > MAX_LEADS_PER_REQUEST:
        raise MalformedBody(
            f"{len(leads)} leads in one request: at most {MAX_LEADS_PER_REQUEST} are accepted "
            "(split the batch)"
        )
    return [
        Event.from_lead(
            lead,
            route=route.name,
            source=source.name,
            event_id=event_id_for(req, lead, index, len(leads)),
            received_at=received_at,
        )
        for index, lead in enumerate(leads)
    ]


def map_lead(event: Event, route: Route) -> LeadResult:
    """``event`` mapped with the route's current mapping; an event still to be fetched is left
    unmapped."""
    if event.fetch:
        return LeadResult(event)
    try:
        return LeadResult(event, contact=map_event(event, route))
    except Unmappable as exc:
        return LeadResult(event, unmappable=exc)


def fetched_event(event: Event, lead: Lead) -> Event:
    """``event`` filled with the lead the delivery job fetched for it: same route, source, id
    and time of receipt, nothing left to fetch. ``map_lead`` then maps it."""
    filled = Event.from_lead(
        lead,
        route=event.route,
        source=event.source,
        event_id=event.event_id,
        received_at=event.received_at,
    )
    filled.fetch = None
    return filled


def event_id_for(req: InboundRequest, lead: Lead, index: int, count: int) -> str:
    """What dedup keys on: the provider's id, else the body hash (with the lead's place in a
    batch)."""
    event_id = str(lead.event_id).strip()[:MAX_EVENT_ID_CHARS] if lead.event_id else ""
    if event_id:
        return event_id
    return req.body_hash if count == 1 else f"{req.body_hash}:{index}"
