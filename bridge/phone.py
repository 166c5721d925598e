"""Phone numbers to E.164 with ``phonenumbers``: the number's own ``+`` first, then a country
hint from the same payload, then the route's region."""

from __future__ import annotations

import re
from typing import Any

import phonenumbers

# What we send to OliAI (stricter than the API's own check; see oliai-api.md, unknowns #10).
E164 = re.compile(r"^\+[1-9]\d{6,14}$")
MAX_INPUT_CHARS = 64


class InvalidPhone(ValueError):
    """The value is not a usable phone number; the message says why, for a person."""


def to_e164(value: Any, *, region: str, country_hint: str | None = None) -> str:
    """Normalize ``value`` to E.164 or raise ``InvalidPhone``.

    A hint that does not yield a valid number falls back to ``region``: a customer's address may
    be abroad while the number they typed is local.
    """
    text = _as_text(value)
    regions = []
    for candidate in (country_hint, region):
        code = (candidate or "").strip().upper()
        if len(code) == 2 and code.isalpha() and code not in regions:
            regions.append(code)
    if not regions:
        regions.append("ZZ")  # only numbers written with + will parse
    for code in regions:
        try:
            number = phonenumbers.parse(text, code)
        except phonenumbers.NumberParseException:
            continue
        if phonenumbers.is_valid_number(number):
            e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
            if E164.match(e164):
                return e164
    digits = text.lstrip("+")
    if digits.isdigit() and len(digits) >= 10 and not text.startswith("+"):
        # A country code written without its + (Webflow sends 15550000000 as a JSON number).
        try:
            number = phonenumbers.parse("+" + digits, None)
            if phonenumbers.is_valid_number(number):
                e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
                if E164.match(e164):
                    return e164
        except phonenumbers.NumberParseException:
            pass
    where = f" (tried {', '.join(regions)})" if text and not text.startswith("+") else ""
    raise InvalidPhone(f"{text!r} is not a valid phone number{where}")


def _as_text(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        raise InvalidPhone("phone number is empty")
    if isinstance(value, int):
        if value.bit_length() > 64:  # no phone number is this long (and str() may refuse)
            raise InvalidPhone("number is far too long to be a phone number")
        return str(value)
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")) or not value.is_integer():
            raise InvalidPhone(f"{value!r} is not a phone number")
        return str(int(value))
    if not isinstance(value, str):
        raise InvalidPhone(f"phone number must be text, got {type(value).__name__}")
    text = value.strip()
    if not text:
        raise InvalidPhone("phone number is empty")
    if len(text) > MAX_INPUT_CHARS:
        raise InvalidPhone(f"phone number is too long ({len(text)} characters)")
    return text
