"""Turn a webhook body into Python data by its content type: JSON, forms, multipart, XML.

Pure functions of the raw bytes; every failure is a ``MalformedBody`` that names the problem.
"""

from __future__ import annotations

import io
import json
from typing import Any
from xml.etree.ElementTree import Element

from defusedxml import ElementTree as SafeET
from defusedxml.common import DefusedXmlException
from werkzeug.datastructures import MultiDict
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.formparser import FormDataParser
from werkzeug.http import parse_options_header
from werkzeug.sansio.multipart import Data, Epilogue, Field, MultipartDecoder

from bridge.event import InboundRequest
from bridge.exceptions import MalformedBody, UnsupportedMediaType

JSON_TYPES = ("application/json", "text/json")
FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")
XML_TYPES = ("text/xml", "application/xml", "application/soap+xml")
#: Real webhook payloads nest a handful of levels; deeper is garbage (or an attack on the
#: recursion of everything that walks the data later).
MAX_JSON_DEPTH = 64
#: Fields in one form post; a lead form has dozens.
MAX_FORM_PARTS = 10_000


def parse_body(req: InboundRequest) -> Any:
    """Parse by ``Content-Type`` (sniffing when it is missing or ``text/plain``)."""
    kind = media_kind(req)
    if kind == "json":
        return parse_json(req.body)
    if kind == "form":
        return parse_form(req)
    if kind == "xml":
        return parse_xml(req.body)
    raise UnsupportedMediaType(
        f"cannot read a body of type {req.content_type!r}: send JSON, a form or XML"
    )


def media_kind(req: InboundRequest) -> str:
    ctype = req.content_type
    if ctype in JSON_TYPES or ctype.endswith("+json"):
        return "json"
    if ctype in FORM_TYPES:
        return "form"
    if ctype in XML_TYPES or ctype.endswith("+xml"):
        return "xml"
    if ctype in ("", "text/plain", "application/octet-stream"):
        head = req.body.lstrip()[:1]
        if head in (b"{", b"["):
            return "json"
        if head == b"<":
            return "xml"
        if b"=" in req.body[:2048]:
            return "form"
        if not req.body.strip():
            return "json"
    return "unknown"


def decode_text(body: bytes) -> str:
    try:
        return body.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise MalformedBody(f"body is not valid UTF-8 (byte {exc.start})") from None


def parse_json(body: bytes | str, what: str = "body") -> Any:
    """JSON → data, refusing what later code could not handle: nesting deeper than
    ``MAX_JSON_DEPTH`` and integer literals past Python's digit limit."""
    text = decode_text(body) if isinstance(body, bytes) else body
    if not text.strip():
        raise MalformedBody(f"{what} is empty: expected a JSON document")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise MalformedBody(
            f"{what} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except RecursionError:
        raise MalformedBody(f"{what} is not valid JSON: nested too deeply") from None
    except ValueError as exc:  # e.g. an integer literal of more than 4300 digits
        raise MalformedBody(f"{what} is not usable JSON: {exc}"[:200]) from None
    if isinstance(body, bytes) and not may_be_unusable(text, MAX_JSON_DEPTH):
        return data
    problem = json_problem(data, MAX_JSON_DEPTH)
    if problem:
        raise MalformedBody(f"{what} {problem}")
    return data


def may_be_unusable(text: str, limit: int) -> bool:
    """Whether JSON ``text`` decoded from UTF-8 may hold what ``json_problem`` finds, so that
    most bodies need no walk: nesting deeper than ``limit`` takes more than ``limit`` brackets,
    and such text can hold a lone surrogate only as a ``\\u`` escape."""
    return "\\u" in text or text.count("{") + text.count("[") > limit


def json_problem(data: Any, limit: int) -> str | None:
    """What makes parsed JSON unusable, if anything: nesting deeper than ``limit``, or text
    that is not Unicode (a lone surrogate escape such as ``\\ud800``, which no store or API can
    encode). Iterative: no recursion limit."""
    stack = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                return "holds a \\u escape that is not a character (a lone surrogate)"
            continue
        if isinstance(value, dict):
            stack.extend((key, depth) for key in value)
            children = value.values()
        elif isinstance(value, list):
            children = value
        else:
            continue
        if depth > limit:
            return f"is nested deeper than {limit} levels"
        stack.extend((child, depth + 1) for child in children)
    return None


def parse_form(req: InboundRequest) -> dict[str, Any]:
    """Form-encoded or multipart body → dict; a repeated key becomes a list, files are ignored.
    Text must be UTF-8, or, in a multipart part, the charset the part declares."""
    header = req.header("content-type") or "application/x-www-form-urlencoded"
    mimetype, _, params = header.partition(";")
    options = {}
    for part in params.split(";"):
        key, _, value = part.strip().partition("=")
        if key:
            options[key.lower()] = value.strip('"')
    mimetype = mimetype.strip().lower() or "application/x-www-form-urlencoded"
    if mimetype not in FORM_TYPES:
        mimetype = "application/x-www-form-urlencoded"
    if mimetype == "multipart/form-data" and not options.get("boundary"):
        raise MalformedBody("multipart body without a boundary in its Content-Type")
    try:
        if mimetype == "multipart/form-data":
            form = parse_multipart(req.body, options["boundary"])
        else:
            # silent=False: werkzeug would otherwise answer an empty form for one it cannot
            # read, and every field would vanish without a word.
            parser = FormDataParser(max_form_parts=MAX_FORM_PARTS, silent=False)
            _, form, _files = parser.parse(io.BytesIO(req.body), mimetype, len(req.body), options)
    except UnicodeDecodeError as exc:
        raise MalformedBody(
            f"form body is not valid UTF-8 (byte {exc.start}): send it as UTF-8"
        ) from None
    except ValueError as exc:
        raise MalformedBody(f"form body could not be read: {exc}") from None
    except RequestEntityTooLarge:
        raise MalformedBody(f"form body has more than {MAX_FORM_PARTS} fields") from None
    return multidict_to_dict(form)


def parse_multipart(body: bytes, boundary: str) -> MultiDict:
    """The text fields of a multipart body (parts with a filename are files: left out).

    werkzeug's own multipart parser decodes each value with ``errors="replace"``, so a part in
    Latin-1 would be stored with its accents turned into U+FFFD, without a word; its decoder
    splits the body and the values are decoded here, strictly."""
    decoder = MultipartDecoder(boundary.encode("latin-1"), max_parts=MAX_FORM_PARTS)
    decoder.receive_data(body)
    decoder.receive_data(None)
    fields: list[tuple[str, str]] = []
    part: Field | None = None
    chunks: list[bytes] = []
    while not isinstance(event := decoder.next_event(), Epilogue):
        if isinstance(event, Data):
            chunks.append(event.data)
            if not event.more_data and part is not None:
                fields.append((part.name, field_text(part, b"".join(chunks))))
        else:  # a new part (its headers), or the preamble before the first one
            part = event if isinstance(event, Field) else None
            chunks = []
    return MultiDict(fields)


def field_text(part: Field, data: bytes) -> str:
    """A multipart field's value in the charset its part declares, else UTF-8."""
    name = (part.name or "")[:64]
    declared = parse_options_header(part.headers.get("content-type"))[1].get("charset")
    try:
        return data.decode(declared or "utf-8")
    except LookupError:  # an unknown name, or a codec that is not a text encoding (base64)
        raise MalformedBody(
            f"form field {name!r} declares charset {declared[:40]!r}, which is not a text "
            "encoding this bridge knows: send it as UTF-8"
        ) from None
    except UnicodeDecodeError as exc:
        if declared:
            problem = f"is not valid {declared[:40]} (byte {exc.start}), the charset it declares"
        else:
            problem = (
                f"is not valid UTF-8 (byte {exc.start}): send it as UTF-8, or declare its "
                "charset in the part's Content-Type"
            )
        raise MalformedBody(f"form field {name!r} {problem}") from None


def multidict_to_dict(form: MultiDict) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in form.keys():
        values = form.getlist(key)
        out[key] = values[0] if len(values) == 1 else values
    return out


def parse_xml(body: bytes) -> Element:
    if not body.strip():
        raise MalformedBody("body is empty: expected an XML document")
    try:
        return SafeET.fromstring(body)
    except DefusedXmlException:
        raise MalformedBody("XML body uses entities or a DTD, which are not accepted") from None
    except SafeET.ParseError as exc:
        raise MalformedBody(f"body is not valid XML: {exc}") from None
    except (LookupError, ValueError) as exc:  # an encoding the declaration names but we lack
        raise MalformedBody(f"XML body declares an encoding that cannot be read: {exc}") from None


def local_name(tag: str) -> str:
    """``{urn:namespace}Name`` → ``Name``."""
    return tag.rsplit("}", 1)[-1]


def xml_to_data(elem: Element, depth: int = 1) -> Any:
    """A namespace-free dict view of an element: text for leaves, lists for repeated children."""
    if depth > MAX_JSON_DEPTH:
        raise MalformedBody(f"XML body is nested deeper than {MAX_JSON_DEPTH} levels")
    children = list(elem)
    if not children:
        return (elem.text or "").strip()
    out: dict[str, Any] = {}
    for child in children:
        key = local_name(child.tag)
        value = xml_to_data(child, depth + 1)
        if key in out:
            if not isinstance(out[key], list):
                out[key] = [out[key]]
            out[key].append(value)
        else:
            out[key] = value
    return out
