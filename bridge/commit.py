"""Group commit: requests that reach Redis at the same time go in one call.

A web process serves many connections at once (greenlets under gunicorn's gevent worker, threads
elsewhere). While one request's admission is on its way to Redis, others reach the same point:
they wait in line, and when the call in flight returns, the first of them carries every one
waiting in the next call, for all of them. A bridge with one request at a time sends each alone,
at once (nothing waits for company); a busy one makes one round trip, one script run and one
fsync for a group instead of one each.

Every request gets its own answer from the call that carried it, or that call's error. A request
whose wait is cut short (its connection's greenlet killed) leaves the line, and the next one
leads in its place.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

from redis.exceptions import ConnectionError as RedisConnectionError

Item = TypeVar("Item")
Result = TypeVar("Result")

#: What one call may carry, in ``weight`` (a webhook's leads): a script's arguments stay small.
MOST_PER_CALL = 100


class GroupCommit(Generic[Item, Result]):
    """``commit(item)`` → ``store([item, ...])[i]`` for the item, in groups.

    ``store`` takes items in the order they came and returns a result per item, in order; what
    it raises, every item of its group raises. ``weight`` tells how much of ``most`` an item
    takes (one item always goes, however heavy).
    """

    def __init__(
        self,
        store: Callable[[list[Item]], list[Result]],
        weight: Callable[[Item], int] = lambda item: 1,
        most: int = MOST_PER_CALL,
    ):
        self._store = store
        self._weight = weight
        self._most = most
        # Made here, not at import: under gevent these are the patched, greenlet-aware ones.
        self._lock = threading.Lock()
        self._line: list[_Turn[Item, Result]] = []
        self._busy = False  # a call is in flight, or its successor is about to go

    def __call__(self, item: Item) -> Result:
        turn: _Turn[Item, Result] = _Turn(item)
        with self._lock:
            self._line.append(turn)
            if not self._busy:
                self._busy = turn.leads = True
        if not turn.leads:
            try:
                turn.woken.wait()  # until answered, or made the next call's leader
            except BaseException:
                self._leave(turn)
                raise
        if not turn.answered:
            self._lead()
        return turn.outcome()

    def _lead(self) -> None:
        """Carry the line (up to ``most``) in one call, then hand the lead to whoever is next."""
        with self._lock:
            group, taken = [], 0
            for turn in self._line:
                taken += self._weight(turn.item)
                if group and taken > self._most:
                    break
                group.append(turn)
            del self._line[: len(group)]
        try:
            results = self._store([turn.item for turn in group])
            for turn, result in zip(group, results, strict=True):
                turn.result, turn.answered = result, True
        except Exception as error:
            for turn in group:
                turn.error, turn.answered = error, True
        finally:
            with self._lock:
                self._pass_lead()
            for turn in group:
                if not turn.answered:  # the call was cut short: nobody knows what it stored
                    turn.error = RedisConnectionError("the call to Redis was interrupted")
                    turn.answered = True
                turn.woken.set()

    def _pass_lead(self) -> None:
        """(Locked.) The first in line leads the next call; an empty line, nobody."""
        if self._line:
            self._line[0].leads = True
            self._line[0].woken.set()
        else:
            self._busy = False

    def _leave(self, turn: _Turn[Item, Result]) -> None:
        with self._lock:
            if turn in self._line:  # not carried yet: it never will be
                self._line.remove(turn)
                if turn.leads:  # it was to lead the next call: the next in line does
                    self._pass_lead()


class _Turn(Generic[Item, Result]):
    __slots__ = ("item", "leads", "answered", "result", "error", "woken")

    def __init__(self, item: Item):
        self.item = item
        self.leads = False
        self.answered = False
        self.result: Result | None = None
        self.error: Exception | None = None
        self.woken = threading.Event()

    def outcome(self) -> Result:
        if self.error is not None:
            raise self.error
        return self.result  # type: ignore[return-value]
