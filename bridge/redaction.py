"""Secrets taken out of what the bridge stores and shows: lead fields, raw requests, the error
text a provider's API answers with (an API may echo the token it was sent)."""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache
from typing import Any, NamedTuple
from urllib.parse import quote, quote_plus

REDACTED = "[redacted]"
REDACTED_BYTES = REDACTED.encode()

#: Secrets shorter than this are not searched for in lead data: they would match ordinary text,
#: and the lead is delivered with what is left. Error text passes ``min_chars=1``: there a
#: mangled word costs nothing.
MIN_REDACTED_CHARS = 6


def redact(value: Any, secrets: Iterable[str], *, min_chars: int = MIN_REDACTED_CHARS) -> Any:
    """``value`` with every secret, and its URL-encoded forms, replaced by ``[redacted]``.

    Strings and bytes are searched; dicts (keys and values) and lists at any depth; anything
    else is returned as it is. Secrets shorter than ``min_chars`` are left alone.
    """
    forms = _forms(tuple(secrets), min_chars)
    if not forms:
        return value
    return _replace(value, forms)


@lru_cache(maxsize=64)
def _forms(secrets: tuple[str, ...], min_chars: int) -> _Forms | None:
    """What to search for, worked out once per set of secrets (a process has a few: the
    settings' and each route's)."""
    found = {
        form
        for secret in secrets
        if secret and len(secret) >= min_chars
        for form in (secret, quote(secret, safe=""), quote_plus(secret))
    }
    if not found:
        return None
    # Longest first: a secret that contains another is replaced whole.
    text = tuple(sorted(found, key=len, reverse=True))
    return _Forms(text, tuple(form.encode() for form in text))


class _Forms(NamedTuple):
    text: tuple[str, ...]
    raw: tuple[bytes, ...]


def _replace(value: Any, forms: _Forms) -> Any:
    if isinstance(value, str):
        for form in forms.text:
            value = value.replace(form, REDACTED)
        return value
    if isinstance(value, dict):
        return {_replace(k, forms): _replace(v, forms) for k, v in value.items()}
    if isinstance(value, list):
        return [_replace(v, forms) for v in value]
    if isinstance(value, bytes):
        for form in forms.raw:
            value = value.replace(form, REDACTED_BYTES)
        return value
    return value
