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

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from redis import Redis
from redis.client import Pipeline

from bridge import keys

# ARGV: dedup ttl, delivery key prefix, then
#   requests: count, then per request: body key ('' when the body is not claimed), lead count,
#             and per lead its dedup key and delivery id;
#   groups:   count, then per group: how many leads it belongs to, their numbers (1-based, in
#             order over all requests), how many commands, and per command argc then the args;
#   wanted:   count, then the numbers (1-based, over all commands) whose replies come back.
# A lead whose key names its own stored delivery was admitted by an earlier run of this very
# call (redis-py retries a command whose answer a dropped connection lost): it is answered as
# admitted and writes nothing again. A lead wins its key unless the key names another delivery
# that is stored, or is won earlier in this call (then the lead is that one's duplicate); a key
# whose first delivery was claimed but never stored (written before claims and stores went
# together) is taken over. A request whose body hash names a stored delivery is that one's
# duplicate, and gives back the keys its leads won. Returns {first delivery id per lead, the
# wanted replies (false: not run)}. Keys are built from ARGV: the bridge runs on one Redis,
# never a cluster.
ADMIT = """
local ttl, prefix = ARGV[1], ARGV[2]
local at = 3
local function take()
  local value = ARGV[at]
  at = at + 1
  return value
end
local function stored(id, won)
  return id and (won[id] or redis.call('EXISTS', prefix .. id) == 1)
end
local firsts, ids, dkeys, won, done = {}, {}, {}, {}, {}
for _ = 1, tonumber(take()) do
  local body = take()
  local mine = {}
  for _ = 1, tonumber(take()) do
    local dkey, id = take(), take()
    table.insert(dkeys, dkey)
    table.insert(ids, id)
    local n = #ids
    table.insert(mine, n)
    firsts[n] = id
    if not redis.call('SET', dkey, id, 'NX', 'EX', ttl) then
      local first = redis.call('GET', dkey)
      if first == id and stored(first, won) then
        done[n] = true  -- this call ran before (a client's retry after a lost answer)
      elseif stored(first, won) then
        firsts[n] = first
      else
        redis.call('SET', dkey, id, 'EX', ttl)
      end
    end
    if firsts[n] == id and not done[n] then won[id] = true end
  end
  local fresh = nil
  for _, n in ipairs(mine) do
    if firsts[n] == ids[n] and not done[n] then fresh = fresh or ids[n] end
  end
  if body ~= '' and fresh and not redis.call('SET', body, fresh, 'NX', 'EX', ttl) then
    local earlier = redis.call('GET', body)
    if stored(earlier, won) then
      for _, n in ipairs(mine) do
        if firsts[n] == ids[n] then
          redis.call('DEL', dkeys[n])
          won[ids[n]] = nil
        end
        firsts[n] = earlier
      end
    else
      redis.call('SET', body, fresh, 'EX', ttl)
    end
  end
end
local replies = {}
local command = 0
for _ = 1, tonumber(take()) do
  local run = false
  for _ = 1, tonumber(take()) do
    local n = tonumber(take())
    if firsts[n] == ids[n] and not done[n] then run = true end
  end
  for _ = 1, tonumber(take()) do
    command = command + 1
    local argc = tonumber(take())
    if run then
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


class Admission:
    """The leads of one or more requests, their claims and the commands that store them,
    collected and then admitted in one round trip (``run``).

    ``pipe`` is a redis-py pipeline that is never executed: the store's methods queue on it as
    on any other, and ``for_leads`` files what they queued under the leads it is for.
    """

    def __init__(self, redis: Redis, script: Any, dedup_ttl: int):
        self.redis = redis
        self.script = script
        self.dedup_ttl = dedup_ttl
        self.pipe: Pipeline = redis.pipeline(transaction=False)
        self._requests: list[tuple[str, list[tuple[str, str]]]] = []
        self._groups: list[tuple[list[int], int, int]] = []
        self._leads = 0

    @staticmethod
    def register(redis: Redis) -> Any:
        """The ``ADMIT`` script for ``redis`` (loaded once, then run by its SHA1)."""
        return redis.register_script(ADMIT)

    def request(self, body_key: str, claims: Sequence[tuple[str, str]]) -> list[int]:
        """A request's leads, each a (dedup key, delivery id); ``body_key`` ('' for none) is
        claimed too. Returns the leads' numbers, for ``for_leads``."""
        self._requests.append((body_key, list(claims)))
        first = self._leads
        self._leads += len(claims)
        return list(range(first, self._leads))

    @contextmanager
    def for_leads(self, leads: Sequence[int]) -> Iterator[Pipeline]:
        """Commands queued on the pipeline inside run when at least one of ``leads`` won."""
        start = len(self.pipe.command_stack)
        yield self.pipe
        end = len(self.pipe.command_stack)
        if end > start:
            self._groups.append((list(leads), start, end))

    def run(self, wanted: Sequence[int] = ()) -> tuple[list[str], list[Any]]:
        """Claim and store. Returns the first delivery id of each lead (its own when it won)
        and the replies of the commands at ``wanted`` (positions in the pipeline), as a list
        as long as the pipeline with ``None`` elsewhere and for commands that did not run."""
        stack = self.pipe.command_stack
        if sum(end - start for _, start, end in self._groups) != len(stack):
            raise RuntimeError("a command was queued outside for_leads: it would not be written")
        args: list[Any] = [self.dedup_ttl, keys.delivery(""), len(self._requests)]
        for body_key, claims in self._requests:
            args += [body_key, len(claims)]
            for claim in claims:
                args += claim
        args.append(len(self._groups))
        for leads, start, end in self._groups:
            args.append(len(leads))
            args += [n + 1 for n in leads]
            args.append(end - start)
            for command, _options in stack[start:end]:
                args.append(len(command))
                args += command
        args.append(len(wanted))
        args += [i + 1 for i in wanted]
        firsts, replies = self.script(args=args, client=self.redis)
        results: list[Any] = [None] * len(stack)
        callbacks = self.redis.response_callbacks
        for i, reply in zip(wanted, replies, strict=True):
            command, options = stack[i]
            parse = callbacks.get(str(command[0]).upper())
            results[i] = parse(reply, **options) if parse and reply is not None else reply
        return [f.decode() if isinstance(f, bytes) else f for f in firsts], results
