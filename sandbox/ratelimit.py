"""Per-key, per-class sliding-window rate limiting, as the sandbox enforces it (oliai-api.md #1-#5).

Every request is recorded, admitted or not, so a client that keeps hammering a full window keeps
pushing its own admission back, which is what a careful client must be able to survive.
"""

from __future__ import annotations

import math
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable


class SlidingWindowLimiter:
    """Sliding windows of request timestamps, one per (key, class), behind one lock."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._lock = threading.Lock()
        self._windows: defaultdict[tuple[str, str], deque[float]] = defaultdict(deque)

    def hit(self, key: str, limits: dict[str, int], window: float) -> float | None:
        """Record one request against every class in ``limits``.

        Returns None when every class admits it, otherwise the seconds until a request would be
        admitted by all of them.
        """
        with self._lock:
            now = self._clock()
            wait = 0.0
            refused = False
            for rate_class, limit in limits.items():
                stamps = self._windows[(key, rate_class)]
                while stamps and stamps[0] <= now - window:
                    stamps.popleft()
                admitted = len(stamps) < limit
                stamps.append(now)
                if not admitted:
                    refused = True
                    # The count drops below the limit once this many of the oldest stamps
                    # (the refused request included) have left the window.
                    wait = max(wait, stamps[len(stamps) - limit] + window - now)
            return wait if refused else None

    def reset(self) -> None:
        with self._lock:
            self._windows.clear()


def retry_after_header(wait: float) -> str:
    """Whole seconds, rounded up, at least 1 (#3): never invite a retry that would be refused."""
    return str(max(1, math.ceil(wait)))
