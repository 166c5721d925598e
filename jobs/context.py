"""What a worker process needs to run jobs: the settings, Redis, the queue, the delivery store
and one OliAI client per API key (each with the shared rate limiter). Built once per process by
``oliai-bridge worker`` (``configure``); RQ calls jobs with ids alone and they take it from here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import requests
from redis import Redis
from rq import Queue

from bridge import defaults, metrics
from bridge.deliveries import DeliveryStore
from bridge.queue import make_queue
from bridge.settings import Settings
from jobs.oliai import OliAIClient
from jobs.ratelimit import RateLimiter, key_id


@dataclass
class Context:
    """What a worker process needs to deliver: built once per process."""

    settings: Settings
    redis: Redis
    queue: Queue = None  # type: ignore[assignment]
    store: DeliveryStore = None  # type: ignore[assignment]
    http: requests.Session = field(default_factory=requests.Session)
    clients: dict[tuple[str, str], OliAIClient] = field(default_factory=dict)

    def __post_init__(self):
        if self.queue is None:
            self.queue = make_queue(self.redis, self.settings.queue_name)
        if self.store is None:
            self.store = DeliveryStore.for_settings(self.redis, self.settings)

    def client_for(self, api_key: str) -> OliAIClient:
        base_url = self.settings.oliai.base_url
        cached = self.clients.get((base_url, api_key))
        if cached is None:
            o = self.settings.oliai
            limiter = RateLimiter(
                self.redis,
                api_key,
                window_seconds=o.rate_window_seconds,
                general_per_window=o.general_per_minute,
                bulk_per_window=o.bulk_per_minute,
            )
            cached = OliAIClient(
                base_url,
                api_key,
                limiter=limiter,
                timeout=(defaults.OLIAI_CONNECT_TIMEOUT_SECONDS, o.timeout_seconds),
                on_answer=metrics.oliai_answers(self.redis, key_id(api_key)),
            )
            self.clients[(base_url, api_key)] = cached
        return cached


#: The worker's context: ``oliai-bridge worker`` (``jobs.worker``) sets it once at start with
#: the settings it loaded; RQ calls ``deliver`` with the delivery id alone.
_context: Context | None = None


def configure(settings: Settings, redis: Redis) -> Context:
    """Called once by the worker at start (and by tests) with the settings to deliver with."""
    global _context
    _context = Context(settings=settings, redis=redis)
    return _context


def context() -> Context:
    if _context is None:
        raise RuntimeError("deliveries run in `oliai-bridge worker`, which configures them")
    return _context
