"""Group commit (``bridge.commit``): requests that reach Redis while a call is in flight go
together in the next one, each with its own answer; an idle process sends each alone at once."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from bridge.commit import GroupCommit


class Store:
    """A store that answers ``item * 10`` for each item and, when ``hold`` is set, keeps its
    first call in flight until released: the calls it got are in ``calls``."""

    def __init__(self, hold: bool = False, fail: set[int] | None = None):
        self.calls: list[list[int]] = []
        self.entered = threading.Event()
        self.release = threading.Event()
        if not hold:
            self.release.set()
        self.fail = fail or set()

    def __call__(self, items: list[int]) -> list[int]:
        self.calls.append(list(items))
        self.entered.set()
        self.release.wait(10)
        if self.fail & set(items):
            raise RedisConnectionError("Redis went away")
        return [item * 10 for item in items]


def run_in_threads(commit: GroupCommit, items: list[int]) -> dict[int, object]:
    answers: dict[int, object] = {}

    def one(item: int) -> None:
        try:
            answers[item] = commit(item)
        except Exception as error:  # what a request would see
            answers[item] = error

    threads = [threading.Thread(target=one, args=(item,)) for item in items]
    for thread in threads:
        thread.start()
    return answers, threads


def wait_for(condition, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "never happened"
        time.sleep(0.005)


def test_a_request_alone_goes_at_once_alone():
    store = Store()
    commit = GroupCommit(store)
    assert commit(1) == 10
    assert commit(2) == 20
    assert store.calls == [[1], [2]]


def test_requests_arriving_during_a_call_go_together_in_the_next_each_with_its_answer():
    store = Store(hold=True)
    commit = GroupCommit(store)
    first, threads = run_in_threads(commit, [1])
    assert store.entered.wait(10)
    rest, more = run_in_threads(commit, [2, 3, 4])
    wait_for(lambda: len(commit._line) == 3)  # all three wait while the first is in flight
    store.release.set()
    for thread in threads + more:
        thread.join(10)
    assert store.calls[0] == [1]
    assert sorted(store.calls[1]) == [2, 3, 4] and len(store.calls) == 2
    assert first == {1: 10} and rest == {2: 20, 3: 30, 4: 40}


def test_a_failed_call_fails_its_group_only_and_the_next_goes_on():
    store = Store(hold=True, fail={2})
    commit = GroupCommit(store)
    first, threads = run_in_threads(commit, [1])
    assert store.entered.wait(10)
    failed, more = run_in_threads(commit, [2, 3])
    wait_for(lambda: len(commit._line) == 2)
    store.release.set()
    for thread in threads + more:
        thread.join(10)
    assert first == {1: 10}
    assert all(isinstance(answer, RedisConnectionError) for answer in failed.values())
    assert sorted(failed) == [2, 3]
    assert commit(5) == 50  # nobody is left holding the lead
    assert store.calls[-1] == [5]


def test_a_call_carries_at_most_its_share_and_the_rest_go_next():
    store = Store(hold=True)
    commit = GroupCommit(store, weight=lambda item: item, most=100)
    first, threads = run_in_threads(commit, [1])
    assert store.entered.wait(10)
    waiting = []
    for item in (60, 30, 20, 150):  # in this order
        answers, more = run_in_threads(commit, [item])
        waiting += more
        carried = len(waiting)
        wait_for(lambda: len(commit._line) == carried)  # noqa: B023 (read at once)
    store.release.set()
    for thread in threads + waiting:
        thread.join(10)
    # 60 + 30 fit in 100, 20 starts the next call; a heavy one goes alone
    assert store.calls == [[1], [60, 30], [20], [150]]


@pytest.mark.parametrize("who", ["a waiter", "the next leader"])
def test_a_request_cut_off_while_waiting_leaves_the_line_and_nothing_hangs(who):
    """Under gevent, as the web process runs: a waiting greenlet killed (its connection gone)
    is never carried, and when it had just been told to lead the next call, the one behind it
    leads instead."""
    program = textwrap.dedent(
        f"""
        from gevent import monkey; monkey.patch_all()
        import gevent
        from gevent.event import Event
        from bridge.commit import GroupCommit

        release = Event()
        calls = []

        def store(items):
            calls.append(list(items))
            if len(calls) == 1:
                release.wait()
            return [i * 10 for i in items]

        class Commit(GroupCommit):
            def _pass_lead(self):
                if {who!r} == "the next leader" and self._line and self._line[0].item == 2:
                    second.kill(block=False)  # lands once it has been told to lead
                super()._pass_lead()

        commit = Commit(store)
        first = gevent.spawn(commit, 1)
        gevent.sleep(0.01)
        second = gevent.spawn(commit, 2)
        third = gevent.spawn(commit, 3)
        gevent.sleep(0.01)
        if {who!r} == "a waiter":
            second.kill()
        release.set()
        gevent.joinall([first, second, third], timeout=5)
        print(first.value, second.dead, third.value, calls, commit(4), calls[-1])
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60, check=True
    ).stdout.split("\n")[0]
    # 2 never went; 3 went alone, then 4 (``calls`` is printed once commit(4) has run)
    assert out == "10 True 30 [[1], [3], [4]] 40 [4]"
