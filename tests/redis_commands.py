"""Counting what a piece of work asked of Redis, from the server's own statistics
(``INFO commandstats``): every client's commands, ours and those of processes we start."""

from __future__ import annotations

from collections import Counter

from redis import Redis


def command_calls(redis: Redis) -> Counter[str]:
    """Calls of each command since the server started (or its stats were reset)."""
    return Counter(
        {
            name.removeprefix("cmdstat_"): int(stats["calls"])
            for name, stats in redis.info("commandstats").items()
        }
    )


class CommandCount:
    """``with CommandCount(redis) as seen: ...`` then ``seen.writes`` (calls of commands Redis
    flags ``write``: SET, INCRBY, HINCRBY, ...), ``seen.calls[name]`` and ``seen.total``.
    The INFO calls that take the counts are left out."""

    def __init__(self, redis: Redis):
        self.redis = redis
        self.calls: Counter[str] = Counter()
        self._write_commands = {
            name for name, info in redis.command().items() if "write" in info.get("flags", ())
        }

    def __enter__(self) -> CommandCount:
        self._before = command_calls(self.redis)
        return self

    def __exit__(self, *exc) -> None:
        after = command_calls(self.redis)
        self.calls = after - self._before
        self.calls["info"] -= 1  # the INFO that took the first snapshot
        self.calls = +self.calls

    @property
    def writes(self) -> int:
        return sum(n for name, n in self.calls.items() if name in self._write_commands)

    @property
    def write_calls(self) -> dict[str, int]:
        return {name: n for name, n in self.calls.items() if name in self._write_commands}

    @property
    def total(self) -> int:
        return sum(self.calls.values())
