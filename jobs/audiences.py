"""Which OliAI audience a route's contacts join: by id, or by name — found or created once.

The name → id answer is cached in Redis for every worker. Creation happens under a Redis lock,
and a retry first looks the name up again, so a crash or a lost answer after the create never
makes a second audience.
"""

from __future__ import annotations

import hashlib
import logging
import secrets

from redis import Redis

from bridge import keys
from bridge.exceptions import Deferred
from bridge.settings import Route

log = logging.getLogger(__name__)

LOCK_MS = 30_000
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def name_hash(name: str) -> str:
    """Audience names are free text: keys carry a short hash of them."""
    return hashlib.sha256(name.encode()).hexdigest()[:16]


def resolve_audience(client, redis: Redis, route: Route, key_id: str) -> str:
    """The audience id for ``route`` (raises API errors, or ``Deferred`` while locked)."""
    if route.audience_id:
        return route.audience_id
    name = route.audience_name or ""
    key = keys.audience(key_id, name_hash(name))
    cached = redis.get(key)
    if cached:
        return cached.decode()
    token = secrets.token_hex(8)
    lock = keys.audience_lock(key_id, name_hash(name))
    if not redis.set(lock, token, nx=True, px=LOCK_MS):
        raise Deferred(1.0, f"another worker is resolving audience {name!r}")
    try:
        found = client.find_audiences_by_name(name)
        if found:
            if len(found) > 1:
                log.warning(
                    "%d audiences are named %r: using the oldest, %s",
                    len(found),
                    name,
                    found[0]["id"],
                )
            audience_id = found[0]["id"]
        else:
            created = client.create_audience(
                name, description=f"Leads from oliai-bridge route {route.name}"
            )
            audience_id = created["id"]
            log.info("created audience %r (%s) for route %s", name, audience_id, route.name)
        redis.set(key, audience_id)
        return audience_id
    finally:
        redis.eval(RELEASE, 1, lock, token)


def forget_audience(redis: Redis, route: Route, key_id: str) -> None:
    if route.audience_name:
        redis.delete(keys.audience(key_id, name_hash(route.audience_name)))
