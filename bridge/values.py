"""Reading the values senders put in payloads: text, key names, ids, country codes.

Providers send one field as a string in one payload and as a number in the next, pad values
with spaces and repeat labels. These read such values the same way in every adapter and in the
mapper. Pure, and imports nothing of the project.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from functools import lru_cache
from typing import Any

#: Provider record ids (HubSpot contacts, Pipedrive persons) are cut to this length: real ones
#: are short, and a hostile body must not grow the keys built from them.
MAX_ID_CHARS = 100


def text(value: Any) -> str:
    """Any scalar or list as one line of text; ``""`` for None, objects and booleans."""
    if type(value) is str:  # most values: asked first (a mapping reads a dozen per lead)
        return " ".join(value.split())
    if value is None or isinstance(value, (dict, bool)):
        return ""
    if isinstance(value, list):
        parts = (text(v) for v in value)  # once per item: nested lists stay linear
        return " ".join(p for p in parts if p).strip()
    return " ".join(str(value).split())


@lru_cache(maxsize=4096)
def squash(key: str) -> str:
    """The last dotted part of a key in lower-case letters and digits (``Phone_Number`` →
    ``phonenumber``), so guesses match however a form spells its labels. Remembered: a form
    sends the same few labels in every webhook, and the mapper asks once per guess."""
    return _NOT_SQUASHED.sub("", key.rsplit(".", 1)[-1].lower())


_NOT_SQUASHED = re.compile(r"[^a-z0-9]")


def clean_text(value: Any, kinds: tuple[type, ...] = (str, int, float)) -> str | None:
    """``value`` as stripped text when it is one of ``kinds``; None otherwise, or when blank.

    A bool is never text (``isinstance(True, int)`` holds, but ``"True"`` is no name or number).
    ``kinds`` narrows what an adapter accepts: ``(str,)`` where a provider's typed fields are
    strings, ``(str, int)`` where a float would be a value gone wrong (an id that lost digits).
    """
    if isinstance(value, bool) or not isinstance(value, kinds):
        return None
    return str(value).strip() or None


def id_text(value: Any, max_chars: int | None = MAX_ID_CHARS) -> str | None:
    """An id sent as a string or an integer (providers' own samples often send numbers) as text,
    cut to ``max_chars`` (None: whole); None for anything else."""
    found = clean_text(value, (str, int))
    return found if found is None or max_chars is None else found[:max_chars]


def first_text(fields: Mapping[str, Any], keys: Iterable[str]) -> str | None:
    """The text (``clean_text``) of the first of ``keys`` that has some: hint keys, best first."""
    return next((found for key in keys if (found := clean_text(fields.get(key)))), None)


def country_code(value: Any) -> str | None:
    """``value`` when it is an ISO 3166 alpha-2 code (two letters, any case), upper-cased."""
    code = value.strip() if isinstance(value, str) else ""
    return code.upper() if len(code) == 2 and code.isalpha() else None


def first_country(fields: Mapping[str, Any], keys: Iterable[str]) -> str | None:
    """The first of ``keys`` whose value is a country code (``country_code``), upper-cased."""
    return next((code for key in keys if (code := country_code(fields.get(key)))), None)


def present(value: Any) -> bool:
    """Whether a scalar value is worth a field: not None, not blank. Objects and lists are not
    (an adapter that keeps nested values picks them out itself)."""
    if value is None or isinstance(value, (dict, list)):
        return False
    return not (isinstance(value, str) and not value.strip())


def put_field(
    fields: dict[str, Any], key: str, value: Any, repeats: dict[str, int] | None = None
) -> None:
    """Add without overwriting: a repeated key gets `` (2)``, `` (3)``...

    Form builders let two questions share a label; both answers must reach the contact.
    ``repeats`` (one dict per lead) remembers the next number to try for each key, so a payload
    repeating one key thousands of times costs linear, not quadratic, time."""
    if key in fields:
        memo = repeats if repeats is not None else {}
        n = memo.get(key, 2)
        while f"{key} ({n})" in fields:
            n += 1
        memo[key] = n + 1
        key = f"{key} ({n})"
    fields[key] = value
