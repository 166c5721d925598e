"""Speed to lead: once a lead is in its audience, put it on a call (``[routes.campaign]``).

- ``per_lead``: a campaign of its own over an audience holding just that lead, started at once
  (or scheduled for the next opening of the calling hours). About five general API calls a lead,
  so at most ``per_lead_max_per_minute`` a minute per route; leads above that join the current
  window instead (the history says so), rather than queueing calls for hours.
- ``window``: leads collect for ``every_minutes``; when the window ends (``close_window``, a job
  scheduled for that moment) one audience is made of them and one campaign calls it.

A step runs as its own RQ job after the delivery (``schedule_step``, in the MULTI/EXEC that marks
the delivery delivered), so batching and the contact steps know nothing of campaigns. Every
step looks for its effect first, by names the bridge generates and can search for (``olb <route>
<delivery id>``, ``olb <route> <window start>``) and by the ids it remembers, so a retried,
replayed or recovered step, or a lost answer to a create or a start, never makes a second
campaign. Members added to a running campaign's audience are not called (oliai-api.md #19): a
window closes (atomically, in Redis) before its audience is made, and a lead that comes later
joins the next window. Unfinished steps sit in ``camp:due``; the reaper runs the overdue ones.
"""

from __future__ import annotations

import logging
import math
import random
from datetime import UTC, datetime, timedelta

from redis import Redis
from redis.client import Pipeline
from rq import Queue

from bridge import keys, metrics
from bridge.calling_hours import CallingHours, zones_for
from bridge.exceptions import (
    Deferred,
    NotFound,
    PermanentApiError,
    RateLimited,
    TransientApiError,
    ValidationFailed,
)
from bridge.settings import CampaignSettings, Route
from jobs.audiences import name_hash
from jobs.context import context
from jobs.ratelimit import key_id

log = logging.getLogger(__name__)

NAME_PREFIX = "olb"
STEP_FUNC = "jobs.campaigns.campaign_step"
WINDOW_FUNC = "jobs.campaigns.close_window"
#: Statuses in which a campaign has been started (or will start by itself).
STARTED = ("SCHEDULED", "IN_PROGRESS", "PAUSED", "COMPLETED")
#: Leave at least this long between now and a ``scheduledAt`` (oliai-api.md #23).
SCHEDULE_LEAD_SECONDS = 120
#: The reaper runs a step this long after it should have finished.
RECHECK_SECONDS = 120
#: Members per audience add (oliai-api.md #17).
MEMBERS_PER_CALL = 100
#: Keep a lead's step state and a window's state this long (a window's campaign is looked up
#: by its id for as long as leads may still be replayed into it).
STATE_TTL_SECONDS = 7 * 24 * 3600

# KEYS: window hash, window leads. ARGV: member. 1 = joined, 0 = the window has closed.
JOIN = """
if redis.call('HEXISTS', KEYS[1], 'closed') == 1 then return 0 end
redis.call('SADD', KEYS[2], ARGV[1])
return 1
"""
# KEYS: window hash, window leads. Closes the window; returns its members.
CLOSE = """
redis.call('HSETNX', KEYS[1], 'closed', '1')
return redis.call('SMEMBERS', KEYS[2])
"""


def flow_key(key_id: str, name: str) -> str:
    return keys.flow(key_id, name_hash(name))


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


def schedule_for(
    campaign: CampaignSettings, phones: list[str], now: datetime
) -> tuple[datetime | None, str | None]:
    """When to call: (None, None) for now; else the next opening of the calling hours in every
    zone of these numbers (or of the route's ``timezone``), and the zone to name to the API."""
    if not campaign.calling_hours:
        return None, None
    hours = CallingHours.parse(campaign.calling_hours, campaign.days)
    zones = []
    for phone in phones or [""]:
        for found in zones_for(phone, campaign.timezone):
            if found not in zones:
                zones.append(found)
    try:
        opening = hours.next_opening(now, zones)
    except ValueError:  # leads of a window across the world: the first lead's zones decide
        zones = zones_for(phones[0], campaign.timezone)
        opening = hours.next_opening(now, zones)
    if opening is None:
        return None, None
    return max(opening, now + timedelta(seconds=SCHEDULE_LEAD_SECONDS)), zones[0].key


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
    phones: list[str],
    now: datetime,
) -> tuple[dict, datetime | None]:
    """Create (unless a campaign of that name exists) and start (unless started): idempotent.
    Returns the campaign and when it will call (None: now)."""
    scheduled, zone_name = schedule_for(campaign, phones, now)
    found = find_campaign(client, name)
    if found is None:
        extra = dialing(campaign)
        if scheduled is not None:
            extra["scheduledAt"] = scheduled.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            extra["timezone"] = zone_name
        found = client.create_campaign(name, flow_id, audience_id, **extra)
    if found.get("status") != "DRAFT":  # started before, or stopped by a person: leave it
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
    key = keys.campaign_rate(route.name, int(now.timestamp() // 60))
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


# --- the steps -------------------------------------------------------------------------------


def schedule_step(pipe: Pipeline, queue: Queue, delivery_id: str, route: Route) -> None:
    """Queue the campaign step of a delivered lead, in the caller's MULTI/EXEC."""
    if route.campaign is None:
        return
    pipe.zadd(keys.CAMPAIGNS_DUE, {delivery_id: _now().timestamp() + RECHECK_SECONDS})
    queue.enqueue(STEP_FUNC, delivery_id, pipeline=pipe, result_ttl=0, failure_ttl=86400)


def campaign_step(delivery_id: str) -> str:
    """The RQ job: the campaign step of one delivered lead."""
    ctx = context()
    d = ctx.store.get(delivery_id)
    route = ctx.settings.routes.get(d.route) if d else None
    if d is None or route is None or route.campaign is None or not d.contact_id:
        ctx.redis.zrem(keys.CAMPAIGNS_DUE, delivery_id)
        return "nothing to do"
    steps = Steps(ctx, route)
    return steps.guarded([d.id], lambda: steps.lead(d), STEP_FUNC, delivery_id)


def close_window(route_name: str, start: int) -> str:
    """The RQ job at a window's end: one campaign over the leads that joined it."""
    ctx = context()
    route = ctx.settings.routes.get(route_name)
    member = window_member(route_name, start)
    if route is None or route.campaign is None:
        ctx.redis.zrem(keys.CAMPAIGNS_DUE, member)
        return "nothing to do"
    steps = Steps(ctx, route)
    members = ctx.redis.eval(
        CLOSE,
        2,
        keys.campaign_window(route_name, start),
        keys.campaign_window_leads(route_name, start),
    )
    leads = [m.decode().split(":", 2) for m in members]  # delivery id, contact id, phone
    ids = [lead[0] for lead in leads]
    return steps.guarded(ids, lambda: steps.window(start, leads), WINDOW_FUNC, route_name, start)


def window_member(route: str, start: int) -> str:
    return f"window:{route}:{start}"


def recover(ctx, now: float | None = None) -> list[str]:
    """For the reaper: queue again the steps overdue in ``camp:due`` (their job was lost with a
    worker, or Redis lost it); a step that finished in between finds its work done."""
    now = _now().timestamp() if now is None else now
    due = [m.decode() for m in ctx.redis.zrangebyscore(keys.CAMPAIGNS_DUE, "-inf", now, 0, 100)]
    for member in due:
        ctx.redis.zadd(keys.CAMPAIGNS_DUE, {member: now + RECHECK_SECONDS})
        if member.startswith("window:"):
            _, route, start = member.split(":", 2)
            ctx.queue.enqueue(WINDOW_FUNC, route, int(start), result_ttl=0, failure_ttl=86400)
        else:
            ctx.queue.enqueue(STEP_FUNC, member, result_ttl=0, failure_ttl=86400)
    return due


def _now() -> datetime:
    return datetime.now(UTC)


class Steps:
    """The campaign work of one route, with the worker's context."""

    def __init__(self, ctx, route: Route, now: datetime | None = None):
        self.ctx, self.route, self.campaign = ctx, route, route.campaign
        self.redis = ctx.redis
        self.now = now or _now()
        api_key = ctx.settings.api_key_for(route) or ""
        self.client = ctx.client_for(api_key)
        self.kid = key_id(api_key)

    # outcomes ------------------------------------------------------------------------------

    def guarded(self, delivery_ids: list[str], work, func: str, *args) -> str:
        """Run ``work``; a rate limit or a transient failure queues the job again later, a
        permanent one is written to each delivery's history (and counted)."""
        member = args[0] if func == STEP_FUNC else window_member(*args)
        attempts_key = (
            keys.campaign_lead(args[0]) if func == STEP_FUNC else keys.campaign_window(*args)
        )
        try:
            work()
        except (RateLimited, Deferred) as exc:
            self.again(func, args, member, exc.retry_after + random.uniform(0, 1))
            return "waiting"
        except TransientApiError as exc:
            attempts = self.redis.hincrby(attempts_key, "attempts", 1)
            if attempts < self.ctx.settings.delivery.max_attempts:
                d = self.ctx.settings.delivery
                wait = min(d.retry_max_seconds, d.retry_base_seconds * 2 ** (attempts - 1))
                self.again(func, args, member, wait * random.uniform(0.75, 1.25))
                return "retrying"
            self.failed(delivery_ids, member, f"{exc.message} ({attempts} attempts)")
            return "failed"
        except PermanentApiError as exc:
            self.failed(delivery_ids, member, exc.message)
            return "failed"
        self.redis.zrem(keys.CAMPAIGNS_DUE, member)
        return "done"

    def again(self, func: str, args: tuple, member: str, delay: float) -> None:
        delay = max(1.0, math.ceil(delay))
        pipe = self.redis.pipeline(transaction=True)
        pipe.zadd(keys.CAMPAIGNS_DUE, {member: self.now.timestamp() + delay + RECHECK_SECONDS})
        self.ctx.queue.enqueue_in(
            timedelta(seconds=delay), func, *args, pipeline=pipe, result_ttl=0, failure_ttl=86400
        )
        pipe.execute()

    def failed(self, delivery_ids: list[str], member: str, message: str) -> None:
        pipe = self.redis.pipeline(transaction=True)
        for delivery_id in delivery_ids:
            self.ctx.store.log_on(pipe, delivery_id, "campaign_failed", message)
        pipe.zrem(keys.CAMPAIGNS_DUE, member)
        metrics.count_on(pipe, "campaign_failed", self.route.name)
        pipe.execute()
        log.error("route %s: campaign step failed: %s", self.route.name, message)

    def note(self, delivery_ids: list[str], what: str, detail: str) -> None:
        pipe = self.redis.pipeline(transaction=True)
        for delivery_id in delivery_ids:
            self.ctx.store.log_on(pipe, delivery_id, what, detail)
        pipe.execute()

    # one lead ------------------------------------------------------------------------------

    def lead(self, d) -> None:
        state_key = keys.campaign_lead(d.id)
        state = {k.decode(): v.decode() for k, v in self.redis.hgetall(state_key).items()}
        if state.get("done"):
            return
        mode = state.get("mode")
        if mode is None:
            mode = self.campaign.mode
            if mode == "per_lead" and not per_lead_allowed(self.redis, self.route, self.now):
                mode = "overflow"
            self.redis.hset(state_key, "mode", mode)
            self.redis.expire(state_key, STATE_TTL_SECONDS)
        if mode == "per_lead":
            self.per_lead(d, state_key, state)
        else:
            self.join_window(d, state_key, overflow=mode == "overflow")

    def per_lead(self, d, state_key: str, state: dict) -> None:
        flow_id = resolve_flow(self.client, self.redis, self.campaign, self.kid)
        name = lead_name(self.route, d.id)
        audience_id = state.get("audience_id") or self.audience(name, state_key, state)
        if not state.get("member_added"):
            self.client.add_audience_contacts(audience_id, [d.contact_id])
            self.redis.hset(state_key, "member_added", "1")
        phone = (d.contact or {}).get("phoneNumber", "")
        found, scheduled = ensure_started(
            self.client,
            name=name,
            flow_id=flow_id,
            audience_id=audience_id,
            campaign=self.campaign,
            phones=[phone],
            now=self.now,
        )
        self.redis.hset(state_key, mapping={"campaign_id": found["id"], "done": "1"})
        self.note([d.id], "campaign_started", _said(name, found, scheduled))
        metrics.count(self.redis, "campaign_started", self.route.name, "per_lead")

    def audience(self, name: str, state_key: str, state: dict) -> str:
        """Create the step's own audience; after a lost answer, find the one made."""
        if state.get("audience_asked"):
            found = self.client.find_audiences_by_name(name)
            if found:
                self.redis.hset(state_key, "audience_id", found[0]["id"])
                return found[0]["id"]
        self.redis.hset(state_key, "audience_asked", "1")
        created = self.client.create_audience(name, description=f"oliai-bridge: {name}")
        self.redis.hset(state_key, "audience_id", created["id"])
        return created["id"]

    def join_window(self, d, state_key: str, *, overflow: bool) -> None:
        span = self.campaign.every_minutes * 60
        start = window_start(self.campaign, self.now)
        phone = (d.contact or {}).get("phoneNumber", "")
        member = f"{d.id}:{d.contact_id}:{phone}"
        while not self.redis.eval(
            JOIN,
            2,
            keys.campaign_window(self.route.name, start),
            keys.campaign_window_leads(self.route.name, start),
            member,
        ):
            start += span  # that window is closing: the next one
        window = keys.campaign_window(self.route.name, start)
        end = start + span
        if self.redis.hsetnx(window, "scheduled", "1"):
            pipe = self.redis.pipeline(transaction=True)
            for key in (window, keys.campaign_window_leads(self.route.name, start)):
                pipe.expire(key, STATE_TTL_SECONDS)
            when = datetime.fromtimestamp(end + 1, UTC)
            pipe.zadd(
                keys.CAMPAIGNS_DUE, {window_member(self.route.name, start): end + RECHECK_SECONDS}
            )
            self.ctx.queue.enqueue_at(
                when,
                WINDOW_FUNC,
                self.route.name,
                start,
                pipeline=pipe,
                result_ttl=0,
                failure_ttl=86400,
            )
            pipe.execute()
        self.redis.hset(state_key, mapping={"window": str(start), "done": "1"})
        at = datetime.fromtimestamp(end, UTC).strftime("%Y-%m-%d %H:%M UTC")
        why = (
            f"more than {self.campaign.per_lead_max_per_minute} per-lead campaigns this minute: "
            if overflow
            else ""
        )
        self.note(
            [d.id],
            "campaign_window",
            f"{why}joins {window_name(self.route, start)!r}, whose campaign starts at {at}",
        )

    # a window ------------------------------------------------------------------------------

    def window(self, start: int, leads: list[list[str]]) -> None:
        window = keys.campaign_window(self.route.name, start)
        state = {k.decode(): v.decode() for k, v in self.redis.hgetall(window).items()}
        if state.get("campaign_id") or not leads:
            return
        flow_id = resolve_flow(self.client, self.redis, self.campaign, self.kid)
        name = window_name(self.route, start)
        audience_id = state.get("audience_id") or self.audience(name, window, state)
        contact_ids = sorted({lead[1] for lead in leads})
        for i in range(0, len(contact_ids), MEMBERS_PER_CALL):  # adding twice is a no-op
            self.client.add_audience_contacts(audience_id, contact_ids[i : i + MEMBERS_PER_CALL])
        found, scheduled = ensure_started(
            self.client,
            name=name,
            flow_id=flow_id,
            audience_id=audience_id,
            campaign=self.campaign,
            phones=[lead[2] for lead in leads],
            now=self.now,
        )
        self.redis.hset(window, "campaign_id", found["id"])
        self.note([lead[0] for lead in leads], "campaign_started", _said(name, found, scheduled))
        metrics.count(self.redis, "campaign_started", self.route.name, "window")


def _said(name: str, campaign: dict, scheduled: datetime | None) -> str:
    when = (
        f"scheduled for {scheduled.strftime('%Y-%m-%d %H:%M UTC')} (calling hours)"
        if scheduled
        else "calling now"
    )
    return f"{name!r} ({campaign.get('id')}, {campaign.get('status')}): {when}"
