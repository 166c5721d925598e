"""Event → OliAI contact: the route's JMESPath expressions first, then the adapter's typed
hints, then guesses by key name; phone to E.164; the rest of what the user filled in becomes
metadata. Pure: ``oliai-bridge try``, replay ``--remap`` and the tests call it directly.
"""

from __future__ import annotations

import json
from functools import cached_property, lru_cache
from typing import Any

import jmespath
from jmespath.exceptions import JMESPathError

from bridge.event import Event
from bridge.exceptions import Unmappable
from bridge.phone import InvalidPhone, to_e164
from bridge.settings import LANGUAGE, Route
from bridge.values import squash, text

MAX_NAME_CHARS = 100
MAX_METADATA_KEYS = 50
MAX_METADATA_KEY_CHARS = 64
MAX_METADATA_VALUE_CHARS = 1000
MAX_FLATTEN_DEPTH = 4

# Key names, squashed to lower-case letters and digits, in order of preference.
NAME_KEYS = (
    "name",
    "fullname",
    "yourname",
    "contactname",
    "customername",
    "leadname",
    "sendername",
    "buyername",
    "clientname",
    "nome",
    "naam",
)
FIRST_KEYS = ("firstname", "fname", "givenname", "first")
LAST_KEYS = ("lastname", "lname", "surname", "familyname", "last")
PHONE_KEYS = (
    "phone",
    "phonenumber",
    "mobile",
    "mobilenumber",
    "mobilephone",
    "whatsapp",
    "whatsappnumber",
    "contactnumber",
    "cell",
    "cellphone",
    "tel",
    "telephone",
    "phoneno",
    "mobileno",
    "number",
    "contact",
    "sendermobile",
    "senderphone",
)
PHONE_PARTS = ("phone", "mobile", "whatsapp", "contactnumber", "cell", "tel")
EMAIL_KEYS = ("email", "emailaddress", "mail", "youremail", "senderemail")
NAME_EXCLUDE = (
    "company",
    "business",
    "org",
    "user",
    "file",
    "first",
    "last",
    "form",
    "page",
    "product",
    "city",
    "event",
    "campaign",
    "ad",
    "utm",
    "host",
)
COUNTRY_KEYS = ("country", "countrycode", "countryiso", "phonecountry", "countryiso2")


def map_event(event: Event, route: Route) -> dict[str, Any]:
    """The contact for ``event``: ``{name, phoneNumber, language?, metadata}``.

    Raises ``Unmappable`` naming the field when there is no usable phone number or a route
    expression fails.
    """
    m = _Mapper(event, route)
    phone_raw, phone = m.phone()
    name = m.name(phone)
    email = m.email()
    contact: dict[str, Any] = {"name": name, "phoneNumber": phone}
    language = text(m.mapped("language")) or route.language
    if language and LANGUAGE.match(language):
        contact["language"] = language
    # Whatever became the name, phone or email is not metadata too (mapped or typed fields).
    m.taken({text(phone_raw), email, *name.split(" ")} - {""})
    contact["metadata"] = m.metadata(email)
    return contact


class _Mapper:
    """One event read for one route: the expressions' document, its flattened fields, and the
    keys already used (a field that became the phone is not guessed as the name too)."""

    def __init__(self, event: Event, route: Route):
        self.event, self.route = event, route
        self.flat = flatten(event.fields)
        self.names = KeyNames(self.flat)
        self.used: set[str] = set()
        # Fields an adapter typed as name / phone / email are not metadata as well.
        typed = {text(v) for k, v in event.hints.items() if k != "country" and text(v)}
        if typed:
            self.taken(typed)

    @cached_property
    def doc(self) -> dict[str, Any]:
        """What the route's expressions read (only a route with expressions needs it)."""
        return self.event.to_dict()

    @cached_property
    def texts(self) -> dict[str, str]:
        """Each flattened field's value as ``text``, lists left out: what ``taken`` compares."""
        return {k: text(v) for k, v in self.flat.items() if not isinstance(v, list)}

    def taken(self, texts: set[str]) -> None:
        self.used |= {k for k, v in self.texts.items() if v in texts}

    def mapped(self, field: str) -> Any:
        expr = self.route.fields.get(field)
        return None if expr is None else search(expr, self.doc, field)

    def phone(self) -> tuple[Any, str]:
        """The phone as found and as E.164."""
        fields, hints, used, names = self.route.fields, self.event.hints, self.used, self.names
        raw = self.mapped("phoneNumber")
        if "phoneNumber" not in fields:
            raw = hints.get("phone")
            if raw is None:
                raw = names.guess(PHONE_KEYS, used, parts=PHONE_PARTS, value_ok=_phoneish)
            if raw is None:  # a phone-named field with a bad value: say what is wrong with it
                raw = names.guess(PHONE_KEYS, used, parts=PHONE_PARTS)
        if _blank(raw):
            where = (
                f"the expression {fields['phoneNumber']!r} found nothing"
                if "phoneNumber" in fields
                else "no field looks like a phone number (map one with [routes.fields] phoneNumber)"
            )
            raise Unmappable(f"no phone number: {where}", field="phoneNumber")
        if isinstance(raw, list) and raw:
            raw = raw[0]
        country = self.mapped("country") or hints.get("country") or names.guess(COUNTRY_KEYS, set())
        hint = country if isinstance(country, str) and len(country.strip()) == 2 else None
        try:
            return raw, to_e164(raw, region=self.route.region, country_hint=hint)
        except InvalidPhone as exc:
            raise Unmappable(f"phone number: {exc}", field="phoneNumber") from None

    def name(self, phone: str) -> str:
        hints, used, names = self.event.hints, self.used, self.names
        name = text(self.mapped("name")) or text(hints.get("name"))
        if not name:
            first = text(self.mapped("firstName")) or text(hints.get("first_name"))
            last = text(self.mapped("lastName")) or text(hints.get("last_name"))
            if not first and not last and "firstName" not in self.route.fields:
                first = text(names.guess(FIRST_KEYS, used))
                last = text(names.guess(LAST_KEYS, used))
            name = " ".join(p for p in (first, last) if p)
        if not name and "name" not in self.route.fields:
            name = text(names.guess(NAME_KEYS, used, parts=("name",), exclude=NAME_EXCLUDE))
        return (name or phone)[:MAX_NAME_CHARS].strip()

    def email(self) -> str:
        """OliAI contacts have no email field: it goes to metadata."""
        email = self.mapped("email") or self.event.hints.get("email")
        if email is None:
            email = self.names.guess(
                EMAIL_KEYS, self.used, parts=("email",), value_ok=lambda v: "@" in str(v)
            )
        return text(email)

    def metadata(self, email: str) -> dict[str, Any]:
        if self.route.metadata:
            metadata = {}
            for key, expr in self.route.metadata.items():
                value = scalar(search(expr, self.doc, f"metadata.{key}"))
                if value is not None:
                    metadata[key] = value
        else:
            # leave room for the email, which always goes to metadata
            metadata = default_metadata(self.flat, self.used, MAX_METADATA_KEYS - bool(email))
        if email and "email" not in metadata and len(metadata) < MAX_METADATA_KEYS:
            metadata["email"] = email[:MAX_METADATA_VALUE_CHARS]
        return metadata


def default_metadata(
    flat: dict[str, Any], used: set[str], limit: int = MAX_METADATA_KEYS
) -> dict[str, Any]:
    """Everything the user filled in that did not become name / phone / email."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        if key in used or len(out) >= limit:
            continue
        value = scalar(value)
        if value is None:
            continue
        out[key[:MAX_METADATA_KEY_CHARS]] = value
    return out


@lru_cache(maxsize=1024)
def _compiled(expr: str):
    return jmespath.compile(expr)


def search(expr: str, doc: dict[str, Any], where: str) -> Any:
    try:
        return _compiled(expr).search(doc)
    except JMESPathError as exc:
        # JMESPath's message quotes the value it choked on, which may be a whole payload
        detail = str(exc)[:200]
        raise Unmappable(f"{where}: expression {expr!r} failed: {detail}", field=where) from None


def flatten(fields: Any, prefix: str = "", depth: int = 0) -> dict[str, Any]:
    """Nested dicts → dotted keys (``contact.phone``); lists and scalars kept as values."""
    out: dict[str, Any] = {}
    if not isinstance(fields, dict):
        return out
    for key, value in fields.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and depth < MAX_FLATTEN_DEPTH:
            out.update(flatten(value, f"{name}.", depth + 1))
        else:
            out[name] = value
    return out


class KeyNames:
    """A flattened payload's keys by their ``squash``-ed names, for all the guesses a mapping
    makes. The order in which a guess tries the keys depends on the keys alone; a form sends
    the same keys in every webhook, so it is worked out once per set of keys (``KeyOrders``)."""

    def __init__(self, flat: dict[str, Any]):
        self.flat = flat
        keys = tuple(flat)
        self.orders = key_orders(keys) if len(keys) <= REMEMBERED_KEYS else KeyOrders(keys)

    def guess(
        self,
        exact: tuple[str, ...],
        used: set[str],
        *,
        parts: tuple[str, ...] = (),
        exclude: tuple[str, ...] = (),
        value_ok=None,
    ) -> Any:
        """The value of the best-named key not in ``used`` (which it joins): exact names in
        order, then names containing a part."""
        flat = self.flat
        for key in self.orders.of(exact, parts, exclude):
            value = flat[key]
            if key not in used and not _blank(value) and (value_ok is None or value_ok(value)):
                used.add(key)
                return value
        return None


#: Payloads with at most this many (flattened) keys have their ``KeyOrders`` remembered: forms
#: have a few dozen fields, and a hostile payload's thousands of keys must not stay in memory.
REMEMBERED_KEYS = 100


class KeyOrders:
    """The keys of a payload in the order each guess tries them."""

    def __init__(self, keys: tuple[str, ...]):
        #: Each key's squashed name, in the payload's order.
        self.squashed = {key: squash(key) for key in keys}
        #: The keys with each squashed name, in the payload's order.
        self.keys: dict[str, list[str]] = {}
        for key, name in self.squashed.items():
            self.keys.setdefault(name, []).append(key)
        self._orders: dict[tuple[tuple[str, ...], ...], tuple[str, ...]] = {}

    def of(
        self, exact: tuple[str, ...], parts: tuple[str, ...], exclude: tuple[str, ...]
    ) -> tuple[str, ...]:
        """Keys named one of ``exact`` (in that order), then keys whose name contains one of
        ``parts`` and none of ``exclude``; each once."""
        wanted = (exact, parts, exclude)
        order = self._orders.get(wanted)
        if order is None:
            found = [key for name in exact for key in self.keys.get(name, ())]
            found += [
                key
                for part in parts
                for key, name in self.squashed.items()
                if part in name and not any(x in name for x in exclude)
            ]
            order = self._orders[wanted] = tuple(dict.fromkeys(found))
        return order


@lru_cache(maxsize=256)
def key_orders(keys: tuple[str, ...]) -> KeyOrders:
    return KeyOrders(keys)


def _phoneish(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, (int, float)):
        return True
    return isinstance(value, str) and sum(map(str.isdigit, value)) >= 6


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip()) or value in ([], {})


def scalar(value: Any) -> str | int | float | bool | None:
    """A metadata value OliAI accepts: flat string / number / boolean, length-capped."""
    if type(value) is str:  # most values: asked first
        value = value.strip()
        return value[:MAX_METADATA_VALUE_CHARS] if value else None
    if value is None:
        return None
    if isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else None
    if isinstance(value, list):
        items = (scalar(v) for v in value)  # once per item: nested lists stay linear
        value = ", ".join(str(item) for item in items if item is not None)
    elif isinstance(value, dict):
        value = json.dumps(value, ensure_ascii=False, sort_keys=True)
    value = str(value).strip()
    if not value:
        return None
    return value[:MAX_METADATA_VALUE_CHARS]
