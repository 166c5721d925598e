"""Secrets taken out of what the bridge stores and shows: lead fields, raw requests, the error
text a provider's API answers with (an API may echo the token it was sent)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any
from urllib.parse import quote, quote_plus

REDACTED = "[redacted]"

#: Secrets shorter than this are not searched for in lead data: they would match ordinary text,
#: and the lead is delivered with what is left. Error text passes ``min_chars=1``: there a
#: mangled word costs nothing.
MIN_REDACTED_CHARS = 6


def redact(value: Any, secrets: Iterable[str], *, min_chars: int = MIN_REDACTED_CHARS) -> Any:
    """``value`` with every secret, and its URL-encoded forms, replaced by ``[redacted]``.

    Strings and bytes are searched; dicts (keys and values) and lists at any depth; anything
    else is returned as it is. Secrets shorter than ``min_chars`` are left alone.
    """
    forms = {
        form
        for secret in secrets
        if secret and len(secret) >= min_chars
        for form in (secret, quote(secret, safe=""), quote_plus(secret))
    }
    if not forms:
        return value
    # Longest first: a secret that contains another is replaced whole.
    return _replace(value, sorted(forms, key=len, reverse=True))


def _replace(value: Any, forms: list[str]) -> Any:
    if isinstance(value, str):
        for form in forms:
            value = value.replace(form, REDACTED)
        return value
    if isinstance(value, bytes):
        for form in forms:
            value = value.replace(form.encode(), REDACTED.encode())
        return value
    if isinstance(value, dict):
        return {_replace(k, forms): _replace(v, forms) for k, v in value.items()}
    if isinstance(value, list):
        return [_replace(v, forms) for v in value]
    return value
