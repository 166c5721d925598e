"""Defaults, each a named constant with the reason for its value."""

#: Where the config is read when ``BRIDGE_CONFIG`` is unset.
CONFIG_PATH = "config.toml"

#: The production API (oliai-api.md §1).
OLIAI_BASE_URL = "https://api.oliai.in/v1"

#: Region for numbers written without a country code: OliAI's customers are mostly in India.
DEFAULT_REGION = "IN"

#: The API's published limits (oliai-api.md §4) and their window; tests shrink the window.
RATE_WINDOW_SECONDS = 60.0
GENERAL_PER_MINUTE = 60
BULK_PER_MINUTE = 10

#: Our limiter keeps this share of the published budget, leaving headroom for clocks that
#: disagree and for other clients of the same key (unknowns #2 suggests ~50/60).
RATE_HEADROOM = 0.85

#: Lanes of delivery work: leads from webhooks go ``live``; backfills, imports and replays go
#: ``backfill``, which may only use part of a key's budget and always yields to live work.
LIVE_LANE = "live"
BACKFILL_LANE = "backfill"
LANES = (LIVE_LANE, BACKFILL_LANE)

#: Share of each budget (general and bulk) a backfill may not touch: live leads always find
#: tokens even while a deep backfill drains the same key.
LIVE_RESERVE = 0.25

#: Another program spending the same key shows as 429s we did not expect. Our own budget for
#: the key then halves (at most once per half window) and grows back by this share of the
#: budget per window without a 429 (AIMD), never below ``AIMD_MIN_SHARE``.
AIMD_STEP = 0.1
AIMD_MIN_SHARE = 0.1

#: A 429 without a usable ``Retry-After`` pauses the key for a whole window (unknowns #3).
DEFAULT_RETRY_AFTER_SECONDS = 60.0

#: Read timeout for one OliAI call; connect timeout is short because a healthy API accepts fast.
OLIAI_TIMEOUT_SECONDS = 10.0
OLIAI_CONNECT_TIMEOUT_SECONDS = 3.05

#: Largest page the API serves (oliai-api.md §3); the pagination helpers always ask for it.
OLIAI_MAX_PAGE_SIZE = 100

#: Connections one client keeps open to the API: more than the calls one worker makes at once.
OLIAI_POOL_SIZE = 10

#: Largest webhook body accepted (413 above). Form builders send a few KB.
MAX_BODY_BYTES = 1024 * 1024

#: How long a seen event id (or body hash) answers "duplicate": longer than any sender's
#: retry schedule (HubSpot retries for 3 days).
DEDUP_TTL_SECONDS = 7 * 24 * 3600

#: Dedup claims are kept in one hash per this many seconds (a day, UTC): a field of a big hash
#: costs less than half a key of its own, and a whole day's claims expire together. A claim
#: looks in every bucket its window reaches (8 for the default 7 days).
DEDUP_BUCKET_SECONDS = 24 * 3600

#: Transient failures (5xx, timeouts) are retried this many times in all, with exponential
#: backoff from ``RETRY_BASE_SECONDS`` doubling up to ``RETRY_MAX_SECONDS`` plus jitter:
#: 8 attempts, 7 waits of 15 s to 16 min, span about half an hour (±25 %).
MAX_ATTEMPTS = 8
RETRY_BASE_SECONDS = 15.0
RETRY_MAX_SECONDS = 1200.0

#: RQ's default job timeout is 180 s; one delivery makes at most a handful of calls of at most
#: ``OLIAI_TIMEOUT_SECONDS`` each, so 60 s is above the worst honest case and far below 180 s.
JOB_TIMEOUT_SECONDS = 60

#: How long delivery records (with the raw payload) are kept.
KEEP_DELIVERED_DAYS = 7.0
KEEP_FAILED_DAYS = 30.0

#: The RQ queue every web process enqueues to and every worker listens on.
QUEUE_NAME = "oliai-bridge"

#: Prefix of every Redis key the bridge writes (RQ keeps its own ``rq:`` keys).
KEY_PREFIX = "oliai-bridge:"

#: Where ``oliai-bridge dev`` keeps the embedded Redis's data (append-only file on).
DATA_DIR = ".bridge-data"

#: Web port when ``PORT`` is unset.
PORT = 8000

#: gunicorn processes when ``WEB_CONCURRENCY`` is unset: one per core of a small machine.
WEB_CONCURRENCY = 2

#: Log level when ``LOG_LEVEL`` is unset.
LOG_LEVEL = "INFO"

#: Slow and stalled connections (``bridge.web``): a sender has this long from the first byte of a
#: request (or the end of the previous answer on a kept-alive connection) to send its headers.
#: Real senders are servers on fast links: they send a webhook's headers in milliseconds.
HEADER_TIMEOUT_SECONDS = 5.0

#: ... and then this long plus one second per ``BODY_MIN_BYTES_PER_SECOND`` of its declared body
#: to send the body: a 1 MiB body must arrive at 64 KB/s or faster, a 2 KB form in 5 s.
BODY_TIMEOUT_SECONDS = 5.0
BODY_MIN_BYTES_PER_SECOND = 64 * 1024

#: Connections one web process holds open at once (each costs a greenlet, a few KB): hundreds
#: of stalled ones leave room for real senders until their deadline closes them.
WORKER_CONNECTIONS = 1000

#: ``[routes.campaign]``: a window campaign collects the leads of this many minutes.
CAMPAIGN_WINDOW_MINUTES = 15

#: A per-lead campaign costs about five general API calls (audience, member, lookup, create,
#: start): five a minute spends about half of the 60/min budget, leaving the rest for contacts.
CAMPAIGN_PER_LEAD_MAX_PER_MINUTE = 5

#: Log lines are JSON objects (one per line) for platforms that collect and search them;
#: ``oliai-bridge dev`` uses ``text`` instead, for a person at a terminal.
LOG_FORMAT = "json"
DEV_LOG_FORMAT = "text"

#: Certificate check for ``rediss://`` URLs when ``REDIS_SSL_CERT_REQS`` is unset: verify, as
#: for any TLS connection. Managed Redis with self-signed certificates (Heroku) needs ``none``.
REDIS_SSL_CERT_REQS = "required"

#: Requests one route accepts per minute (``[bridge] max_requests_per_minute``; 429 above). A
#: form that goes viral sends a few leads a second; 600 a minute is ten a second, sustained.
MAX_REQUESTS_PER_MINUTE = 600

#: The quota window. Fixed windows (one Redis counter per route and minute) cost one key each;
#: a burst across a window's edge may see up to twice the quota in a minute, which is fine
#: for a limit meant to stop floods, not to meter.
QUOTA_WINDOW_SECONDS = 60

#: A web process counts the requests it admits and adds them to the shared counter in Redis in
#: batches of this share of the quota: about twenty Redis round trips per route and minute
#: whatever the traffic, and the processes together pass a quota by less than this share each.
QUOTA_SYNC_SHARE = 1 / 20

#: Counters one web process keeps for the current window (routes and, with per-address quotas,
#: sender addresses): past this, it pushes what it counted and starts over, so a flood from
#: ever new addresses costs bounded memory.
MAX_QUOTA_COUNTERS = 50_000

#: Refused requests are counted in each process and added to the shared counters at most this
#: often: a flood of forged requests costs one write per reason per second, not one per request.
TALLY_FLUSH_SECONDS = 1.0

#: An admin token shorter than this is warned about (``check-config``, start-up): the admin page
#: is on the same public port as the hooks, so its token is all that keeps it closed.
MIN_ADMIN_TOKEN_CHARS = 32

#: Wrong admin tokens one client address may send (sign-in form, HTTP Basic or Bearer) within
#: ``ADMIN_SIGN_IN_WINDOW_SECONDS`` of its first; past them it is answered 429 until the window
#: ends. Ten covers a person mistyping; a guesser gets 120 tries an hour, hopeless against a
#: token of ``MIN_ADMIN_TOKEN_CHARS``.
ADMIN_SIGN_IN_FAILURES = 10
ADMIN_SIGN_IN_WINDOW_SECONDS = 300
