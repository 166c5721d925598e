"""The source adapters, by the ``source`` name a route uses.

Adding a source is one module here (defining ``SOURCE``), one page in ``docs/sources/`` and one
test module in ``tests/sources/``; then its name in ``SOURCE_NAMES``.
"""

from __future__ import annotations

import importlib
import importlib.util
from functools import cache

from bridge.sources.base import Source

SOURCE_NAMES = (
    "generic",
    "typeform",
    "tally",
    "jotform",
    "google_forms",
    "zapier",
    "hubspot",
    "pipedrive",
    "zoho_crm",
    "salesforce",
    "meta_lead_ads",
    "calendly",
    "indiamart",
    "leadsquared",
    "freshsales",
    "webflow",
    "wordpress",
    "shopify",
    "standard_webhooks",
)


@cache
def source_names() -> tuple[str, ...]:
    """The sources this installation has a module for."""
    return tuple(
        name for name in SOURCE_NAMES if importlib.util.find_spec(f"bridge.sources.{name}")
    )


@cache
def get_source(name: str) -> Source:
    if name not in source_names():
        raise KeyError(f"unknown source {name!r}")
    return importlib.import_module(f"bridge.sources.{name}").SOURCE
