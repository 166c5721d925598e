"""Redis as production has it: TLS (``rediss://``) with the certificate options managed Redis
needs, a policy that could evict leads said out loud, and a full Redis answered with 503."""

import io
import json
import logging
import os
import socket
import ssl
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import requests
from redis import Redis
from redis.connection import SSLConnection
from redis.exceptions import ConnectionError as RedisConnectionError

from bridge import keys, logs
from bridge.app import create_app
from bridge.config import build_settings
from bridge.exceptions import ConfigError
from bridge.storage import (
    EmbeddedRedis,
    connect_for,
    eviction_warning,
    free_port,
    too_old,
    version_problem,
)
from tests.bridge_fixtures import REPO_ROOT, route_dict, write_config

LEAD = {"name": "Priya Sharma", "phone": "098765 43210", "city": "Mumbai"}


def settings_with(env: dict, **sections):
    return build_settings({"routes": [route_dict()], **sections}, env=env)


# --- rediss:// ---------------------------------------------------------------------------------


def test_a_rediss_url_gets_tls_with_the_certificate_options_of_the_settings(tmp_path):
    url = "rediss://:pw@redis.example.com:6380/0"
    default = connect_for(settings_with({"REDIS_URL": url})).connection_pool
    assert default.connection_class is SSLConnection
    assert default.connection_kwargs["ssl_cert_reqs"] == "required"
    bundle = tmp_path / "ca.pem"
    bundle.write_text("-----BEGIN CERTIFICATE-----\n")
    env = {"REDIS_URL": url, "REDIS_SSL_CERT_REQS": "NONE", "REDIS_SSL_CA_CERTS": str(bundle)}
    pool = connect_for(settings_with(env)).connection_pool
    assert pool.connection_kwargs["ssl_cert_reqs"] == "none"
    assert pool.connection_kwargs["ssl_ca_certs"] == str(bundle)
    assert (pool.connection_kwargs["host"], pool.connection_kwargs["port"]) == (
        "redis.example.com",
        6380,
    )
    plain = connect_for(settings_with({"REDIS_URL": "redis://127.0.0.1:6379/0"}))
    assert plain.connection_pool.connection_class is not SSLConnection
    assert "ssl_cert_reqs" not in plain.connection_pool.connection_kwargs


def test_redis_settings_that_cannot_work_are_named():
    with pytest.raises(ConfigError) as exc:
        settings_with(
            {
                "REDIS_URL": "https://redis.example.com",
                "REDIS_SSL_CERT_REQS": "maybe",
                "REDIS_SSL_CA_CERTS": "/nonexistent/ca.pem",
            }
        )
    assert exc.value.problems == [
        "REDIS_URL: must start with redis://, rediss:// (TLS) or unix:// (not 'https')",
        "REDIS_SSL_CERT_REQS: must be one of required, optional, none, not 'maybe'",
        "REDIS_SSL_CA_CERTS: no such file '/nonexistent/ca.pem'",
    ]


@pytest.fixture(scope="module")
def certificate(tmp_path_factory) -> Path:
    """A self-signed certificate for 127.0.0.1, as managed Redis services present."""
    folder = tmp_path_factory.mktemp("tls")
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(folder / "key.pem"),
            "-out",
            str(folder / "cert.pem"),
        ],
        check=True,
        capture_output=True,
    )
    return folder


@pytest.fixture
def tls_redis(redis_server, certificate):
    """``rediss://`` in front of the test Redis: a TLS terminator on loopback, as managed
    Redis runs one (the embedded redis-server is built without TLS)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certificate / "cert.pem", certificate / "key.pem")
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    stop = threading.Event()

    def pump(src, dst):
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def serve():
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                raw, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                raw.settimeout(5)
                client = context.wrap_socket(raw, server_side=True)
                client.settimeout(None)
            except (OSError, ssl.SSLError):
                raw.close()  # a client that refused our certificate
                continue
            upstream = socket.create_connection(("127.0.0.1", redis_server.port))
            threading.Thread(target=pump, args=(client, upstream), daemon=True).start()
            threading.Thread(target=pump, args=(upstream, client), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"rediss://127.0.0.1:{port}/0"
    stop.set()
    listener.close()
    thread.join(5)


def test_managed_redis_with_a_self_signed_certificate_needs_cert_reqs_none(tls_redis, certificate):
    verified = connect_for(settings_with({"REDIS_URL": tls_redis}))
    with pytest.raises(RedisConnectionError, match="certificate verify failed"):
        verified.ping()
    trusting = connect_for(settings_with({"REDIS_URL": tls_redis, "REDIS_SSL_CERT_REQS": "none"}))
    assert trusting.ping()
    pinned = connect_for(
        settings_with({"REDIS_URL": tls_redis, "REDIS_SSL_CA_CERTS": str(certificate / "cert.pem")})
    )
    assert pinned.ping()


def test_a_lead_goes_through_tls_redis_from_webhook_to_delivered(
    tls_redis, redis, sandbox, tmp_path
):
    env = {"REDIS_URL": tls_redis, "REDIS_SSL_CERT_REQS": "none"}
    settings = settings_with(env, oliai={"base_url": sandbox.base_url, "api_key": sandbox.keys[0]})
    client = create_app(settings).test_client()  # connects as `oliai-bridge web` does
    r = client.post("/hooks/leads", json=LEAD)
    assert r.status_code == 202
    config = write_config(
        tmp_path / "config.toml",
        {"oliai": {"base_url": sandbox.base_url}, "routes": [route_dict()]},
    )
    worker = subprocess.run(
        [sys.executable, "-m", "bridge", "worker", "--burst"],
        env={
            **os.environ,
            **env,
            "BRIDGE_CONFIG": str(config),
            "OLIAI_API_KEY": sandbox.keys[0],
        },
        cwd=REPO_ROOT,
        capture_output=True,
        timeout=60,
    )
    assert worker.returncode == 0, worker.stderr
    delivered = client.get(f"/deliveries/{r.json['deliveryId']}").json
    assert delivered["status"] == "delivered"
    assert [c["phoneNumber"] for c in sandbox.org_state()["contacts"]] == ["+919876543210"]


def test_the_web_server_reaches_tls_redis_with_ssl_patched_before_it_is_imported(
    make_stack, tls_redis, sandbox
):
    # `python -m bridge web` as shipped (gunicorn, gevent workers) in front of rediss://:
    # ssl patched by gevent only after the fork would leave TLS sockets that block a worker.
    stack = make_stack(
        {"routes": [route_dict()]},
        workers=0,
        env={"REDIS_URL": tls_redis, "REDIS_SSL_CERT_REQS": "none"},
    )
    r = requests.post(stack.hook("leads"), json=LEAD, timeout=10)
    assert r.status_code == 202, r.text
    assert stack.store.get(r.json()["deliveryId"]) is not None  # stored, through the TLS proxy
    web_log = (stack.logs / "web.log").read_text()
    assert "Booting worker" in web_log
    assert "MonkeyPatchWarning" not in web_log and "Monkey-patching" not in web_log


# --- a Redis that may evict leads ---------------------------------------------------------


def test_only_noeviction_keeps_every_lead(redis, evicting_redis):
    warning = eviction_warning(redis)
    assert warning.startswith("Redis maxmemory-policy is allkeys-lru:")
    assert "noeviction" in warning
    for policy in ("volatile-lru", "allkeys-random", "volatile-ttl"):
        redis.config_set("maxmemory-policy", policy)
        assert policy in eviction_warning(redis)
    redis.config_set("maxmemory-policy", "noeviction")
    assert eviction_warning(redis) is None


def test_check_config_and_the_worker_warn_when_redis_may_evict(cli, evicting_redis):
    check = cli({"routes": [route_dict()]}, "check-config")
    assert check.returncode == 0, check.stdout + check.stderr
    assert "warning: WARNING: Redis maxmemory-policy is allkeys-lru" in check.stdout
    worker = cli({"routes": [route_dict()]}, "worker", "--burst")
    assert worker.returncode == 0, worker.stderr
    lines = [json.loads(line) for line in worker.stderr.splitlines()]
    [warning] = [x for x in lines if x["event"] == "redis.eviction_policy"]
    assert warning["level"] == "warning" and "allkeys-lru" in warning["message"]


# --- a Redis too old for the bridge --------------------------------------------------------


@pytest.fixture
def old_redis_url():
    """A server on a real socket that answers as Redis 6.0.16 would to what start-up asks
    (HELLO, PING, INFO; anything else is refused); no Redis that old is at hand."""
    server = socket.create_server(("127.0.0.1", 0))
    info = "# Server\r\nredis_version:6.0.16\r\n# Memory\r\nmaxmemory_policy:noeviction\r\n"

    def answer(conn: socket.socket) -> None:
        with conn, conn.makefile("rb") as reader:
            while line := reader.readline():
                if not line.startswith(b"*"):
                    continue
                args = []
                for _ in range(int(line[1:])):
                    size = int(reader.readline()[1:])
                    args.append(reader.read(size + 2)[:-2].decode().upper())
                if args[0] == "HELLO":
                    resp3 = len(args) > 1 and args[1] == "3"  # a map then, else a flat list
                    pairs = ["server", "redis", "version", "6.0.16", "proto", 3 if resp3 else 2]
                    pairs += ["id", 1, "mode", "standalone", "role", "master", "modules", []]
                    out = b"%%%d\r\n" % (len(pairs) // 2) if resp3 else b"*%d\r\n" % len(pairs)
                    for item in pairs:
                        if isinstance(item, int):
                            out += b":%d\r\n" % item
                        elif isinstance(item, list):
                            out += b"*0\r\n"
                        else:
                            out += b"$%d\r\n%s\r\n" % (len(item), item.encode())
                    conn.sendall(out)
                elif args[0] == "PING":
                    conn.sendall(b"+PONG\r\n")
                elif args[0] == "INFO":
                    conn.sendall(b"$%d\r\n%s\r\n" % (len(info), info.encode()))
                else:
                    conn.sendall(b"-ERR unknown command '%s'\r\n" % args[0].encode())

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            threading.Thread(target=answer, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    yield f"redis://127.0.0.1:{server.getsockname()[1]}/0"
    server.close()


def test_a_redis_older_than_6_2_stops_the_worker_and_check_config_says_why(cli, old_redis_url):
    assert too_old("6.0.16").startswith("Redis 6.0.16 is too old: the bridge needs Redis 6.2")
    assert too_old("6.2.0") is None and too_old("7.4.1") is None and too_old("8.0.2") is None
    assert version_problem(Redis.from_url(old_redis_url)) == too_old("6.0.16")
    env = {"REDIS_URL": old_redis_url}
    worker = cli({"routes": [route_dict()]}, "worker", "--burst", env=env)
    assert worker.returncode != 0
    assert "oliai-bridge: Redis 6.0.16 is too old" in worker.stderr
    check = cli({"routes": [route_dict()]}, "check-config", env=env)
    assert "WARNING: Redis 6.0.16 is too old" in check.stdout


def test_check_config_is_quiet_about_a_redis_that_keeps_everything(cli, redis):
    check = cli({"routes": [route_dict()]}, "check-config")
    assert check.returncode == 0
    assert check.stdout.startswith("OK: ")
    assert "maxmemory" not in check.stdout


# --- a full Redis ----------------------------------------------------------------------------


@pytest.fixture
def small_redis(tmp_path):
    """A Redis of its own with 4 MiB of memory and no eviction, as a full production one."""
    server = EmbeddedRedis(tmp_path / "small", port=free_port(), fsync="no")
    server.start()
    client = Redis.from_url(server.url)
    client.config_set("maxmemory", 4 * 1024 * 1024)
    client.config_set("maxmemory-policy", "noeviction")
    yield client
    client.close()
    server.stop()


def fill(redis: Redis) -> int:
    """Write until Redis refuses even a tiny write; returns how many keys it took."""
    written = 0
    for size in (100_000, 10_000, 1_000, 100, 10, 1):
        try:
            while True:
                redis.set(f"fill:{written}", "x" * size)
                written += 1
        except Exception as exc:  # noqa: BLE001 - the OOM answer, checked below
            assert "OOM" in str(exc) or "maxmemory" in str(exc), exc
    return written


def test_a_full_redis_answers_503_never_a_2xx_and_says_why(small_redis, make_settings):
    settings = make_settings()
    client = create_app(settings, redis=small_redis).test_client()
    assert client.post("/hooks/leads", json=LEAD).status_code == 202
    fill(small_redis)
    received = small_redis.xlen(keys.RECEIVED_STREAM)

    stream = io.StringIO()
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    logs.setup("INFO", "json", stream)
    try:
        late = {**LEAD, "phone": "098765 43299"}
        r = client.post("/hooks/leads", json=late)
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        logging.captureWarnings(False)
        sys.excepthook = sys.__excepthook__
    assert r.status_code == 503
    assert int(r.headers["Retry-After"]) > 0
    assert r.json["error"] == "storage_unavailable"
    assert small_redis.xlen(keys.RECEIVED_STREAM) == received  # nothing half-stored
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    [why] = [x for x in lines if x["event"] == "webhook.not_stored"]
    assert "Redis is full" in why["message"] and why["level"] == "error"

    metrics = client.get("/metrics").get_data(as_text=True)
    assert "oliai_bridge_redis_maxmemory_bytes 4.194304e+06" in metrics

    # once room is made, the sender's retry is stored: the refused one was not half-claimed
    small_redis.delete(*[k for k in small_redis.scan_iter("fill:*")])
    again = client.post("/hooks/leads", json=late)
    assert again.status_code == 202 and again.json["status"] == "queued"
