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
    else is returned as it is. Secrets shorter than ``min_chars`` are left alone. A dict or list
    that holds none is returned itself, not a copy.
    """
    forms = _forms(tuple(secrets), min_chars)
    if not forms:
        return value
    if isinstance(value, (dict, list)) and not _may_hold(value, forms):
        return value  # the usual lead: nothing to replace, no copy to make
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


def _may_hold(value: dict | list, forms: _Forms) -> bool:
    """Whether a form may be in ``value``: its text (keys too, at any depth) joined and searched
    once, which costs a lead that holds no secret (almost every one) less than the copy
    ``_replace`` makes. True also for what only ``_replace`` reads: bytes, keys that are not
    text."""
    texts: list[str] = []
    if not _gather(value, texts):
        return True
    try:
        joined = "\n".join(texts)
    except TypeError:  # a key that is not text
        return True
    return any(form in joined for form in forms.text)


def _gather(value: dict | list, texts: list[str]) -> bool:
    """``value``'s text appended to ``texts``; False at the first bytes."""
    if isinstance(value, dict):
        texts += value  # its keys
        value = value.values()
    for item in value:
        if isinstance(item, str):
            texts.append(item)
        elif isinstance(item, (dict, list)):
            if not _gather(item, texts):
                return False
        elif isinstance(item, bytes):
            return False
    return True


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
