"""Speed to lead: once a lead is in its audience, put it on a call (``[routes.campaign]``).

- ``per_lead``: a campaign of its own over an audience holding just that lead, started at once
  (or scheduled for the next opening of the calling hours). About five general API calls a lead,
  so at most ``per_lead_max_per_minute`` a minute per route; leads above that join the current
  window instead (the history says so), rather than queueing calls for hours.
- ``window``: leads collect in a fresh audience for ``every_minutes``; when the window ends one
  campaign is created over it and started (``close_window``, a job scheduled at the window's end).

Every step looks for its effect first, by names the bridge generates and can search for
(``olb <route> <delivery id>``, ``olb <route> <window start>``), so a retried, replayed or
recovered delivery, or a lost answer to a create or a start, never makes a second campaign.
Members added to a running campaign's audience are not called (oliai-api.md #19), so a window's
audience is never reused after its campaign was created.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from redis import Redis

from bridge import keys
from bridge.calling_hours import CallingHours, zones_for
from bridge.exceptions import NotFound, ValidationFailed
from bridge.settings import CampaignSettings, Route
from jobs.audiences import name_hash

log = logging.getLogger(__name__)

NAME_PREFIX = "olb"
#: Statuses in which a campaign has been started (or will start by itself).
STARTED = ("SCHEDULED", "IN_PROGRESS", "PAUSED", "COMPLETED")
#: Leave at least this long between now and a ``scheduledAt`` (oliai-api.md #23).
SCHEDULE_LEAD_SECONDS = 120


def flow_key(key_id: str, name: str) -> str:
    return keys.flow(key_id, name_hash(name))


def per_lead_counter_key(route: str, minute: int) -> str:
    return keys.campaign_rate(route, minute)


def window_key(route: str, start: int) -> str:
    """The window's state: its audience id, then its campaign id once created."""
    return keys.campaign_window(route, start)


def resolve_flow(client, redis: Redis, campaign: CampaignSettings, key_id: str) -> str:
    """The flow id: configured, or found by name once and remembered for every worker."""
    if campaign.flow_id:
        return campaign.flow_id
    name = campaign.flow_name or ""
    key = flow_key(key_id, name)
    cached = redis.get(key)
    if cached:
        return cached.decode()
    for flow in client.iter_pages(client.list_flows):
        if flow.get("name") == name:
            redis.set(key, flow["id"], ex=3600)
            return flow["id"]
    raise NotFound(f"no voice flow named {name!r} for this API key (see `oliai-bridge flows`)")


@dataclass(frozen=True)
class Plan:
    """What the campaign step did, for the delivery's history."""

    what: str
    detail: str
    campaign_id: str | None = None


def schedule_for(campaign: CampaignSettings, phone: str, now: datetime) -> datetime | None:
    """None: call now; else the next opening of the calling hours for this number."""
    if not campaign.calling_hours:
        return None
    hours = CallingHours.parse(campaign.calling_hours, campaign.days)
    opening = hours.next_opening(now, zones_for(phone, campaign.timezone))
    if opening is None:
        return None
    return max(opening, now + timedelta(seconds=SCHEDULE_LEAD_SECONDS))


def dialing(campaign: CampaignSettings) -> dict:
    """The dialing settings for POST /campaigns, by API names; unset ones take the API's."""
    pairs = {
        "callsPerMinute": campaign.calls_per_minute,
        "maxConcurrentCalls": campaign.max_concurrent_calls,
        "maxRetries": campaign.max_retries,
        "retryDelayMinutes": campaign.retry_delay_minutes,
        "callTimeoutMinutes": campaign.call_timeout_minutes,
    }
    return {k: v for k, v in pairs.items() if v is not None}


def find_campaign(client, name: str) -> dict | None:
    """The campaign named exactly ``name`` (``search`` matches substrings, #25)."""
    for found in client.iter_pages(client.list_campaigns, search=name):
        if found.get("name") == name:
            return found
    return None


def ensure_started(
    client,
    *,
    name: str,
    flow_id: str,
    audience_id: str,
    campaign: CampaignSettings,
    phone: str | None,
    now: datetime,
) -> tuple[dict, datetime | None]:
    """Create (unless a campaign of that name exists) and start (unless started): idempotent."""
    scheduled = schedule_for(campaign, phone, now) if phone else None
    found = find_campaign(client, name)
    if found is None:
        extra = dialing(campaign)
        if scheduled is not None:
            extra["scheduledAt"] = scheduled.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            extra["timezone"] = zones_for(phone, campaign.timezone)[0].key
        found = client.create_campaign(name, flow_id, audience_id, **extra)
    if found.get("status") in STARTED:
        return found, scheduled
    if found.get("status") != "DRAFT":  # CANCELLED by a person: leave it
        return found, scheduled
    try:
        return client.start_campaign(found["id"]), scheduled
    except ValidationFailed:
        # an invalid transition after a lost answer: re-read, "already started" is success
        again = client.get_campaign(found["id"])
        if again.get("status") in STARTED:
            return again, scheduled
        raise


def per_lead_allowed(redis: Redis, route: Route, now: datetime) -> bool:
    """Counts this route's per-lead campaigns in the current minute; False above the budget."""
    minute = int(now.timestamp() // 60)
    key = per_lead_counter_key(route.name, minute)
    pipe = redis.pipeline()
    pipe.incr(key)
    pipe.expire(key, 120)
    count, _ = pipe.execute()
    return count <= route.campaign.per_lead_max_per_minute


def window_start(campaign: CampaignSettings, now: datetime) -> int:
    span = campaign.every_minutes * 60
    return int(now.timestamp() // span * span)


def window_name(route: Route, start: int) -> str:
    stamp = datetime.fromtimestamp(start, UTC).strftime("%Y-%m-%d %H:%M")
    return f"{NAME_PREFIX} {route.name} {stamp}"


def lead_name(route: Route, delivery_id: str) -> str:
    return f"{NAME_PREFIX} {route.name} {delivery_id}"


def flow_problems(client, campaign: CampaignSettings) -> list[str]:
    """For ``check-config``: the configured flow, looked up with the route's key."""
    flows = list(client.iter_pages(client.list_flows))
    if campaign.flow_id and not any(f.get("id") == campaign.flow_id for f in flows):
        return [f"flow_id: no voice flow {campaign.flow_id!r} for this API key"]
    if campaign.flow_name and not any(f.get("name") == campaign.flow_name for f in flows):
        return [f"flow_name: no voice flow named {campaign.flow_name!r} for this API key"]
    return []
