"""One Redis round trip that admits a request's leads: the dedup claims, then the writes of the
leads that won them, in one Lua script.

What a stored lead writes is decided elsewhere (``DeliveryStore.add``, ``log_on``,
``jobs.lanes.requeue``, ``Kick.arm``, ``metrics.count_on``): they queue commands on a pipeline
as always. An ``Admission`` hands them a pipeline that only records, groups the recorded
commands by the leads they belong to, and ships everything to ``ADMIT``, which claims each
lead's dedup key (and the request's body hash, for ``dedups_body`` sources) and runs a group
only when one of its leads won. Under ``appendfsync always`` every write round trip waits for
an fsync; this makes it one per request instead of two, and the claim and the store can no
longer be torn apart by a crash between them.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import hiredis
from redis import Redis
from redis.client import Pipeline
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from bridge import keys
from bridge.defaults import DEDUP_BUCKET_SECONDS

#: How many times a call whose connection dropped is sent again (redis-py's default too).
SEND_RETRIES = 3

#: Lua shared by ``ADMIT`` and ``CLAIMED``: reads the window's buckets from ARGV and defines
#: ``claim(field, legacy)``, the delivery id a claim names: the newest bucket's field whose claim
#: is within the window (its delivery id tells when it was made: ``dlv_<epoch ms hex><12 hex>``;
#: another id counts for as long as its bucket lives), else the key an earlier version wrote.
#: ARGV: the window's start (epoch ms), the bucket count, the buckets (today's first).
WINDOW = """
local since = tonumber(ARGV[1])
local at = 2
local function take()
  local value = ARGV[at]
  at = at + 1
  return value
end
local buckets = {}
for _ = 1, tonumber(take()) do table.insert(buckets, take()) end
local function lapsed(id)
  local ms = string.match(id, '^dlv_(%x+)%x%x%x%x%x%x%x%x%x%x%x%x$')
  return ms ~= nil and tonumber(ms, 16) <= since
end
local function claim(field, legacy)
  for _, bucket in ipairs(buckets) do
    local id = redis.call('HGET', bucket, field)
    if id and not lapsed(id) then return id end
  end
  return redis.call('GET', legacy) or nil
end
"""

# ARGV: the window (``WINDOW``), when today's bucket expires (epoch seconds), the delivery key
# prefix, then
#   requests: count, then per request: its body claim's field and legacy key ('' '' when the
#             body is not claimed), lead count, and per lead its claim's field and legacy key
#             and its delivery id;
#   groups:   count, then per group: how many leads it belongs to, their numbers (1-based, in
#             order over all requests), whether it is counted ('1': its ``HINCRBY key field
#             by`` commands add ``by`` once per lead of the group that won; '0' or other
#             commands: run once when any of them won), how many commands, and per command
#             argc then the args;
#   wanted:   count, then the numbers (1-based, over all commands) whose replies come back.
# A lead whose claim names its own stored delivery was admitted by an earlier run of this very
# call (redis-py retries a command whose answer a dropped connection lost): it is answered as
# admitted and writes nothing again. A lead wins its claim unless the claim names another
# delivery that is stored, or is won earlier in this call (then the lead is that one's
# duplicate); a claim whose first delivery was never stored (written before claims and stores
# went together) is taken over. A request whose body claim names a stored delivery is that
# one's duplicate, and gives back the claims its leads won. Claims are written to today's bucket
# only (never to a legacy key). Returns {first delivery id per lead, the wanted replies (false:
# not run)}. Keys are built from ARGV: the bridge runs on one Redis, never a cluster.
ADMIT = (
    WINDOW
    + """
local expires, prefix = take(), take()
local today = buckets[1]
local held = false
local function hold(field, id)
  redis.call('HSET', today, field, id)
  held = true
end
local function stored(id, won)
  return id and (won[id] or redis.call('EXISTS', prefix .. id) == 1)
end
local firsts, ids, fields, won, done = {}, {}, {}, {}, {}
for _ = 1, tonumber(take()) do
  local body, body_legacy = take(), take()
  local mine = {}
  for _ = 1, tonumber(take()) do
    local field, legacy, id = take(), take(), take()
    table.insert(fields, field)
    table.insert(ids, id)
    local n = #ids
    table.insert(mine, n)
    firsts[n] = id
    local first = claim(field, legacy)
    if not first then
      hold(field, id)
    elseif first == id and stored(first, won) then
      done[n] = true  -- this call ran before (a client's retry after a lost answer)
    elseif stored(first, won) then
      firsts[n] = first
    else
      hold(field, id)
    end
    if firsts[n] == id and not done[n] then won[id] = true end
  end
  local fresh = nil
  for _, n in ipairs(mine) do
    if firsts[n] == ids[n] and not done[n] then fresh = fresh or ids[n] end
  end
  if body ~= '' and fresh then
    local earlier = claim(body, body_legacy)
    if stored(earlier, won) then
      for _, n in ipairs(mine) do
        if firsts[n] == ids[n] then
          redis.call('HDEL', today, fields[n])
          won[ids[n]] = nil
        end
        firsts[n] = earlier
      end
    else
      hold(body, fresh)
    end
  end
end
if held then redis.call('EXPIREAT', today, expires) end
local replies = {}
local command = 0
for _ = 1, tonumber(take()) do
  local wins = 0
  for _ = 1, tonumber(take()) do
    local n = tonumber(take())
    if firsts[n] == ids[n] and not done[n] then wins = wins + 1 end
  end
  local counted = take() == '1'
  for _ = 1, tonumber(take()) do
    command = command + 1
    local argc = tonumber(take())
    if wins > 0 and counted and ARGV[at] == 'HINCRBY' then
      local by = tonumber(ARGV[at + 3]) * wins
      replies[command] = redis.call('HINCRBY', ARGV[at + 1], ARGV[at + 2], by)
    elseif wins > 0 then
      replies[command] = redis.call(unpack(ARGV, at, at + argc - 1))
    end
    at = at + argc
  end
end
local wanted = {}
for _ = 1, tonumber(take()) do
  local reply = replies[tonumber(take())]
  if reply == nil then reply = false end
  table.insert(wanted, reply)
end
return {firsts, wanted}
"""
)

#: ARGV: the window (``WINDOW``), then per claim its field and legacy key. Returns the delivery
#: id each claim names (false: none). Reads only: the import's dry run.
CLAIMED = (
    WINDOW
    + """
local firsts = {}
while at <= #ARGV do
  local first = claim(take(), take())
  table.insert(firsts, first or false)
end
return firsts
"""
)


@dataclass(frozen=True)
class Claim:
    """What a lead is deduplicated on: an event id of a route (``body:<hash>`` for the body of
    a ``dedups_body`` source)."""

    route: str
    event_id: str

    @property
    def field(self) -> bytes:
        """Its field in a day's bucket: 16 bytes of digest whatever the ids' lengths (a
        collision would make a lead a duplicate of another: at 2**-128 a pair, never)."""
        named = f"{len(self.route)}:{self.route}:{self.event_id}".encode()
        return hashlib.blake2b(named, digest_size=16).digest()

    @property
    def legacy_key(self) -> str:
        """The key an earlier version claimed it with (``keys.dedup``)."""
        return keys.dedup(self.route, self.event_id)


@dataclass(frozen=True)
class Window:
    """The buckets a claim made within ``ttl`` seconds before ``now`` can be in."""

    ttl: int
    now: float

    @property
    def args(self) -> list[Any]:
        """``WINDOW``'s ARGV: its start in epoch ms, the bucket count, the buckets (today's
        first)."""
        today = int(self.now // DEDUP_BUCKET_SECONDS)
        oldest = int((self.now - self.ttl) // DEDUP_BUCKET_SECONDS)
        buckets = [keys.dedup_day(day) for day in range(today, oldest - 1, -1)]
        return [int(self.now * 1000) - self.ttl * 1000, len(buckets), *buckets]

    @property
    def expires(self) -> int:
        """When today's bucket expires (epoch seconds): its last claim's window then ends."""
        return (int(self.now // DEDUP_BUCKET_SECONDS) + 1) * DEDUP_BUCKET_SECONDS + self.ttl


def claimed(redis: Redis, claims: Sequence[Claim], ttl: int) -> list[str | None]:
    """The delivery id each of ``claims`` names now (None: unclaimed), reading only."""
    if not claims:
        return []
    args = Window(ttl, time.time()).args
    for claim in claims:
        args += [claim.field, claim.legacy_key]
    firsts = redis.register_script(CLAIMED)(args=args, client=redis)
    return [first.decode() if first else None for first in firsts]


class Admission:
    """The leads of one or more requests, their claims and the commands that store them,
    collected and then admitted in one round trip (``run``).

    ``pipe`` is a redis-py pipeline that is never executed: the store's methods queue on it as
    on any other, and ``for_leads`` files what they queued under the leads it is for. Requests
    recorded on admissions of their own can be ``merge``d into the one that is ``run``.
    """

    def __init__(self, redis: Redis, script: Any, dedup_ttl: int, connection: Any = None):
        self.redis = redis
        self.script = script
        #: A connection of the caller's own to send on, used by one call at a time (the web
        #: process's ``GroupCommit`` makes one call at a time); None: one of the pool's.
        self.connection = connection
        #: Taken once: a call ``run`` sends again is the very same call (same buckets too).
        self.window = Window(dedup_ttl, time.time())
        self.pipe: Pipeline = redis.pipeline(transaction=False)
        self._requests: list[tuple[Claim | None, list[tuple[Claim, str]]]] = []
        self._groups: list[tuple[list[int], bool, int, int]] = []
        self._leads = 0

    def _evalsha(self, args: list[Any]) -> Any:
        """``self.script`` run with ``args``: the command packed once and sent on
        ``self.connection``, or else on one of the client's pooled connections. redis-py's own
        command path checks and converts each of the 100-odd arguments on the way, which cost
        this process about as much CPU as the rest of storing a lead (``python -m bench.door``).
        As redis-py does, a dropped connection is retried (the script run again is safe: its
        ``done[n]``) and a Redis that lost its scripts is given this one again."""
        packed = [hiredis.pack_command(("EVALSHA", self.script.sha, 0, *args))]
        pool = self.redis.connection_pool
        loaded = failures = 0
        while True:
            conn = self.connection or pool.get_connection()
            try:
                conn.send_packed_command(packed)
                return conn.read_response()
            except NoScriptError:
                if loaded:
                    raise
                loaded += 1
                self.redis.script_load(self.script.script)
            except (RedisConnectionError, RedisTimeoutError):
                conn.disconnect()
                failures += 1
                if failures > SEND_RETRIES:
                    raise
                time.sleep(0.05 * failures)
            except ResponseError:
                raise  # answered: the connection is as good as before
            except BaseException:
                conn.disconnect()  # cut short (its greenlet killed): an answer may be unread
                raise
            finally:
                if self.connection is None:
                    pool.release(conn)

    @staticmethod
    def register(redis: Redis) -> Any:
        """The ``ADMIT`` script for ``redis`` (loaded once, then run by its SHA1)."""
        return redis.register_script(ADMIT)

    def request(self, body: Claim | None, claims: Sequence[tuple[Claim, str]]) -> list[int]:
        """A request's leads, each a (claim, delivery id); ``body`` (None for none) is claimed
        too. Returns the leads' numbers, for ``for_leads``."""
        self._requests.append((body, list(claims)))
        first = self._leads
        self._leads += len(claims)
        return list(range(first, self._leads))

    def merge(self, other: Admission) -> int:
        """``other``'s requests and the commands of its leads (recorded apart, before this call
        was made) added to this call's; returns what its leads' numbers are moved by here (its
        lead n is lead n + offset). ``other`` is spent: it is never run itself."""
        offset, base = self._leads, len(self.pipe.command_stack)
        self._requests += other._requests
        self._leads += other._leads
        self.pipe.command_stack += other.pipe.command_stack
        for leads, counted, start, end in other._groups:
            self._groups.append(([n + offset for n in leads], counted, start + base, end + base))
        return offset

    @contextmanager
    def for_leads(self, leads: Sequence[int], *, counted: bool = False) -> Iterator[Pipeline]:
        """Commands queued on the pipeline inside run once when at least one of ``leads`` won.
        ``counted``: an ``HINCRBY`` among them adds its increment once per lead that won (the
        counters of leads stored together, one command each)."""
        start = len(self.pipe.command_stack)
        yield self.pipe
        end = len(self.pipe.command_stack)
        if end > start:
            self._groups.append((list(leads), counted, start, end))

    def run(self, wanted: Sequence[int] = ()) -> tuple[list[str], list[Any]]:
        """Claim and store. Returns the first delivery id of each lead (its own when it won)
        and the replies of the commands at ``wanted`` (positions in the pipeline), as a list
        as long as the pipeline with ``None`` elsewhere and for commands that did not run."""
        stack = self.pipe.command_stack
        if sum(end - start for *_, start, end in self._groups) != len(stack):
            raise RuntimeError("a command was queued outside for_leads: it would not be written")
        args: list[Any] = self.window.args
        args += [self.window.expires, keys.delivery(""), len(self._requests)]
        for body, claims in self._requests:
            args += [body.field, body.legacy_key] if body else ["", ""]
            args.append(len(claims))
            for claim, delivery_id in claims:
                args += [claim.field, claim.legacy_key, delivery_id]
        args.append(len(self._groups))
        for leads, counted, start, end in self._groups:
            args.append(len(leads))
            args += [n + 1 for n in leads]
            args.append(1 if counted else 0)
            args.append(end - start)
            for command, _options in stack[start:end]:
                args.append(len(command))
                args += command
        args.append(len(wanted))
        args += [i + 1 for i in wanted]
        firsts, replies = self._evalsha(args)
        results: list[Any] = [None] * len(stack)
        callbacks = self.redis.response_callbacks
        for i, reply in zip(wanted, replies, strict=True):
            command, options = stack[i]
            parse = callbacks.get(str(command[0]).upper())
            results[i] = parse(reply, **options) if parse and reply is not None else reply
        return [f.decode() if isinstance(f, bytes) else f for f in firsts], results
