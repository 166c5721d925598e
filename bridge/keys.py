"""Every Redis key the bridge writes, named in one place (RQ's own ``rq:`` keys are RQ's).

Each key is a constant or a function of the ids it is built from. The layout is part of what a
user's Redis holds, so a name here never changes without a migration; ``docs/internals.md``
lists the same keys (a test checks that the two agree).
"""

from __future__ import annotations

from bridge.defaults import KEY_PREFIX

# --- deliveries (bridge.deliveries) ---------------------------------------------------------


def delivery(delivery_id: str) -> str:
    """Hash: the delivery record (``bridge.record.Delivery``)."""
    return f"{KEY_PREFIX}d:{delivery_id}"


def history(delivery_id: str) -> str:
    """List: the delivery's history entries, oldest first, as earlier versions kept them (the
    history is now part of the record: ``bridge.deliveries.history_field``)."""
    return f"{KEY_PREFIX}d:{delivery_id}:log"


def raw(raw_id: str) -> str:
    """String: the request as received (secrets redacted), shared by the leads of one batch."""
    return f"{KEY_PREFIX}raw:{raw_id}"


def dedup_day(day: int) -> str:
    """Hash: the dedup claims made on one day (epoch days, UTC): a field per claimed event (a
    digest of route and event id, ``bridge.admission.Claim``) naming its first delivery id;
    expires ``bridge.dedup_ttl_seconds`` after the day ends."""
    return f"{KEY_PREFIX}dedup:{day}"


def dedup(route: str, event_id: str) -> str:
    """String: the first delivery id stored for this event of this route, as earlier versions
    claimed it (claims are now fields of ``dedup_day``); still honoured until it expires."""
    return f"{KEY_PREFIX}dedup:{route}:{event_id}"


#: Stream: every delivery, one entry per delivery as it was received (its entry id is the time
#: of receipt in ms, its one field the delivery id: ``bridge.deliveries.RECEIVED_FIELD``); ~43
#: bytes a delivery, where the zset it replaces cost ~130.
RECEIVED_STREAM = f"{KEY_PREFIX}idx:recv"
#: Zset: every delivery by when it was received, as earlier versions wrote it (read after
#: ``RECEIVED_STREAM``, no longer written); trimmed until it is empty.
RECEIVED = f"{KEY_PREFIX}idx:received"
#: Zset: failed and skipped deliveries, everything a person may need to replay.
FAILED = f"{KEY_PREFIX}idx:failed"
#: Zset: unfinished deliveries, scored by when the reaper should look at them.
ACTIVE = f"{KEY_PREFIX}idx:active"


def received_by_route(route: str) -> str:
    """Zset: one route's deliveries by when they were received, as earlier versions wrote it
    (no longer written: the admin page reads the route of each received delivery instead);
    trimmed until it is empty."""
    return f"{KEY_PREFIX}idx:received:route:{route}"


def phones(day: int, shard: str) -> str:
    """Zset: the deliveries indexed on one day (epoch days, UTC) of the phone numbers in one
    shard (``bridge.deliveries.phone_shard``), each a member ``<e164> <delivery id>`` of score 0
    found by ZRANGEBYLEX; expires a day after the longest retention."""
    return f"{KEY_PREFIX}idx:phones:{day}:{shard}"


def by_phone(phone: str) -> str:
    """Zset: the deliveries of one E.164 number, as earlier versions wrote it (no longer
    written: ``phones`` holds them); read until it expires with its last delivery."""
    return f"{KEY_PREFIX}idx:phone:{phone}"


def route_state(route: str) -> str:
    """Hash: a route's ``last_received`` / ``last_delivered`` (epoch seconds)."""
    return f"{KEY_PREFIX}route:{route}"


def failed_by_route(route: str) -> str:
    """Zset: ``FAILED`` narrowed to one route."""
    return f"{FAILED}:route:{route}"


def failed_by_reason(reason_code: str) -> str:
    """Zset: ``FAILED`` narrowed to one reason code."""
    return f"{FAILED}:reason:{reason_code}"


#: SCAN pattern matching every ``failed_by_route`` and ``failed_by_reason`` index (routes
#: removed from the config keep theirs until trimmed).
FAILED_NARROWED_PATTERN = f"{FAILED}:*"


def failed_by_route_and_reason(token: str) -> str:
    """Zset, kept one minute: the intersection of a route's and a reason's failed indexes."""
    return f"{KEY_PREFIX}tmp:failed:{token}"


# --- the worker side (jobs/) ----------------------------------------------------------------


def lease(delivery_id: str) -> str:
    """String with a short TTL: held by the worker running the delivery (``jobs.deliver``)."""
    return f"{KEY_PREFIX}lease:{delivery_id}"


# --- lanes and batches (jobs.lanes, jobs.batch) ------------------------------------------------


def pending(key_id: str, lane: str) -> str:
    """Zset: the tickets (``<delivery id>-<seq>``) waiting in one API key's lane; score 0 =
    ready now, else the epoch milliseconds a retry is due."""
    return f"{KEY_PREFIX}pending:{key_id}:{lane}"


#: Set: every ``<key id>:<lane>`` that ever had a ticket (the reaper looks at each).
LANES = f"{KEY_PREFIX}lanes"


def trigger(key_id: str, lane: str) -> str:
    """String with a TTL: the id of the RQ job draining the lane (queued, running, or scheduled
    for when a token is free); set NX by whoever adds a ticket to an idle lane."""
    return f"{KEY_PREFIX}trigger:{key_id}:{lane}"


def wake(key_id: str, lane: str) -> str:
    """String with a TTL: when the lane's next scheduled wake-up runs (epoch milliseconds)."""
    return f"{KEY_PREFIX}wake:{key_id}:{lane}"


def batch(batch_id: str) -> str:
    """Hash: a claimed batch (key id, lane, tickets, the drain's job id), or an import waiting
    for its status (``phase``, ``import_id``, the digest of its webhook token)."""
    return f"{KEY_PREFIX}batch:{batch_id}"


#: Zset: claimed batches, scored by when their lease lapses (epoch milliseconds).
BATCHES = f"{KEY_PREFIX}batches"


def batch_lease(batch_id: str) -> str:
    """String with a short TTL: held by the drain working on the batch."""
    return f"{KEY_PREFIX}lease:batch:{batch_id}"


def drain_lease(job_id: str) -> str:
    """String with a short TTL: held by a running drain job."""
    return f"{KEY_PREFIX}lease:drain:{job_id}"


def importing(key_id: str, lane: str) -> str:
    """Zset: the lane's imports waiting for their status, scored by the next poll (epoch ms)."""
    return f"{KEY_PREFIX}importing:{key_id}:{lane}"


def no_import(key_id: str, lane: str) -> str:
    """Set: deliveries an import did not confirm: they go through ``/contacts/bulk``."""
    return f"{KEY_PREFIX}noimport:{key_id}:{lane}"


def import_lock(key_id: str) -> str:
    """String with a TTL: one import in flight per API key, so a lost answer can be looked up."""
    return f"{KEY_PREFIX}lock:import:{key_id}"


def known_imports(key_id: str) -> str:
    """Set, kept a day: import ids already accounted for (not adopted twice)."""
    return f"{KEY_PREFIX}imports:known:{key_id}"


def bulk_size(key_id: str) -> str:
    """String with a TTL: the largest ``/contacts/bulk`` request the key accepted lately."""
    return f"{KEY_PREFIX}bulkmax:{key_id}"


def import_bytes(key_id: str) -> str:
    """String with a TTL: the largest import body the key accepted lately."""
    return f"{KEY_PREFIX}importbytes:{key_id}"


def rate_window(key_id: str, rate_class: str) -> str:
    """Zset: one API key's sliding window for ``general`` or ``bulk`` calls (``jobs.ratelimit``).

    ``key_id`` is a hash of the API key: the key itself is never written to Redis."""
    return f"{KEY_PREFIX}rl:{key_id}:{rate_class}"


def rate_share(key_id: str) -> str:
    """Hash: our share of the key's budget after 429s we did not expect (AIMD), and when it
    was last cut and last changed; gone while the share is whole."""
    return f"{KEY_PREFIX}rl:{key_id}:aimd"


def pause(key_id: str) -> str:
    """String with a TTL: the API key is paused after a 429 until the key expires."""
    return f"{KEY_PREFIX}pause:{key_id}"


def audience(key_id: str, name_hash: str) -> str:
    """String: an audience name's id for one API key (``jobs.audiences``)."""
    return f"{KEY_PREFIX}aud:{key_id}:{name_hash}"


def audience_lock(key_id: str, name_hash: str) -> str:
    """String with a TTL: held by the one worker creating the audience."""
    return f"{audience(key_id, name_hash)}:lock"


def flow(key_id: str, name_hash: str) -> str:
    """String with a TTL: a voice flow name's id for one API key (``jobs.campaigns``)."""
    return f"{KEY_PREFIX}flow:{key_id}:{name_hash}"


def campaign_rate(route: str, minute: int) -> str:
    """String with a TTL: per-lead campaigns the route started in that minute (epoch minutes)."""
    return f"{KEY_PREFIX}camp:rate:{route}:{minute}"


def campaign_window(route: str, start: int) -> str:
    """Hash: a campaign window of a route (``start`` in epoch seconds): ``closed`` once its
    campaign is being made, then its ``audience_id`` and ``campaign_id``."""
    return f"{KEY_PREFIX}camp:win:{route}:{start}"


def campaign_window_leads(route: str, start: int) -> str:
    """Set: the contact ids (and phones) that joined the window before it closed."""
    return f"{campaign_window(route, start)}:leads"


def campaign_lead(delivery_id: str) -> str:
    """Hash: a delivery's campaign step: attempts, its audience and campaign ids as made."""
    return f"{KEY_PREFIX}camp:lead:{delivery_id}"


#: Zset: campaign steps not finished yet (delivery ids, and ``window:<route>:<start>`` for
#: windows), scored by when the reaper should look at them.
CAMPAIGNS_DUE = f"{KEY_PREFIX}camp:due"

# --- the web side's quotas (bridge.quotas) ---------------------------------------------------


def quota(scope: str, window: int) -> str:
    """String with a TTL of two windows: requests the web processes admitted for ``scope`` (a
    route, or ``<route>:ip:<address>``) during one quota window (epoch minutes)."""
    return f"{KEY_PREFIX}quota:{scope}:{window}"


#: String with a TTL: held by the one worker whose reaper runs (``jobs.reaper``).
REAPER_LOCK = f"{KEY_PREFIX}reaper:lock"
#: String with a TTL: set when the listing indexes were last trimmed.
REAPER_TRIMMED = f"{KEY_PREFIX}reaper:trimmed"

# --- admin sign-ins (bridge.sign_ins) --------------------------------------------------------


def sign_in_failures(address: str) -> str:
    """String with a TTL of one window: wrong admin tokens sent from one client address (an IPv4
    address or an IPv6 /64) since the window's first."""
    return f"{KEY_PREFIX}signin:failed:{address}"


# --- both sides -----------------------------------------------------------------------------

#: Hash: the counters behind ``/metrics`` (``bridge.metrics``).
STATS = f"{KEY_PREFIX}stats"


#: Hash: the receive-to-delivered latency histogram's buckets, sum and count per route.
STATS_LATENCY = f"{KEY_PREFIX}stats:latency"


def stats_hour(hour: int) -> str:
    """Hash: the counters of one hour (epoch hours), kept 26 h for the admin overview's 24 h."""
    return f"{KEY_PREFIX}stats:hour:{hour}"
