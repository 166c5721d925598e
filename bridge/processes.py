"""Child processes of a supervisor: ``oliai-bridge dev``, the benchmark and the e2e test stack.

Each child runs in a session (so a process group) of its own and gets SIGTERM when the process
that started it dies. A terminal's Ctrl-C therefore reaches only the supervisor, which stops its
children one group at a time in reverse start order (web and workers before the Redis they
use): SIGTERM to the child, its own stop path, then SIGKILL to whatever is left of its group.
``write_toml`` writes the config file the children read.
"""

from __future__ import annotations

import functools
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import requests
import tomli_w

#: Time a child gets to stop on SIGTERM before its group is SIGKILLed: more than an idle RQ
#: worker's warm shutdown or gunicorn's stop of idle workers take, far less than a job timeout.
STOP_TIMEOUT = 10.0

#: Time a child gets to come up (listen, answer its readiness URL, print its start line).
START_TIMEOUT = 30.0

POLL_SECONDS = 0.1


class StartFailed(RuntimeError):
    """A child exited, or did not get ready in time, while being started."""


def die_with_parent(parent_pid: int | None = None) -> None:
    """In the child: get SIGTERM when the parent dies (Linux ``PR_SET_PDEATHSIG``).

    Strictly, when the parent *thread* ends: start children from the main thread.
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        return
    if parent_pid is not None and os.getppid() != parent_pid:
        os.kill(os.getpid(), signal.SIGTERM)  # the parent died before prctl took effect


def start_process(argv: Sequence[str], **popen: Any) -> subprocess.Popen:
    """``argv`` in a session of its own that dies with this process; ``popen`` as for Popen.

    Standard input is /dev/null unless given: a child never competes for the terminal.
    """
    popen.setdefault("stdin", subprocess.DEVNULL)
    return subprocess.Popen(
        list(argv),
        start_new_session=True,
        preexec_fn=functools.partial(die_with_parent, os.getpid()),
        **popen,
    )


def start_python(args: Sequence[str], **popen: Any) -> subprocess.Popen:
    """``python *args`` with this interpreter (no virtualenv on ``PATH`` needed)."""
    return start_process([sys.executable, *args], **popen)


def stop_group(proc: subprocess.Popen, timeout: float = STOP_TIMEOUT) -> int | None:
    """SIGTERM ``proc``, wait up to ``timeout``, then SIGKILL whatever is left of its group.

    The SIGTERM goes to the child alone so it stops the way it was written to (gunicorn's
    master stops its workers, an RQ worker its scheduler); the SIGKILL goes to the group so
    nothing it started outlives it. Returns the exit status, None if it would not die.
    """
    if proc.poll() is None:
        try:
            proc.terminate()
        except ProcessLookupError:
            pass
    return _reap_group(proc, time.monotonic() + timeout)


def _reap_group(proc: subprocess.Popen, deadline: float) -> int | None:
    try:
        proc.wait(max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass  # the group is empty already
    try:
        return proc.wait(5)
    except subprocess.TimeoutExpired:
        return None


class Children:
    """The child processes of one supervisor, by name, in start order.

    With ``logdir`` each child's stdout and stderr go to ``<logdir>/<name>.log``; without it
    they are this process's own.
    """

    def __init__(
        self,
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        logdir: Path | None = None,
    ):
        self.env = env
        self.cwd = cwd
        self.logdir = logdir
        self.procs: dict[str, subprocess.Popen] = {}

    def __getitem__(self, name: str) -> subprocess.Popen:
        return self.procs[name]

    def __contains__(self, name: str) -> bool:
        return name in self.procs

    def spawn(
        self,
        name: str,
        *args: str,
        env: Mapping[str, str] | None = None,
        pipe_stdout: bool = False,
    ) -> subprocess.Popen:
        """Start ``python *args`` as ``name``; with ``pipe_stdout`` its stdout is a text pipe."""
        if name in self.procs:
            if self.procs[name].poll() is None:
                raise ValueError(f"a child named {name!r} is running already")
            self.stop(name)  # reap what is left of the one that exited
        env = env if env is not None else self.env if self.env is not None else os.environ
        # Unbuffered: a child's lines reach its log (or the pipe read for "ready") as they are
        # written, stdout and stderr in the order written, and none is lost if it is killed.
        popen: dict[str, Any] = {"env": {**env, "PYTHONUNBUFFERED": "1"}, "cwd": self.cwd}
        if pipe_stdout:
            popen.update(stdout=subprocess.PIPE, text=True)
        log = None
        if self.logdir is not None:
            log = open(self.logdir / f"{name}.log", "ab")  # noqa: SIM115 - closed below
            popen.setdefault("stdout", log)
            popen["stderr"] = log
        try:
            proc = start_python(args, **popen)
        finally:
            if log is not None:
                log.close()  # the child has its own copy
        self.procs[name] = proc
        return proc

    def exited(self) -> tuple[str, int] | None:
        """The first child that is no longer running, as (name, exit status)."""
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                return name, proc.returncode
        return None

    def stop(self, *names: str, timeout: float = STOP_TIMEOUT) -> None:
        """Stop these children together: SIGTERM to each, then one shared deadline."""
        procs = [self.procs.pop(n) for n in names if n in self.procs]
        for proc in procs:
            if proc.poll() is None:
                try:
                    proc.terminate()
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + timeout
        for proc in procs:
            _reap_group(proc, deadline)
            if proc.stdout is not None:
                proc.stdout.close()

    def stop_all(self, timeout: float = STOP_TIMEOUT) -> None:
        """Stop every child, one at a time, the last started first. Safe to call at any time."""
        for name in reversed(list(self.procs)):
            self.stop(name, timeout=timeout)


# --- waiting for a child to get ready --------------------------------------------------------


def wait_until(
    ready: Callable[[], bool],
    what: str,
    *,
    timeout: float = START_TIMEOUT,
    watch: Children | Mapping[str, subprocess.Popen] | None = None,
) -> None:
    """Poll ``ready()`` until true; StartFailed when a watched child exits or time runs out."""
    procs = watch.procs if isinstance(watch, Children) else (watch or {})
    deadline = time.monotonic() + timeout
    while True:
        for name, proc in procs.items():
            if proc.poll() is not None:
                raise StartFailed(f"{name} exited with {proc.returncode} while waiting for {what}")
        if ready():
            return
        if time.monotonic() > deadline:
            raise StartFailed(f"{what}: not ready after {timeout:g} s")
        time.sleep(POLL_SECONDS)


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def url_ok(url: str) -> bool:
    """True when a GET of ``url`` answers 200 (a readiness URL)."""
    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.RequestException:  # not listening yet, or still booting
        return False


def wait_for_port(port: int, host: str = "127.0.0.1", **kw: Any) -> None:
    wait_until(lambda: port_open(port, host), f"a listener on {host}:{port}", **kw)


def wait_for_url(url: str, **kw: Any) -> None:
    wait_until(lambda: url_ok(url), f"200 from {url}", **kw)


def wait_for_line(
    proc: subprocess.Popen,
    pattern: str,
    *,
    timeout: float = START_TIMEOUT,
    echo: IO[str] | None = None,
) -> re.Match:
    """Read the child's stdout (a text pipe) until a line matches ``pattern``.

    A daemon thread goes on draining the pipe afterwards, into ``echo`` when given, so that a
    full pipe never blocks the child. Lines up to the match are not echoed.
    """
    found: queue.Queue[re.Match | None] = queue.Queue()

    def pump() -> None:
        match = None
        try:
            for line in proc.stdout:
                if match is None:
                    match = re.search(pattern, line)
                    if match is not None:
                        found.put(match)
                elif echo is not None:
                    echo.write(line)
                    echo.flush()
        except (OSError, ValueError):  # the pipe was closed under us: the child is stopping
            pass
        if match is None:
            found.put(None)

    threading.Thread(target=pump, name=f"stdout-{proc.pid}", daemon=True).start()
    try:
        match = found.get(timeout=timeout)
    except queue.Empty:
        raise StartFailed(f"no line matching {pattern!r} after {timeout:g} s") from None
    if match is None:
        raise StartFailed(f"exited with {proc.poll()} before printing {pattern!r}")
    return match


# --- the config file children read -----------------------------------------------------------


def write_toml(path: Path, data: Mapping[str, Any]) -> Path:
    """``data`` as a TOML file: tables for dicts, ``[[name]]`` for lists of dicts."""
    path.write_text(tomli_w.dumps(data), encoding="utf-8")
    return path
