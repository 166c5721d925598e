"""oliai-bridge: webhooks in, OliAI contacts out (web side: receive, verify, map, enqueue)."""

__version__ = "0.1.0"
