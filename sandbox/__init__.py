"""OliAI sandbox: an in-memory, thread-safe simulator of the OliAI Public API over real HTTP.

A separate program (``python -m sandbox`` or ``oliai-bridge sandbox``) that behaves as
``shared/oliai-api.md`` documents, including its rate limits, 401 messages and 409s, and picks
one defined behaviour wherever the docs are silent (see ``docs/sandbox.md``). Modules:
``options`` (every setting), ``state`` (the store and the API's rules, IO-free), ``ratelimit``
(sliding windows), ``server`` (the Flask app and the threaded HTTP server), ``cli``.
"""

# Deterministic so that a developer can paste it from the docs; it is a sandbox-only key.
DEMO_KEY = "sk_live_" + "sandbox".ljust(32, "0")

__all__ = ["DEMO_KEY"]
