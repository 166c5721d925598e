"""Hostile and broken input ("Nothing lost, nothing twice"): no input yields a 5xx or an
unhandled exception; over-long fields, odd encodings and nested garbage get a 4xx naming the
problem.

1. Every adapter's pure path (verify / parse / normalize, then ``map_event`` per lead) over
   arbitrary bodies, JSON garbage and mutations of its own sample payloads: the only exceptions
   are ``IngestError`` subclasses with a message. Each source's test module
   (``tests/sources/test_<source>.py``) gives what is particular to it: ``PROPERTY_SAMPLES``
   (required), and optionally ``PROPERTY_ROUTE`` (route keys it needs), ``PROPERTY_SECRET`` (a
   signing secret in its format), ``PROPERTY_OPTIONS`` (route options that reach its other
   branches) and ``property_bodies(value)`` (a strategy: how its sender posts a payload).
2. The real app over real Redis: random methods, routes, headers and bodies never get a 5xx, and
   always get JSON (or the source's documented non-JSON answer).
3. ``map_event`` and ``to_e164`` contracts.
4. Named 4xx answers for deep nesting, bad UTF-8, oversize bodies and over-long fields.

Section 5 pins, each with a minimal input, the bugs these tests found (all fixed); those of
the body parsers alone are pinned in ``tests/test_parsing.py``.
"""

from __future__ import annotations

import importlib
import json
import math
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import pytest
from defusedxml import ElementTree as SafeET
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.config import build_settings
from bridge.event import Event, InboundRequest, Lead
from bridge.exceptions import IngestError, SignatureInvalid, StorageUnavailable, Unmappable
from bridge.mapping import MAX_METADATA_KEYS, MAX_METADATA_VALUE_CHARS, MAX_NAME_CHARS, map_event
from bridge.phone import E164, InvalidPhone, to_e164
from bridge.sources import get_source
from bridge.sources.base import Accepted, Outcome
from tests import strategies as S

RECEIVED_AT = "2026-01-01T00:00:00.000Z"
URL = "https://bridge.example.com/hooks/r"


@dataclass(frozen=True)
class Adapter:
    """What a source's own test module gives the property tests."""

    name: str
    samples: list[Any]
    route: dict[str, Any] = field(default_factory=dict)
    secret: str = S.SECRET
    options: dict[str, Any] = field(default_factory=dict)
    bodies: Callable[[Any], st.SearchStrategy[tuple[bytes, str]]] = S.sender_bodies


def adapter(name: str) -> Adapter:
    """Read ``tests/sources/test_<name>.py``: a module that does not import fails every test
    here, as it should (it would fail on its own too)."""
    module = importlib.import_module(f"tests.sources.test_{name}")
    samples = list(module.PROPERTY_SAMPLES)
    for sample in samples:
        json.dumps(sample)  # mutations work on JSON values
    return Adapter(
        name=name,
        samples=samples,
        route=dict(getattr(module, "PROPERTY_ROUTE", {})),
        secret=getattr(module, "PROPERTY_SECRET", S.SECRET),
        options=dict(getattr(module, "PROPERTY_OPTIONS", {})),
        bodies=getattr(module, "property_bodies", S.sender_bodies),
    )


ADAPTERS = {name: adapter(name) for name in S.SOURCES}


def route_data(source: str, *, name: str | None = None, signed: bool = True, **extra) -> dict:
    """A valid route for ``source`` with every key it needs (signed: with its secret)."""
    a = ADAPTERS[source]
    secret = a.secret if signed else None
    return S.route_data(source, name=name, secret=secret, **{**a.route, **extra})


def adapter_routes(source: str) -> list:
    """The routes an adapter is exercised under: plain, with its options, with basic auth."""
    return [
        S.build_route(route_data(source)),
        S.build_route(route_data(source, region="US", **ADAPTERS[source].options)),
        S.build_route(route_data(source, signed=False, basic_auth=S.BASIC)),
    ]


ROUTES = {name: adapter_routes(name) for name in S.SOURCES}
#: Query strings with garbage and with the values routes expect (a handshake's verify token).
QUERY = S.queries(
    *sorted({v for a in ADAPTERS.values() for v in a.route.values() if isinstance(v, str)})
)

FAST = settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


# --- the contract, checked on the pure path ------------------------------------------------------


def request(
    body: bytes,
    ctype: str | None = "application/json",
    headers: dict[str, str] | None = None,
    query: dict[str, str] | None = None,
    method: str = "POST",
) -> InboundRequest:
    h = {k.lower(): v for k, v in (headers or {}).items()}
    if ctype is not None:
        h["content-type"] = ctype
    return InboundRequest(
        method=method, route="r", body=body, headers=h, query=dict(query or {}), url=URL
    )


def check_refusal(error: BaseException) -> None:
    """An allowed error: an ``IngestError`` with a message and a 4xx status."""
    assert isinstance(error, IngestError), f"{type(error).__name__}: {error}"
    assert isinstance(error.message, str) and error.message.strip(), repr(error)
    assert 400 <= error.status < 500 and not isinstance(error, StorageUnavailable), error.status
    json.dumps(error.to_dict())


def check_unmappable(error: Unmappable) -> None:
    check_refusal(error)
    assert error.field, f"Unmappable without a field: {error.message}"


def check_phone(number: Any) -> None:
    assert isinstance(number, str), repr(number)
    assert E164.match(number), number


def check_contact(contact: dict[str, Any], *, limits: bool = False) -> None:
    assert set(contact) <= {"name", "phoneNumber", "language", "metadata"}, contact.keys()
    check_phone(contact["phoneNumber"])
    name = contact["name"]
    assert isinstance(name, str) and name.strip() and len(name) <= MAX_NAME_CHARS, repr(name)
    metadata = contact["metadata"]
    assert isinstance(metadata, dict)
    for key, value in metadata.items():
        assert isinstance(key, str), key
        assert type(value) in (str, int, float, bool), (key, value)
        if isinstance(value, float):
            assert math.isfinite(value), (key, value)
    json.dumps(contact, allow_nan=False)
    if limits:
        assert len(metadata) <= MAX_METADATA_KEYS, len(metadata)
        for key, value in metadata.items():
            assert len(key) <= 64, key
            if isinstance(value, str):
                assert len(value) <= MAX_METADATA_VALUE_CHARS, (key, len(value))


def check_lead(lead: Lead) -> None:
    assert isinstance(lead, Lead), lead
    assert isinstance(lead.fields, dict), type(lead.fields)
    json.dumps(lead.fields)  # stored with the delivery
    assert lead.event_id is None or isinstance(lead.event_id, str), repr(lead.event_id)
    for hint in ("name", "first_name", "last_name", "phone", "email", "country"):
        value = getattr(lead, hint)
        assert value is None or isinstance(value, str), (hint, value)
    assert lead.fetch is None or isinstance(lead.fetch, dict), lead.fetch


def check_reply(source_name: str, outcome: Outcome) -> None:
    reply = get_source(source_name).reply(outcome)
    assert reply.status < 500, reply
    reply.body_bytes()


def run_adapter(source_name: str, req: InboundRequest, route, *, verify: bool = False) -> None:
    """verify (optionally) → parse → normalize → map each lead; assert the contract."""
    _run_adapter(source_name, req, route, verify=verify)


def _run_adapter(source_name: str, req: InboundRequest, route, *, verify: bool) -> None:
    source = get_source(source_name)
    try:
        if verify:
            source.verify(req, route)
        payload = source.parse(req)
        leads = source.normalize(req, payload, route)
    except IngestError as error:
        check_refusal(error)
        check_reply(source_name, Outcome(error=error, request=req))
        return
    assert isinstance(leads, list), type(leads)
    for index, lead in enumerate(leads):
        check_lead(lead)
        event = Event.from_lead(
            lead,
            route=route.name,
            source=source_name,
            event_id=lead.event_id or f"hash:{index}",
            received_at=RECEIVED_AT,
        )
        json.dumps(event.to_dict())  # what the delivery record holds
        if event.fetch:
            continue  # mapped by the job after the fetch
        try:
            check_contact(map_event(event, route))
        except Unmappable as error:
            check_unmappable(error)
    accepted = [Accepted(f"dlv_{i}", "queued") for i in range(len(leads))]
    check_reply(source_name, Outcome(accepted=accepted, request=req))


# --- 1. every adapter, pure path -----------------------------------------------------------------


@pytest.mark.parametrize("source_name", S.SOURCES)
@FAST
@given(body=S.bodies(), headers=S.HEADERS, query=QUERY, which=st.integers(0, 2))
def test_adapter_survives_arbitrary_bodies(source_name, body, headers, query, which):
    data, ctype = body
    req = request(data, ctype, headers, query)
    run_adapter(source_name, req, ROUTES[source_name][which])


@pytest.mark.parametrize("source_name", S.SOURCES)
@settings(FAST, max_examples=15)
@given(
    value=S.JSON_VALUES | S.JSON_OBJECTS,
    ctype=st.sampled_from(
        ["application/json", None, "text/plain", "application/x-www-form-urlencoded"]
    ),
    as_raw_request=st.booleans(),
    ascii_only=st.booleans(),
    which=st.integers(0, 2),
)
def test_adapter_survives_json_garbage(
    source_name, value, ctype, as_raw_request, ascii_only, which
):
    if as_raw_request:  # Jotform's shape: the JSON inside a multipart part
        body = S.multipart([("rawRequest", json.dumps(value, ensure_ascii=ascii_only))])
        ctype = f"multipart/form-data; boundary={S.BOUNDARY}"
    else:
        body = S.dumps(value, ascii_only)
    run_adapter(source_name, request(body, ctype), ROUTES[source_name][which])


@st.composite
def mutated_requests(draw, source_name: str) -> InboundRequest:
    a = ADAPTERS[source_name]
    value = draw(S.mutations(draw(st.sampled_from(a.samples))))
    headers = draw(S.HEADERS)
    body, ctype = draw(a.bodies(value))
    return request(body, ctype, headers)


@pytest.mark.parametrize("source_name", S.SOURCES)
@settings(FAST, max_examples=25)
@given(data=st.data(), which=st.integers(0, 2))
def test_adapter_survives_mutated_samples(source_name, data, which):
    req = data.draw(mutated_requests(source_name), label="request")
    run_adapter(source_name, req, ROUTES[source_name][which])


@pytest.mark.parametrize("source_name", S.SOURCES)
@FAST
@given(body=S.bodies(), headers=S.HEADERS, query=QUERY, which=st.integers(0, 2))
def test_verify_refuses_only_with_signature_invalid(source_name, body, headers, query, which):
    data, ctype = body
    req = request(data, ctype, headers, query)
    try:
        get_source(source_name).verify(req, ROUTES[source_name][which])
    except SignatureInvalid as error:
        check_refusal(error)
        assert error.reason, error


@pytest.mark.parametrize("source_name", S.SOURCES)
def test_every_source_has_samples_to_mutate(source_name):
    samples = ADAPTERS[source_name].samples
    assert samples, f"tests/sources/test_{source_name}.py: PROPERTY_SAMPLES is empty"


# --- 2. through the real app ---------------------------------------------------------------------

MAX_BODY = 64 * 1024
APP_ROUTES = [route_data(name, signed=False) for name in S.SOURCES] + [
    route_data(name, name=f"{name}-signed") for name in S.SOURCES if get_source(name).signs
]
APP_ROUTE_NAMES = [r["name"] for r in APP_ROUTES]
METHODS = st.sampled_from(["POST"] * 6 + ["PUT", "GET", "HEAD", "DELETE", "PATCH"])


@pytest.fixture
def app(make_client):
    return make_client(routes=APP_ROUTES, bridge={"max_body_bytes": MAX_BODY})


@pytest.fixture
def big_app(make_client):
    """The routes with the default body limit (1 MiB)."""
    return make_client(routes=APP_ROUTES)


@st.composite
def app_requests(draw) -> dict[str, Any]:
    route = draw(st.sampled_from(APP_ROUTE_NAMES) | st.text(max_size=70))
    source_name = route.removesuffix("-signed")
    if source_name in S.SOURCES and draw(st.booleans()):
        sample = draw(st.sampled_from(ADAPTERS[source_name].samples))
        body, ctype = S.dumps(draw(S.mutations(sample))), "application/json"
    else:
        body, ctype = draw(S.bodies())
    headers = draw(S.HEADERS)
    if draw(st.integers(0, 3)):
        headers["x-bridge-token"] = S.TOKEN
    if ctype is not None:
        headers["content-type"] = ctype
    return {
        "path": "/hooks/" + quote(route, safe=""),
        "route": route,
        "method": draw(METHODS),
        "data": body,
        "headers": headers,
        "query_string": draw(QUERY),
    }


def check_answer(r, req: dict[str, Any]) -> None:
    """Status below 500 and a JSON body (or the source's documented other answer)."""
    detail = (req["method"], req["route"], r.status_code, r.data[:300])
    assert r.status_code < 500, detail
    if req["method"] == "HEAD":
        return  # no body to look at
    if r.mimetype == "application/json":
        body = json.loads(r.data)
        assert isinstance(body, dict), detail
        if r.status_code >= 400 or body.get("Status") == "Error":
            assert isinstance(body.get("error"), str) and body["error"], detail
            assert isinstance(body.get("message"), str) and body["message"].strip(), detail
        return
    if r.mimetype == "text/xml" and req["route"].startswith("salesforce"):
        root = SafeET.fromstring(r.data)  # SOAP Ack or Fault
        names = {el.tag.rsplit("}", 1)[-1] for el in root.iter()}
        assert ("Fault" in names) == (r.status_code >= 400), detail
        return
    if r.mimetype == "text/plain" and req["route"].startswith("meta_lead_ads"):
        assert req["method"] == "GET" and r.status_code == 200, detail
        assert r.data.decode() == req["query_string"]["hub.challenge"], detail
        return
    pytest.fail(f"unexpected {r.mimetype!r} answer: {detail}")


def crash_of(caplog) -> BaseException | None:
    """The exception behind a 500, from the app's ``log.exception``."""
    for record in caplog.records:
        if record.exc_info and record.name == "bridge.app":
            return record.exc_info[1]
    return None


@settings(FAST, max_examples=200)
@given(req=app_requests())
def test_app_never_answers_5xx_and_always_names_the_problem(app, caplog, req):
    caplog.clear()
    r = app.open(
        req["path"],
        method=req["method"],
        data=req["data"],
        headers=req["headers"],
        query_string=req["query_string"],
    )
    if r.status_code >= 500:
        crash = crash_of(caplog)
        tb = "".join(traceback.format_exception(crash)) if crash is not None else ""
        pytest.fail(f"{r.status_code} for {req['method']} {req['route']!r}:\n{tb}")
    check_answer(r, req)


# --- 3. mapping ----------------------------------------------------------------------------------


def mapping_route(**extra):
    data = {"name": "m", "source": "generic", "audience_name": "A", **extra}
    return build_settings({"routes": [data]}, env={}).routes["m"]


MAPPING_ROUTES = [
    mapping_route(),
    mapping_route(region="US", language="hi-IN"),
    mapping_route(
        fields={
            "phoneNumber": "fields.phone",
            "name": "fields.name",
            "email": "fields.email",
            "country": "fields.country",
            "language": "fields.language",
            "firstName": "fields.first",
        },
        metadata={
            "any": "fields.data",
            "all": "fields.*",
            "n": "length(fields.name)",
            "sorted": "sort(fields.values)",
            "hint": "hints.phone",
        },
    ),
]
HINT_VALUES = S.ODD_TEXT | S.HUGE_TEXT | S.PHONES | S.LEAVES
HINTS = st.fixed_dictionaries(
    {},
    optional={
        "name": HINT_VALUES,
        "first_name": HINT_VALUES,
        "last_name": HINT_VALUES,
        "phone": S.PHONES | HINT_VALUES,
        "email": HINT_VALUES,
        "country": st.sampled_from(["IN", "US", "GB", "in", "ZZ", "ÉÉ", " u s ", ""]) | HINT_VALUES,
    },
)
FIELDS = st.builds(
    lambda base, phone_key, phone: base | ({phone_key: phone} if phone_key else {}),
    S.JSON_OBJECTS,
    st.sampled_from([None, "phone", "Mobile Number", "contact.phone", "whatsapp", "tel"]),
    S.PHONES | S.NUMBERS,
)


def mapping_event(fields: dict, hints: dict) -> Event:
    return Event(
        route="m",
        source="generic",
        event_id="e1",
        received_at=RECEIVED_AT,
        fields=fields,
        hints=hints,
    )


@settings(FAST, max_examples=150)
@given(fields=FIELDS, hints=HINTS, which=st.integers(0, len(MAPPING_ROUTES) - 1))
def test_map_event_gives_a_valid_contact_or_unmappable(fields, hints, which):
    try:
        contact = map_event(mapping_event(fields, hints), MAPPING_ROUTES[which])
    except Unmappable as error:
        check_unmappable(error)
    else:
        check_contact(contact)


@settings(FAST, max_examples=80)
@given(fields=FIELDS, hints=HINTS, which=st.integers(0, len(MAPPING_ROUTES) - 1))
def test_map_event_metadata_stays_within_limits(fields, hints, which):
    try:
        contact = map_event(mapping_event(fields, hints), MAPPING_ROUTES[which])
    except Unmappable as error:
        check_unmappable(error)
    else:
        check_contact(contact, limits=True)


PHONE_INPUTS = (
    S.LEAVES
    | S.PHONES
    | st.integers()
    | st.integers(min_value=10**4299, max_value=10**4400)
    | st.lists(S.PHONES, max_size=2)
    | st.dictionaries(st.text(max_size=3), S.PHONES, max_size=2)
)


@settings(FAST, max_examples=200)
@given(
    value=PHONE_INPUTS,
    region=st.sampled_from(["IN", "US", "GB", "ZZ", "", "xx", "ÉÉ"]),
    hint=st.none()
    | st.sampled_from(["IN", "US", "in", "", "ZZ", "É1", "  "])
    | st.text(max_size=3),
)
def test_to_e164_returns_e164_or_raises_invalid_phone(value, region, hint):
    try:
        number = to_e164(value, region=region, country_hint=hint)
    except InvalidPhone as error:
        assert str(error).strip()
    else:
        check_phone(number)


# --- 4. named 4xx answers through the app --------------------------------------------------------


def refusal(r, route: str) -> dict[str, Any]:
    """The error body of a refusal, by the route's documented answer shape."""
    assert r.status_code < 500, (r.status_code, r.data[:300])
    if route.startswith("leadsquared"):  # refusals are 200 + Status: Error (documented)
        assert r.status_code == 200 and r.json["Status"] == "Error", r.json
        return r.json
    assert 400 <= r.status_code < 500, (r.status_code, r.data[:300])
    return r.json


def post(app, route: str, body: bytes, ctype: str | None = "application/json", **headers):
    h = {"x-bridge-token": S.TOKEN, **headers}
    if ctype is not None:
        h["content-type"] = ctype
    return app.post(f"/hooks/{route}", data=body, headers=h)


def nested_json(depth: int, leaf: bytes = b"1") -> bytes:
    return b'{"phone": "+919876543210", "x": ' + b"[" * depth + leaf + b"]" * depth + b"}"


def nested_xml(depth: int) -> bytes:
    return b"<lead><phone>+919876543210</phone>" + b"<x>" * depth + b"</x>" * depth + b"</lead>"


@pytest.mark.parametrize("route", S.SOURCES)
def test_5000_levels_of_json_are_400_naming_the_nesting(app, route):
    r = post(app, route, nested_json(5000))
    body = refusal(r, route)
    assert body["error"] == "malformed_body" and "nested" in body["message"], body


@pytest.mark.parametrize("route", S.SOURCES)
def test_invalid_utf8_is_400_naming_utf8(app, route):
    r = post(app, route, b'{"name": "Asha \xff\xfe", "phone": "+919876543210"}')
    body = refusal(r, route)
    assert body["error"] == "malformed_body" and "UTF-8" in body["message"], body


@pytest.mark.parametrize("codec", ["utf-16", "utf-32", "cp1252"])
def test_json_in_another_encoding_is_400_naming_utf8(app, codec):
    text = json.dumps({"name": "Zoë Ünal", "phone": "+919876543210"}, ensure_ascii=False)
    r = post(app, "generic", text.encode(codec), "application/json; charset=" + codec)
    body = refusal(r, "generic")
    assert body["error"] == "malformed_body" and "UTF-8" in body["message"], body


@pytest.mark.parametrize("route", APP_ROUTE_NAMES)
def test_body_over_max_body_bytes_is_413(app, route):
    r = post(app, route, b'{"phone": "' + b"9" * MAX_BODY + b'"}')
    assert r.status_code == 413, (r.status_code, r.data[:200])
    assert r.json["error"] == "body_too_large" and str(MAX_BODY) in r.json["message"]


def test_over_long_phone_is_422_naming_the_phone(app):
    r = post(app, "generic", json.dumps({"name": "Asha", "phone": "9" * 5000}).encode())
    assert r.status_code == 422, r.json
    assert r.json["field"] == "phoneNumber" and "too long" in r.json["message"], r.json


def test_over_long_fields_are_accepted_and_capped(app):
    lead = {"name": "N" * 5000, "phone": "+919876543210", "note": "é" * 20_000, "🙂" * 300: "v"}
    r = post(app, "generic", json.dumps(lead, ensure_ascii=False).encode())
    assert r.status_code == 202, r.json
    contact = app.store.get(r.json["deliveryId"]).contact
    check_contact(contact, limits=True)
    assert contact["name"] == "N" * MAX_NAME_CHARS


def test_over_long_route_name_and_odd_route_names_are_404_json(app):
    for name in ["x" * 5000, "%00", "..", "🙂", "a%2Fb", " "]:
        r = app.post(f"/hooks/{name}", json={"phone": "+919876543210"})
        assert r.status_code == 404, (name, r.status_code)
        assert r.json["error"] in ("unknown_route", "not_found") and r.json["message"]


def test_multipart_without_boundary_is_400_naming_it(app):
    r = post(app, "generic", b"--x\r\n\r\n", "multipart/form-data")
    body = refusal(r, "generic")
    assert "boundary" in body["message"], body


@pytest.mark.parametrize("route", ["generic", "salesforce", "zapier", "zoho_crm", "freshsales"])
def test_xml_with_entities_is_400_naming_them(app, route):
    bomb = (
        b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
        b'<!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;">]><lead><phone>&lol2;</phone></lead>'
    )
    r = post(app, route, bomb, "text/xml")
    assert r.status_code == 400, (r.status_code, r.data[:300])
    assert b"entities" in r.data, r.data[:300]


XML_SOURCES = ["generic", "zapier", "zoho_crm", "freshsales", "salesforce"]


def deep_xml_for(route: str, depth: int) -> bytes:
    """A deep XML body the route reads element by element."""
    if route == "salesforce":
        body = S.salesforce_message([{"Phone": "+919876543210", "Note": "DEEP"}])
        return body.replace(b">DEEP<", b">" + b"<x>" * depth + b"</x>" * depth + b"<")
    return nested_xml(depth)


@pytest.mark.parametrize("route", XML_SOURCES)
def test_5000_levels_of_xml_are_400_naming_the_nesting(app, route):
    body = deep_xml_for(route, 5000)
    assert b"<x><x><x>" in body
    r = post(app, route, body, "text/xml")
    assert r.status_code == 400, (r.status_code, r.data[:300])
    assert b"nested" in r.data, r.data[:300]


def nested_objects(depth: int) -> bytes:
    return b'{"phone": "+919876543210", "x": ' + b'{"a": ' * depth + b"1" + b"}" * depth + b"}"


@settings(FAST, max_examples=20)
@given(
    depth=st.integers(1, 3000),
    kind=st.sampled_from(["lists", "objects", "xml"]),
    route=st.sampled_from(XML_SOURCES + ["typeform", "jotform", "hubspot", "webflow"]),
)
def test_any_nesting_depth_is_refused_or_accepted_never_500(app, depth, kind, route):
    if kind == "xml" and route not in XML_SOURCES:
        kind = "objects"
    if kind == "xml":
        body = deep_xml_for(route, depth)
    else:
        body = nested_json(depth) if kind == "lists" else nested_objects(depth)
    if route == "jotform":
        body = S.multipart([("rawRequest", body.decode())])
        r = post(app, route, body, f"multipart/form-data; boundary={S.BOUNDARY}")
    else:
        r = post(app, route, body, "text/xml" if kind == "xml" else "application/json")
    assert r.status_code < 500, (depth, kind, route, r.status_code, r.data[:300])
    if r.status_code >= 400 and r.mimetype == "application/json":
        assert r.json["message"], r.json


def test_integer_literal_over_4300_digits_is_400(app):
    r = post(app, "generic", b'{"phone": ' + b"9" * 5000 + b"}")
    body = refusal(r, "generic")
    assert body["error"] == "malformed_body", body


def test_jotform_raw_request_with_huge_integer_is_400(app):
    body = S.multipart([("rawRequest", '{"q3_phone": ' + "9" * 5000 + "}")])
    r = post(app, "jotform", body, f"multipart/form-data; boundary={S.BOUNDARY}")
    body = refusal(r, "jotform")
    assert body["error"] == "malformed_body", body


# --- 5. the bugs these tests found, pinned by a minimal input -----------------------------------


class Counting:
    """Wraps a module-level function and counts its calls (recursive ones included, since they
    go through the module global)."""

    def __init__(self, function):
        self.function = function
        self.calls = 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.function(*args, **kwargs)


def nested_list(depth: int) -> list:
    return json.loads("[" * depth + '"x"' + "]" * depth)


@pytest.mark.parametrize("function, key", [("scalar", "note"), ("text", "name")])
def test_nested_lists_map_in_linear_time(monkeypatch, function, key):
    """mapping.scalar / text called themselves twice per list item: 2**depth calls, so ~100
    bytes of lists nested 40 deep (inside the 64-level parse limit) hung a web worker."""
    import bridge.mapping

    counter = Counting(getattr(bridge.mapping, function))
    monkeypatch.setattr(bridge.mapping, function, counter)
    depth = 14  # was 2**15 calls; a few dozen when linear
    fields = {"phone": "+919876543210", key: nested_list(depth)}
    map_event(mapping_event(fields, {}), MAPPING_ROUTES[0])
    assert counter.calls <= 20 * depth, counter.calls


def test_typeform_token_of_nested_lists_normalizes_in_linear_time(monkeypatch):
    """Adapters call mapping.text on raw payload values: normalize itself hung."""
    import bridge.mapping

    counter = Counting(bridge.mapping.text)
    monkeypatch.setattr(bridge.mapping, "text", counter)
    depth = 14
    payload = {"form_response": {"token": nested_list(depth), "answers": []}}
    get_source("typeform").normalize(request(b""), payload, ROUTES["typeform"][0])
    assert counter.calls <= 20 * depth, counter.calls


class CountingDict(dict):
    lookups = 0

    def __contains__(self, key):
        CountingDict.lookups += 1
        return super().__contains__(key)


@pytest.mark.parametrize("source_name", ["typeform", "tally"])
def test_repeated_answer_keys_normalize_in_linear_time(monkeypatch, source_name):
    """put_field probed 'key (2)', 'key (3)'... from 2 for every repeat: quadratic (430 KB of
    answers sharing one ref took 18 s)."""
    module = __import__(f"bridge.sources.{source_name}", fromlist=["Lead"])
    monkeypatch.setattr(module, "Lead", lambda **kw: Lead(**({"fields": CountingDict()} | kw)))
    CountingDict.lookups = 0
    n = 300
    if source_name == "typeform":
        answers = [{"type": "text", "text": "a", "field": {"ref": "k"}}] * n
        payload = {"form_response": {"token": "t", "answers": answers}}
    else:
        items = [{"type": "INPUT_TEXT", "label": "k", "value": "a"}] * n
        payload = {"data": {"responseId": "r", "fields": items}}
    (lead,) = get_source(source_name).normalize(request(b""), payload, ROUTES[source_name][0])
    assert len(lead.fields) == n
    assert CountingDict.lookups <= 10 * n, CountingDict.lookups


@pytest.mark.parametrize("route", ["generic", "wordpress"])
def test_latin1_form_post_is_400_naming_utf8(app, route):
    """Was 422 'no phone number' (generic) and 202 skipped with no fields (wordpress)."""
    body = b"phone=%2B919876543210&name=Jos\xe9"  # an old PHP site posting ISO-8859-1
    r = post(app, route, body, "application/x-www-form-urlencoded")
    assert r.status_code == 400, (r.status_code, r.json)
    assert "UTF-8" in r.json["message"], r.json


PHONE = "+919876543210"
BATCHES = {
    "zapier": [{"phone": PHONE}] * 5000,
    "standard_webhooks": {"type": "lead.created", "data": [{"phone": PHONE}] * 5000},
    "salesforce": [{"Phone": PHONE}] * 5000,
    "indiamart": {"RESPONSE": [{"SENDER_MOBILE": PHONE, "UNIQUE_QUERY_ID": "1"}] * 5000},
    "hubspot": [{"subscriptionType": "contact.creation", "objectId": 1, "eventId": 2}] * 5000,
    "leadsquared": [{"Mobile": PHONE}] * 5000,
    "meta_lead_ads": {
        "object": "page",
        "entry": [{"changes": [{"field": "leadgen", "value": {"leadgen_id": "1"}}] * 5000}],
    },
}


@pytest.mark.parametrize("route", list(BATCHES))
def test_a_batch_of_5000_records_is_refused_naming_the_count(big_app, route):
    """Only Zapier capped its batches: 22,000 records (870 KB) held the app for ~58 s."""
    body = S.dumps(BATCHES[route])
    assert MAX_BODY < len(body) < big_app.settings.max_body_bytes
    r = post(big_app, route, body)
    body = refusal(r, route)
    assert "5000" in body["message"], body


@pytest.mark.parametrize("value", ["4960200000000000", 49602000000000000, 4.9602e16])
def test_to_e164_never_answers_more_than_15_digits(value):
    """The no-'+' fallback returned format_number unchecked: '+4960200000000000', 16 digits."""
    try:
        number = to_e164(value, region="IN")
    except InvalidPhone:
        return
    assert E164.match(number), number


def test_16_digit_number_without_plus_is_unmappable_not_queued(app):
    r = post(app, "generic", b'{"name": "Asha", "phone": "4960200000000000"}')
    assert r.status_code == 422, (r.status_code, r.json)


def test_to_e164_huge_integer_is_invalid_phone():
    """str() of an int over 4300 digits raised ValueError, not InvalidPhone."""
    with pytest.raises(InvalidPhone):
        to_e164(10**5000, region="IN")


@pytest.mark.parametrize(
    "fields",
    [
        {f"field_{i}": "x" for i in range(MAX_METADATA_KEYS)}
        | {"phone": "+919876543210", "email": "asha@example.com"},
        {"phone": "+919876543210", "email": "a@" + "x" * 5000 + ".com"},
    ],
    ids=["51-keys", "long-email"],
)
def test_map_event_email_stays_within_the_metadata_limits(fields):
    """metadata['email'] was added after the 50-key cap and without the 1000-character cap."""
    contact = map_event(mapping_event(fields, {}), MAPPING_ROUTES[0])
    assert len(contact["metadata"]) <= MAX_METADATA_KEYS, len(contact["metadata"])
    assert len(contact["metadata"]["email"]) <= MAX_METADATA_VALUE_CHARS


@pytest.mark.parametrize("token", [True, False], ids=["token-header", "token-in-body"])
def test_zoho_xml_declaring_an_unknown_encoding_is_4xx(app, token):
    """Without the token header, verify reads the body for a 'token' parameter: it crashed
    there too (500)."""
    body = b'<?xml version="1.0" encoding="bogus"?><Lead><Mobile>1</Mobile></Lead>'
    headers = {"content-type": "text/xml"} | ({"x-bridge-token": S.TOKEN} if token else {})
    r = app.post("/hooks/zoho_crm", data=body, headers=headers)
    assert 400 <= r.status_code < 500, (r.status_code, r.data[:300])


def test_wordpress_gravity_entry_with_an_unparsable_source_url_is_accepted(app):
    """urlsplit('http://[') raised ValueError: Invalid IPv6 URL (500)."""
    entry = {"id": "7", "form_id": "1", "2": "+919876543210", "source_url": "http://["}
    r = post(app, "wordpress", json.dumps(entry).encode())
    assert r.status_code == 202, (r.status_code, r.data[:300])


@pytest.mark.parametrize(
    "route, body",
    [
        ("zapier", b'{"event_id": "\\ud800", "phone": "+919876543210"}'),
        ("typeform", b'{"form_response": {"token": "\\udc80", "answers": []}}'),
    ],
)
def test_lone_surrogate_in_an_event_id_is_400_naming_it(app, route, body):
    """A \\ud800 escape reached the Redis dedup key: UnicodeEncodeError (500)."""
    r = post(app, route, body)
    assert r.status_code == 400, (r.status_code, r.data[:300])
    assert "surrogate" in r.json["message"], r.json


def test_multipart_of_more_than_10000_parts_is_4xx_naming_the_parts(big_app):
    """Was werkzeug's RequestEntityTooLarge: 413 'the body is larger than 1048576 bytes' for a
    body a third that size."""
    body = S.multipart([("a", "1")] * 10_001)
    assert len(body) < big_app.settings.max_body_bytes
    r = post(big_app, "generic", body, f"multipart/form-data; boundary={S.BOUNDARY}")
    assert 400 <= r.status_code < 500, (r.status_code, r.data[:300])
    assert "part" in r.json["message"] or "field" in r.json["message"], r.json


@pytest.mark.parametrize("path", ["/hooks//generic", "/hooks/%2Fgeneric"])
def test_double_slash_hook_path_is_answered_json(app, path):
    r = app.post(path, json={"phone": "+919876543210"}, headers={"x-bridge-token": S.TOKEN})
    assert r.status_code < 500 and r.mimetype == "application/json", (r.status_code, r.data[:80])
    assert r.json["error"] and r.json["message"], r.json
