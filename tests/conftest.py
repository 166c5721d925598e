"""Shared fixtures: the OliAI sandbox (``sandbox_fixtures``) and the bridge's own parts
(``bridge_fixtures``: real Redis, settings, the Flask app, workers, the e2e stack)."""

pytest_plugins = ["tests.sandbox_fixtures", "tests.bridge_fixtures"]
