"""Reading a webhook body by its content type (``bridge.parsing``): JSON, forms, multipart, XML,
sniffing when the type is missing, and a ``MalformedBody`` naming the problem for everything
that cannot be read whole."""

from __future__ import annotations

import codecs
import json

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from bridge import keys
from bridge.event import InboundRequest
from bridge.exceptions import IngestError, MalformedBody, UnsupportedMediaType
from bridge.parsing import (
    MAX_FORM_PARTS,
    MAX_JSON_DEPTH,
    parse_body,
    parse_json,
    parse_xml,
    xml_to_data,
)
from bridge.sources import get_source
from tests import strategies as S

FAST = settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
MULTIPART = f"multipart/form-data; boundary={S.BOUNDARY}"


def request(body: bytes, ctype: str | None = "application/json") -> InboundRequest:
    headers = {"content-type": ctype} if ctype is not None else {}
    return InboundRequest(method="POST", route="r", body=body, headers=headers)


def refused(body: bytes, ctype: str | None = "application/json") -> MalformedBody:
    with pytest.raises(MalformedBody) as error:
        parse_body(request(body, ctype))
    assert error.value.message.strip() and error.value.status == 400
    return error.value


# --- by content type, and sniffed without one ----------------------------------------------------

LEAD = {"name": "Asha", "phone": "+919876543210"}
AS_JSON = json.dumps(LEAD).encode()
AS_FORM = b"name=Asha&phone=%2B919876543210"
AS_XML = b"<lead><name>Asha</name><phone>+919876543210</phone></lead>"


@pytest.mark.parametrize(
    "body, ctype",
    [
        (AS_JSON, "application/json"),
        (AS_JSON, "application/json; charset=utf-8"),
        (AS_JSON, "APPLICATION/JSON"),
        (AS_JSON, "text/json"),
        (AS_JSON, "application/vnd.api+json"),
        (AS_JSON, None),
        (AS_JSON, "text/plain"),
        (b"  \n" + AS_JSON, "application/octet-stream"),
        (AS_FORM, "application/x-www-form-urlencoded"),
        (AS_FORM, None),
        (AS_FORM, "text/plain"),
        (S.multipart(list(LEAD.items())), MULTIPART),
    ],
)
def test_json_and_forms_read_the_same_by_type_or_by_sniffing(body, ctype):
    assert parse_body(request(body, ctype)) == LEAD


@pytest.mark.parametrize("ctype", ["text/xml", "application/xml", "application/atom+xml", None])
def test_xml_is_read_by_type_or_by_sniffing(ctype):
    assert xml_to_data(parse_body(request(AS_XML, ctype))) == LEAD


def test_empty_body_without_a_type_is_read_as_json_and_refused_as_empty():
    assert "empty" in refused(b"", None).message


@pytest.mark.parametrize("ctype", ["image/png", "text/html", "application/pdf"])
def test_other_types_are_415_naming_the_type(ctype):
    with pytest.raises(UnsupportedMediaType) as error:
        parse_body(request(AS_JSON, ctype))
    assert error.value.status == 415
    assert repr(ctype) in error.value.message


def test_plain_text_that_looks_like_nothing_is_415():
    with pytest.raises(UnsupportedMediaType):
        parse_body(request(b"just some words", "text/plain"))


# --- JSON -----------------------------------------------------------------------------------------


def test_a_utf8_byte_order_mark_is_accepted():
    assert parse_json(codecs.BOM_UTF8 + AS_JSON) == LEAD


def test_invalid_json_names_line_and_column():
    message = refused(b'{"name": "x",\n phone}').message
    assert "not valid JSON" in message and "line 2 column 2" in message


def test_invalid_utf8_names_the_byte():
    message = refused(b'{"name": "Jos\xe9"}').message
    assert "not valid UTF-8" in message and "byte 13" in message


def nested(depth: int) -> bytes:
    return b"[" * (depth - 1) + b"[1]" + b"]" * (depth - 1)


def test_nesting_up_to_the_limit_is_read_and_one_more_level_is_refused():
    assert parse_json(nested(MAX_JSON_DEPTH))
    message = refused(nested(MAX_JSON_DEPTH + 1)).message
    assert f"nested deeper than {MAX_JSON_DEPTH} levels" in message


def test_objects_count_towards_the_depth_too():
    depth = MAX_JSON_DEPTH + 1
    body = b'{"a": ' * depth + b"1" + b"}" * depth
    assert "nested deeper" in refused(body).message


@pytest.mark.parametrize("body", [b'{"name": "\\ud800"}', b'{"\\udc80": 1}', b'["\\udfff"]'])
def test_lone_surrogate_escapes_are_refused(body):
    assert "surrogate" in refused(body).message


def test_parse_json_huge_integer_is_malformed_body():
    with pytest.raises(IngestError):
        parse_json(b"[" + b"1" * 4301 + b"]")


# --- forms ----------------------------------------------------------------------------------------


def test_repeated_keys_become_a_list_in_order():
    assert parse_body(request(b"x=1&y=2&x=3", "application/x-www-form-urlencoded")) == {
        "x": ["1", "3"],
        "y": "2",
    }


def test_files_in_a_multipart_form_are_left_out():
    body = (
        f"--{S.BOUNDARY}\r\n"
        'Content-Disposition: form-data; name="phone"\r\n\r\n+919876543210\r\n'
        f"--{S.BOUNDARY}\r\n"
        'Content-Disposition: form-data; name="cv"; filename="cv.pdf"\r\n'
        "Content-Type: application/pdf\r\n\r\n%PDF-1.4 binary\r\n"
        f"--{S.BOUNDARY}--\r\n"
    ).encode()
    assert parse_body(request(body, MULTIPART)) == {"phone": "+919876543210"}


def test_multipart_without_a_boundary_is_refused_naming_it():
    assert "boundary" in refused(b"--x\r\n\r\n", "multipart/form-data").message


def test_multipart_of_more_parts_than_the_limit_is_refused_naming_the_limit():
    body = S.multipart([(f"k{i}", "1") for i in range(MAX_FORM_PARTS + 1)])
    assert str(MAX_FORM_PARTS) in refused(body, MULTIPART).message


def test_multipart_of_as_many_parts_as_the_limit_is_read():
    body = S.multipart([(f"k{i}", "1") for i in range(MAX_FORM_PARTS)])
    assert len(parse_body(request(body, MULTIPART))) == MAX_FORM_PARTS


def form_sent(pairs: list[tuple[str, str]]) -> dict:
    """The form a reader that loses nothing makes of ``pairs``."""
    values: dict[str, list[str]] = {}
    for key, value in pairs:
        values.setdefault(key, []).append(value)
    return {k: v[0] if len(v) == 1 else v for k, v in values.items()}


FORM_KEYS = st.text(st.characters(min_codepoint=97, max_codepoint=122), min_size=1, max_size=8)


@FAST
@example(
    pairs=[("phone", "+919876543210"), ("name", "Jos")],
    kind="urlencoded",
    corruption=b"\xe9",
    cut=None,
)
@example(pairs=[("phone", "+919876543210")], kind="multipart", corruption=b"", cut=-4)
@example(pairs=[("phone", "+919876543210")], kind="urlencoded", corruption=b"", cut=None)
@example(pairs=[("phone", "+919876543210")], kind="multipart", corruption=b"", cut=None)
@given(
    pairs=st.lists(st.tuples(FORM_KEYS, S.ODD_TEXT), min_size=1, max_size=5),
    kind=st.sampled_from(["urlencoded", "multipart"]),
    corruption=st.sampled_from([b"", b"\xe9", b"\xff\xfe", b"\xed\xa0\x80"]),
    cut=st.none() | st.integers(-40, -1),
)
def test_form_bodies_are_read_whole_or_refused_never_silently_emptied(pairs, kind, corruption, cut):
    """werkzeug's FormDataParser is silent by default: an unreadable form parsed as {} and
    every field vanished (then 'no phone number', or a 2xx 'skipped' for accept-sources)."""
    if kind == "urlencoded":
        body, ctype = S.form_encode(pairs) + corruption, "application/x-www-form-urlencoded"
    else:
        body = S.multipart(pairs)
        body = body[:cut] if cut else body.replace(b"\r\n\r\n", b"\r\n\r\n" + corruption, 1)
        ctype = MULTIPART
    try:
        form = parse_body(request(body, ctype))
    except IngestError as error:
        assert isinstance(error, MalformedBody) and error.message.strip(), error
        return
    sent = form_sent(pairs)
    # Bytes that are not UTF-8 are refused, in a form and in a multipart part alike (never
    # read with U+FFFD in their place).
    assert not (corruption and not cut), (form, pairs)
    # Every field is there, a form of one field included (read as {} it would pass a check
    # on "all fields but the last").
    assert set(form) == set(sent), (form, pairs)
    assert form == sent, (form, pairs)


def part(name: str, value: bytes, ctype: str | None = None) -> bytes:
    headers = f'Content-Disposition: form-data; name="{name}"\r\n'
    if ctype:
        headers += f"Content-Type: {ctype}\r\n"
    return f"--{S.BOUNDARY}\r\n{headers}\r\n".encode() + value + b"\r\n"


def multipart_of(*parts: bytes) -> bytes:
    return b"".join(parts) + f"--{S.BOUNDARY}--\r\n".encode()


PHONE_PART = part("phone", b"+919876543210")


def test_multipart_part_that_is_not_utf8_is_refused_naming_the_field():
    # werkzeug alone would store 'Jos\ufffd': the accent lost without a word.
    body = multipart_of(part("name", "José".encode("latin-1")), PHONE_PART)
    message = refused(body, MULTIPART).message
    assert message.startswith("form field 'name' is not valid UTF-8 (byte 3)")
    assert "declare its charset" in message


@pytest.mark.parametrize("charset", ["iso-8859-1", "latin1", "windows-1252", "ISO-8859-15"])
def test_multipart_part_is_read_in_the_charset_it_declares(charset):
    body = multipart_of(
        part("name", "José Müller".encode(charset), f"text/plain; charset={charset}"), PHONE_PART
    )
    assert parse_body(request(body, MULTIPART)) == {
        "name": "José Müller",
        "phone": "+919876543210",
    }


def test_multipart_part_declaring_utf8_must_be_utf8():
    body = multipart_of(part("city", b"M\xfcnchen", 'text/plain; charset="UTF-8"'), PHONE_PART)
    message = refused(body, MULTIPART).message
    assert message == "form field 'city' is not valid UTF-8 (byte 1), the charset it declares"


@pytest.mark.parametrize("charset", ["klingon-8", "base64"])
def test_multipart_part_declaring_a_charset_that_is_no_text_encoding_is_refused(charset):
    body = multipart_of(part("name", b"Asha", f"text/plain; charset={charset}"), PHONE_PART)
    message = refused(body, MULTIPART).message
    assert message.startswith(f"form field 'name' declares charset '{charset}'")


def test_a_webhook_with_a_latin1_part_is_answered_400_naming_the_field(make_client):
    client = make_client()
    body = multipart_of(part("name", "José".encode("latin-1")), PHONE_PART)
    r = client.post("/hooks/leads", data=body, content_type=MULTIPART)
    assert r.status_code == 400, r.text
    assert r.is_json and "form field 'name' is not valid UTF-8" in r.json["message"]
    assert client.redis.xlen(keys.RECEIVED_STREAM) == 0  # nothing stored with a mangled name


# --- XML ------------------------------------------------------------------------------------------


def test_namespaces_are_dropped_and_repeated_children_become_a_list():
    body = (
        b'<n:lead xmlns:n="urn:x" xmlns:m="urn:y"><n:phone> +919876543210 </n:phone>'
        b"<m:tag>a</m:tag><m:tag>b</m:tag><empty/></n:lead>"
    )
    assert xml_to_data(parse_xml(body)) == {
        "phone": "+919876543210",
        "tag": ["a", "b"],
        "empty": "",
    }


def test_xml_nested_past_the_limit_is_refused():
    depth = MAX_JSON_DEPTH + 1
    body = b"<x>" * depth + b"1" + b"</x>" * depth
    with pytest.raises(MalformedBody) as error:
        xml_to_data(parse_xml(body))
    assert "nested deeper" in error.value.message


@pytest.mark.parametrize(
    "body, words",
    [
        (b'<!DOCTYPE x [<!ENTITY e "boom">]><lead>&e;</lead>', "entities or a DTD"),
        (b"<lead><phone>1</lead>", "not valid XML"),
        (b"   ", "empty"),
    ],
)
def test_unreadable_xml_is_refused_naming_why(body, words):
    with pytest.raises(MalformedBody) as error:
        parse_xml(body)
    assert words in error.value.message


@pytest.mark.parametrize("encoding", ["bogus", "shift_jis", "rot13"])
def test_xml_declaring_an_unreadable_encoding_is_400_naming_it(encoding):
    """parse_xml let LookupError / ValueError escape (500)."""
    body = f'<?xml version="1.0" encoding="{encoding}"?><lead><phone>1</phone></lead>'.encode()
    req = request(body, "text/xml")
    with pytest.raises(IngestError) as refused:
        get_source("generic").parse(req)
    assert "encoding" in refused.value.message, refused.value.message
