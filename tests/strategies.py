"""Hypothesis strategies for hostile webhook input: bodies, headers, JSON garbage, mutations of
sample payloads, and the routes the adapters are run under.

Used by ``tests/test_properties.py``. Nothing here is about one source: each source's sample
payloads, route keys and way of posting come from its own test module
(``tests/sources/test_<source>.py``, see ``PROPERTY_SAMPLES`` there).
"""

from __future__ import annotations

import base64
import copy
import json
from typing import Any
from urllib.parse import urlencode
from xml.etree import ElementTree as ET

from hypothesis import strategies as st

from bridge.config import Route, build_settings
from bridge.sources import get_source, source_names

SOURCES = source_names()
TOKEN = "prop-token-5e1f"
SECRET = "prop-secret-9c2d"
BASIC = "prop:basic-pass"
ORG_ID = "00D5g000004XyZa"
BOUNDARY = "PropBoundary7MA4YWxk"

# --- routes ----------------------------------------------------------------------------------


def route_data(
    source: str, *, name: str | None = None, secret: str | None = SECRET, **extra: Any
) -> dict:
    """A route for ``source`` carrying the token, and ``secret`` when the source signs (None:
    unsigned); ``extra`` holds the keys the source needs besides (from its test module)."""
    data: dict[str, Any] = {
        "name": name or source,
        "source": source,
        "audience_name": "Property leads",
        "token": TOKEN,
    }
    if secret is not None and get_source(source).signs:
        data["secret"] = secret
    data.update(extra)
    return data


def build_route(data: dict) -> Route:
    return build_settings({"routes": [data]}, env={}).routes[data["name"]]


# --- text and JSON garbage ---------------------------------------------------------------------

#: Keys the adapters look for, so that garbage reaches past the first ``isinstance`` check.
VOCAB = (
    # generic / mapping
    "name", "full_name", "first_name", "last_name", "phone", "phone_number", "mobile", "Mobile",
    "Phone", "whatsapp", "email", "Email", "country", "country_code", "language", "contact",
    "lead", "data", "id", "type", "value", "values", "event_id", "token", "Idempotency-Key",
    # typeform / tally
    "event_type", "form_response", "answers", "definition", "fields", "field", "ref", "title",
    "hidden", "calculated", "variables", "key", "label", "options", "rows", "columns", "text",
    "eventType", "responseId", "submissionId", "eventId", "choice", "choices", "labels", "other",
    "phone_number", "INPUT_PHONE_NUMBER", "MULTIPLE_CHOICE", "CHECKBOXES", "MATRIX", "FILE_UPLOAD",
    # jotform / google forms
    "rawRequest", "submissionID", "q3_name", "q5_phoneNumber", "full", "area", "first", "last",
    "namedValues", "respondentEmail", "formId",
    # hubspot / pipedrive
    "properties", "vid", "canonical-vid", "objectId", "form-submissions", "timestamp",
    "subscriptionType", "objectTypeId", "portalId", "subscriptionId", "meta", "action",
    "entity", "object", "version", "current", "event", "phones", "emails", "primary", "org_id",
    "org_name", "owner_id", "custom_fields", "person_id", "timestamp_micro", "webhook_id",
    # meta / calendly / indiamart / leadsquared / salesforce
    "entry", "changes", "leadgen_id", "page_id", "form_id", "payload", "uri",
    "questions_and_answers", "question", "answer", "tracking", "scheduled_event", "location",
    "text_reminder_number", "old_invitee", "RESPONSE", "UNIQUE_QUERY_ID", "SENDER_MOBILE",
    "SENDER_NAME", "SENDER_COUNTRY_ISO", "QUERY_MESSAGE", "SENDER_EMAIL", "DoNotCall",
    "ProspectActivityId", "FirstName", "LastName", "MobilePhone", "EmailAddress", "CountryCode",
    # webflow / wordpress / shopify / zoho / freshsales / standard webhooks
    "triggerType", "_id", "source_url", "1", "1.3", "1.6", "2", "3", "_wpcf7", "your-name",
    "your-tel", "addresses", "default_address", "sms_marketing_consent", "state", "ids",
    "channel_id", "operation", "contact[mobile_number]", "mobile_number", "work_number",
)  # fmt: skip

ODD_STRINGS = (
    "", " ", "\t\r\n", "\x00", "\x7f", "\u200b", "\ufeff", "\u202e", "\u0301", "\uffff",
    "\U0010ffff", "🙂" * 3, "١٢٣٤٥٦٧٨٩٠", "٠٩٨٧٦٥٤٣٢١٠", "０９８７６５４３２１０", "²³⁴⁵⁶⁷⁸⁹¹⁰",
    "NaN", "Infinity", "-0", "1e400", "null", "true", "[]", "{}", "None", "0" * 70, "+", "+0",
    "+91 98765 43210", "098765 43210", "+1 (555) 010-0000", "15550000000", "+44 20 7946 0958",
    "a@b.c", "x@", "@", "<b>x</b><br/>", "&amp;&#0;", "%00%ff", "${Leads.Mobile}",
    "{{contact.mobile_number}}", "sha256=", "v1,", "whsec_", "t=1,v1=00", "page", "leadgen",
    "form_response", "FORM_RESPONSE", "invitee.created", "contact.creation", "object.creation",
    "0-1", "create", "person", "deal", "form_submission", "customers/create", "lead.created",
    "IN", "US", "in", "ÉÉ", "ZZ", "1", "true", "SUBSCRIBED", "subscribed", "outbound_call",
    "http://[", "https://[::1/landing?utm_source=fb", "//[x]:99/?utm_campaign=", "http://a:b@/",
    "https://example.com/?utm_source=%ff&utm_medium=\x00",
)  # fmt: skip

#: Lone surrogates: not text, yet a JSON body may carry them as ``\ud800`` escapes.
LONE_SURROGATES = st.builds(
    lambda before, code, after: before + chr(code) + after,
    st.text(max_size=4),
    st.integers(0xD800, 0xDFFF),
    st.text(max_size=4),
)

PHONES = st.sampled_from(
    ["+919876543210", "098765 43210", "9876543210", "+1 555 010 0000", "+15550000000", "+0"]
) | st.from_regex(r"\+?[0-9 ()\-.]{4,24}", fullmatch=True)

#: Text without surrogates (which UTF-8 cannot carry), biased towards the odd.
ODD_TEXT = st.text(max_size=24) | st.sampled_from(ODD_STRINGS) | PHONES
#: Long text: over every cap the bridge has (names 100, metadata 1000, phone 64, ids 200).
HUGE_TEXT = st.builds(
    lambda chunk, n: chunk * n,
    st.sampled_from(["a", "9", "é", "🙂", " ", "@", "+9", "x@y.z ", "\u200b"]),
    st.integers(100, 20_000),
)
KEYS = st.sampled_from(VOCAB) | st.text(max_size=12)
NUMBERS = (
    st.integers(-(2**63), 2**63)
    | st.integers(-(10**300), 10**300)
    | st.floats(allow_nan=True, allow_infinity=True)
)
LEAVES = st.none() | st.booleans() | NUMBERS | ODD_TEXT | HUGE_TEXT


def json_values(max_leaves: int = 20) -> st.SearchStrategy[Any]:
    """Nested garbage: dicts keyed by adapter vocabulary, lists, odd scalars."""
    return st.recursive(
        LEAVES,
        lambda children: (
            st.lists(children, max_size=5) | st.dictionaries(KEYS, children, max_size=6)
        ),
        max_leaves=max_leaves,
    )


JSON_VALUES = json_values()
JSON_OBJECTS = st.dictionaries(KEYS, JSON_VALUES, max_size=8)


def dumps(value: Any, ascii_only: bool = False) -> bytes:
    """JSON as a sender would write it (NaN / Infinity included: Python's parser accepts them).

    A lone surrogate becomes a ``\\udxxx`` escape when ``ascii_only``, else invalid UTF-8 bytes.
    """
    return json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


def form_encode(pairs: list[tuple[str, str]]) -> bytes:
    return urlencode(pairs, errors="surrogatepass").encode()


# --- bodies and requests ---------------------------------------------------------------------

CONTENT_TYPES = st.sampled_from(
    [
        None,
        "",
        "application/json",
        "application/json; charset=utf-8",
        "application/json; charset=utf-16",
        "text/json",
        "application/vnd.api+json",
        "application/x-www-form-urlencoded",
        f"multipart/form-data; boundary={BOUNDARY}",
        f'multipart/form-data; boundary="{BOUNDARY}"',
        "multipart/form-data",
        "multipart/form-data; boundary=",
        "text/xml; charset=utf-8",
        "application/xml",
        "application/soap+xml",
        "application/atom+xml",
        "text/plain",
        "application/octet-stream",
        "text/html",
        "image/png",
        ";",
        "APPLICATION/JSON",
        "application/json;;;=",
    ]
) | st.text(st.characters(min_codepoint=32, max_codepoint=255), max_size=40)


def multipart(parts: list[tuple[str, str]], boundary: str = BOUNDARY) -> bytes:
    chunks = []
    for name, value in parts:
        chunks.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
        )
    chunks.append(f"--{boundary}--\r\n")
    return "".join(chunks).encode("utf-8", "surrogatepass")


FORM_PAIRS = st.lists(st.tuples(KEYS, ODD_TEXT | HUGE_TEXT), max_size=8)


def xml_trees(max_leaves: int = 20) -> st.SearchStrategy[ET.Element]:
    """Well-formed (mostly) XML trees with Salesforce's and the generic adapters' tags."""
    tags = st.sampled_from(
        [
            "notifications",
            "Notification",
            "sObject",
            "Id",
            "OrganizationId",
            "MobilePhone",
            "Phone",
            "FirstName",
            "LastName",
            "Name",
            "Email",
            "DoNotCall",
            "CountryCode",
            "lead",
            "phone",
            "name",
            "{http://soap.sforce.com/2005/09/outbound}notifications",
            "{urn:x}Phone",
        ]
    ) | st.from_regex(r"[A-Za-z_][A-Za-z0-9_.-]{0,8}", fullmatch=True)
    xml_text = st.none() | ODD_TEXT.filter(_xml_ok) | HUGE_TEXT

    def leaf(tag_text):
        tag, text, nil = tag_text
        elem = ET.Element(tag)
        elem.text = text
        if nil:
            elem.set("{http://www.w3.org/2001/XMLSchema-instance}nil", "true")
        return elem

    def node(children_tag):
        children, tag = children_tag
        elem = ET.Element(tag)
        elem.extend(children)
        return elem

    leaves = st.tuples(tags, xml_text, st.booleans()).map(leaf)
    return st.recursive(
        leaves,
        lambda kids: st.tuples(st.lists(kids, max_size=5), tags).map(node),
        max_leaves=max_leaves,
    )


def _xml_ok(text: str) -> bool:
    return all(
        c in "\t\n\r" or 0x20 <= ord(c) <= 0xD7FF or 0xE000 <= ord(c) <= 0xFFFD for c in text
    )


#: Encodings an XML declaration may name: readable, multi-byte, unknown, not text at all.
XML_ENCODINGS = st.sampled_from(
    ["utf-8", "UTF-8", "iso-8859-1", "us-ascii", "utf-16", "cp037", "shift_jis", "big5",
     "utf-7", "bogus", "rot13", "base64", "idna", ""]
)  # fmt: skip


@st.composite
def xml_bodies(draw) -> bytes:
    body = ET.tostring(draw(xml_trees()), encoding="unicode").encode()
    if draw(st.booleans()):
        encoding = draw(XML_ENCODINGS)
        body = f'<?xml version="1.0" encoding="{encoding}"?>'.encode() + body
    return body


XML_BODIES = xml_bodies()


@st.composite
def bodies(draw) -> tuple[bytes, str | None]:
    """(body, content type): bytes of every kind, with a fitting or a lying content type."""
    kind = draw(
        st.sampled_from(
            ["bytes", "json", "form", "multipart", "xml", "prefixed", "codec", "surrogates"]
        )
    )
    if kind == "bytes":
        body = draw(st.binary(max_size=600))
    elif kind == "json":
        body = dumps(draw(JSON_VALUES), draw(st.booleans()))
    elif kind == "form":
        body = form_encode(draw(FORM_PAIRS))
    elif kind == "multipart":
        body = multipart(draw(FORM_PAIRS))
        if draw(st.booleans()):
            body = body[: draw(st.integers(0, len(body)))]  # cut short
    elif kind == "xml":
        body = draw(XML_BODIES)
    elif kind == "prefixed":
        head = draw(st.sampled_from([b"{", b"[", b"<", b"<?xml", b"a=", b"\xef\xbb\xbf{", b" \n"]))
        body = head + draw(st.binary(max_size=200))
    elif kind == "surrogates":  # valid JSON text whose strings are not valid Unicode
        value = draw(st.dictionaries(KEYS, LONE_SURROGATES | JSON_VALUES, min_size=1, max_size=6))
        body = dumps(value, draw(st.booleans()))
    else:  # the same JSON in an encoding the bridge does not read, or a broken one
        text = json.dumps(draw(JSON_OBJECTS), ensure_ascii=False)
        codec = draw(st.sampled_from(["utf-16", "utf-16-le", "utf-32", "latin-1", "cp1252"]))
        body = text.encode(codec, "replace")
    ctype = draw(CONTENT_TYPES)
    return body, ctype


#: Headers the adapters read, with garbage values (latin-1 only: HTTP carries no other).
HEADER_NAMES = st.sampled_from(
    [
        "x-bridge-token",
        "x-api-key",
        "authorization",
        "idempotency-key",
        "typeform-signature",
        "tally-signature",
        "x-hubspot-signature",
        "x-hubspot-signature-v3",
        "x-hubspot-signature-version",
        "x-hubspot-request-timestamp",
        "x-hub-signature",
        "x-hub-signature-256",
        "calendly-webhook-signature",
        "x-webflow-signature",
        "x-webflow-timestamp",
        "x-shopify-hmac-sha256",
        "x-shopify-topic",
        "x-shopify-test",
        "x-shopify-webhook-id",
        "x-shopify-shop-domain",
        "webhook-id",
        "webhook-timestamp",
        "webhook-signature",
        "svix-id",
        "svix-timestamp",
        "svix-signature",
        "soapaction",
    ]
)
HEADER_TEXT = st.text(
    st.characters(min_codepoint=32, max_codepoint=255, blacklist_characters="\x7f"), max_size=60
)
HEADER_VALUES = (
    HEADER_TEXT
    | st.sampled_from(
        [
            TOKEN,
            "Basic " + base64.b64encode(BASIC.encode()).decode(),
            "Basic ÿÿÿ",
            "Basic =",
            "sha256=",
            "sha256=AAAA",
            "sha1=00",
            "t=,v1=",
            "t=1e400,v1=ab",
            "t=nan,v1=ab",
            "v1,AAAA v1a,BBBB",
            "v1,@@@",
            "9" * 5000,
            "١٢٣",
            "²",
            "customers/create",
            "true",
        ]
    )
    | st.integers(0, 2**80).map(str)
)
HEADERS = st.dictionaries(HEADER_NAMES, HEADER_VALUES, max_size=6)


def queries(*known: str) -> st.SearchStrategy[dict[str, str]]:
    """Query strings of the parameters the adapters read; ``known`` values (a route's handshake
    token, say) are drawn besides garbage, so that a handshake can succeed."""
    return st.dictionaries(
        st.sampled_from(["token", "hub.mode", "hub.challenge", "hub.verify_token", "x"]),
        HEADER_TEXT | st.sampled_from([TOKEN, "subscribe", *known]),
        max_size=4,
    )


# --- sample payloads and their mutations -------------------------------------------------------


def sender_bodies(value: Any) -> st.SearchStrategy[tuple[bytes, str]]:
    """How a sender posts a (mutated) payload: JSON, or a form when it is an object. A source
    whose sender posts otherwise says so in its test module (``property_bodies``)."""
    as_json = st.booleans().map(lambda ascii_only: (dumps(value, ascii_only), "application/json"))
    if not isinstance(value, dict):
        return as_json
    pairs = [(str(k), v if isinstance(v, str) else json.dumps(v)) for k, v in value.items()]
    as_form = st.just((form_encode(pairs), "application/x-www-form-urlencoded"))
    return st.one_of(as_json, as_json, as_form)


def _paths(value: Any, path: tuple = ()) -> list[tuple]:
    out = [path]
    if isinstance(value, dict):
        for key, child in value.items():
            out.extend(_paths(child, (*path, key)))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            out.extend(_paths(child, (*path, index)))
    return out


def _get(value: Any, path: tuple) -> Any:
    for step in path:
        value = value[step]
    return value


@st.composite
def mutations(draw, sample: Any, rounds: int = 4) -> Any:
    """``sample`` with a few nodes replaced, dropped, wrapped, stringified or added to."""
    value = copy.deepcopy(sample)
    for _ in range(draw(st.integers(1, rounds))):
        path = draw(st.sampled_from(_paths(value)))
        node = _get(value, path)
        op = draw(
            st.sampled_from(
                ["replace", "leaf", "drop", "wrap", "stringify", "empty", "add", "dup", "odd"]
            )
        )
        if op == "odd":  # an odd string where the sender had any value
            new = draw(LONE_SURROGATES | HUGE_TEXT | st.sampled_from(ODD_STRINGS))
        elif op == "replace":
            new = draw(json_values(max_leaves=10))
        elif op == "leaf":
            new = draw(LEAVES)
        elif op == "wrap":
            new = draw(st.sampled_from([[node], {"value": node}, [node, node]]))
        elif op == "stringify":
            new = json.dumps(node) if draw(st.booleans()) else str(node)
        elif op == "empty":
            new = draw(st.sampled_from([{}, [], "", None, 0, False]))
        elif op == "add" and isinstance(node, dict):
            node[draw(KEYS)] = draw(json_values(max_leaves=6))
            continue
        elif op == "dup" and isinstance(node, list) and node:
            node.append(copy.deepcopy(node[draw(st.integers(0, len(node) - 1))]))
            continue
        elif op == "drop" and path:
            parent = _get(value, path[:-1])
            del parent[path[-1]]
            continue
        else:
            new = draw(LEAVES)
        if not path:
            value = new
        else:
            _get(value, path[:-1])[path[-1]] = new
    return value


def salesforce_message(records: list[Any], org: str = ORG_ID) -> bytes:
    """An outbound message whose sObjects hold ``records`` (dicts of field → value)."""
    envelope = ET.Element("{http://schemas.xmlsoap.org/soap/envelope/}Envelope")
    body = ET.SubElement(envelope, "{http://schemas.xmlsoap.org/soap/envelope/}Body")
    ns = "{http://soap.sforce.com/2005/09/outbound}"
    notifications = ET.SubElement(body, ns + "notifications")
    ET.SubElement(notifications, ns + "OrganizationId").text = org
    for index, record in enumerate(records):
        notification = ET.SubElement(notifications, ns + "Notification")
        ET.SubElement(notification, ns + "Id").text = f"04l{index:012d}"
        sobject = ET.SubElement(notification, ns + "sObject")
        for key, value in record.items() if isinstance(record, dict) else []:
            tag = key if _xml_name(key) else "Field"
            _xml_value(
                ET.SubElement(sobject, "{urn:sobject.enterprise.soap.sforce.com}" + tag), value
            )
    return ET.tostring(envelope, encoding="utf-8")


def _xml_name(key: Any) -> bool:
    return isinstance(key, str) and key[:1].isalpha() and key.replace("_", "").isalnum()


def _xml_value(elem: ET.Element, value: Any) -> None:
    if value is None:
        elem.set("{http://www.w3.org/2001/XMLSchema-instance}nil", "true")
    elif isinstance(value, dict):
        for key, child in value.items():
            _xml_value(ET.SubElement(elem, key if _xml_name(key) else "Field"), child)
    elif isinstance(value, list):
        for child in value:
            _xml_value(ET.SubElement(elem, "item"), child)
    else:
        elem.text = "".join(c if _xml_ok(c) else "?" for c in str(value))
