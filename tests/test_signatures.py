"""bridge.signatures: one valid request signed by a scheme described as data, then one broken
thing per test; the order of the checks; several valid secrets at once; tokens and Basic."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest

from bridge.event import InboundRequest
from bridge.exceptions import SignatureInvalid
from bridge.signatures import (
    Scheme,
    check_basic_auth,
    check_scheme,
    check_schemes,
    check_token,
    check_window,
    read_timestamp,
)
from bridge.sources import get_source, source_names
from bridge.sources.base import Source

NOW = 1_767_225_600  # 2026-01-01T00:00:00Z
SECRET = "scheme-test-secret-1a2b"
NEW_SECRET = "scheme-test-secret-9z8y"
BODY = b'{"phone": "+919876543210"}'

#: A Calendly-like scheme: timestamp and signatures as entries of one header.
IN_HEADER = Scheme(
    header="x-sig",
    signed="{timestamp}.{body}",
    separator=",",
    prefix="v1=",
    timestamp_prefix="t=",
    tolerance=180,
)
#: A Standard-Webhooks-like scheme: id and millisecond timestamp headers, base64 entries.
WITH_ID = Scheme(
    header="x-sig",
    signed="{id}.{timestamp}.{body}",
    encoding="base64",
    separator=" ",
    prefix="v1,",
    timestamp_header="x-ts",
    timestamp_unit="ms",
    id_header="x-id",
)


def mac(secret: str, message: bytes) -> bytes:
    return hmac.new(secret.encode(), message, hashlib.sha256).digest()


def in_header(secret=SECRET, t=NOW, body=BODY, header=None) -> InboundRequest:
    sig = mac(secret, f"{t}.".encode() + body).hex()
    value = f"t={t},v1={sig}" if header is None else header
    return InboundRequest(method="POST", route="r", body=body, headers={"x-sig": value})


def with_id(secret=SECRET, ms=NOW * 1000, msg_id="msg_1", **headers) -> InboundRequest:
    sig = base64.b64encode(mac(secret, f"{msg_id}.{ms}.".encode() + BODY)).decode()
    base = {"x-sig": f"v1,{sig}", "x-ts": str(ms), "x-id": msg_id}
    base.update({k.replace("_", "-"): v for k, v in headers.items()})
    return InboundRequest("POST", "r", BODY, {k: v for k, v in base.items() if v is not None})


def reason(req, scheme=IN_HEADER, secrets=SECRET, now=NOW) -> SignatureInvalid:
    with pytest.raises(SignatureInvalid) as info:
        check_scheme(req, scheme, secrets, now)
    return info.value


# --- valid requests -------------------------------------------------------------------------------


def test_valid_requests_pass():
    check_scheme(in_header(), IN_HEADER, SECRET, NOW)
    check_scheme(with_id(), WITH_ID, SECRET, NOW)


def test_any_of_several_secrets_is_enough():
    for secret in (SECRET, NEW_SECRET):
        check_scheme(in_header(secret), IN_HEADER, [SECRET, NEW_SECRET], NOW)
        check_scheme(with_id(secret), WITH_ID, [SECRET, NEW_SECRET], NOW)
    assert reason(in_header("a-third-secret"), secrets=[SECRET, NEW_SECRET]).reason == (
        "bad_signature"
    )


def test_any_of_several_signatures_in_the_header_is_enough():
    good = in_header().headers["x-sig"].split(",")[1]
    forged = "v1=" + "00" * 32
    check_scheme(
        in_header(header=f"t={NOW},{forged},v2=abc,{good.upper()}"), IN_HEADER, SECRET, NOW
    )


def test_hex_is_read_in_any_case():
    sig = mac(SECRET, BODY).hex().upper()
    req = InboundRequest("POST", "r", BODY, {"x-sig": f"SHA256={sig}"})
    check_scheme(req, Scheme(header="x-sig", prefix="sha256="), SECRET)


# --- one broken thing each, in the order the checks run ------------------------------------------


def test_missing_header_comes_first():
    req = InboundRequest("POST", "r", BODY, {})
    assert reason(req).reason == "missing_header"
    assert reason(with_id(x_id=None), WITH_ID).message == "missing x-id header"
    assert reason(with_id(x_ts=None), WITH_ID).message == "missing x-ts header"


def test_an_unreadable_timestamp_is_refused_before_the_signature_is_looked_at():
    forged = in_header(header="t=soon,v1=" + "00" * 32)
    assert reason(forged).reason == "bad_timestamp"
    assert reason(in_header(header="v1=" + "00" * 32)).reason == "bad_timestamp"
    assert reason(with_id(x_ts="1.5e12"), WITH_ID).reason == "bad_timestamp"


def test_the_signature_is_checked_before_the_window():
    # A forgery dated long ago counts as a forgery; a genuine request sent late as stale.
    assert reason(in_header("not-the-secret", t=NOW - 3600)).reason == "bad_signature"
    assert reason(in_header(t=NOW - 3600)).reason == "stale_timestamp"


def test_a_timestamp_outside_the_tolerance_either_way():
    late = reason(in_header(t=NOW - 181))
    assert late.reason == "stale_timestamp"
    assert late.message.startswith("timestamp is 181 s old")
    ahead = reason(in_header(t=NOW + 181))
    assert ahead.reason == "stale_timestamp"
    assert ahead.message.startswith("timestamp in the future: 181 s ahead")
    check_scheme(in_header(t=NOW + 180), IN_HEADER, SECRET, NOW)
    check_scheme(in_header(t=NOW - 180), IN_HEADER, SECRET, NOW)


def test_milliseconds_are_read_as_milliseconds():
    assert reason(with_id(ms=(NOW + 301) * 1000), WITH_ID).reason == "stale_timestamp"
    assert reason(with_id(ms=NOW), WITH_ID).reason == "stale_timestamp"  # seconds: 1970


def test_a_changed_signed_header_breaks_the_signature():
    req = with_id()
    moved = InboundRequest("POST", "r", BODY, dict(req.headers, **{"x-id": "msg_2"}))
    assert reason(moved, WITH_ID).reason == "bad_signature"


def test_a_header_without_a_signature_entry_names_what_it_has():
    error = reason(in_header(header=f"t={NOW},v0=abc,v1="))
    assert error.reason == "bad_signature"
    assert error.message == "x-sig has no v1=<hex digest> entry (it has t, v0, v1)"


def test_an_unreadable_signature_is_a_bad_signature():
    assert reason(in_header(header=f"t={NOW},v1=not-hex")).reason == "bad_signature"
    assert reason(with_id(x_sig="v1,***"), WITH_ID).reason == "bad_signature"


def test_no_secret_in_any_message():
    for req in (in_header("other"), in_header(t=NOW + 999), in_header(header="garbage")):
        assert SECRET not in reason(req, secrets=[SECRET, NEW_SECRET]).message
        assert NEW_SECRET not in reason(req, secrets=[SECRET, NEW_SECRET]).message


def test_a_secret_the_scheme_cannot_use():
    unusable = Scheme(header="x-sig", key=lambda secret: None)
    assert reason(in_header(), unusable).reason == "no_secret"


# --- alternatives, helpers, the schemes themselves ------------------------------------------------


def test_alternative_schemes_any_present_one_that_matches():
    sha256 = Scheme(header="x-a", prefix="sha256=")
    sha1 = Scheme(header="x-b", prefix="sha1=", digest="sha1")
    good_sha1 = hmac.new(SECRET.encode(), BODY, hashlib.sha1).hexdigest()
    both = InboundRequest("POST", "r", BODY, {"x-a": "sha256=00", "x-b": f"sha1={good_sha1}"})
    check_schemes(both, (sha256, sha1), SECRET)
    with pytest.raises(SignatureInvalid) as info:
        check_schemes(InboundRequest("POST", "r", BODY, {}), (sha256, sha1), SECRET)
    assert info.value.message == "missing x-a header"


@pytest.mark.parametrize(
    "changes",
    [
        {"signed": "{timestamp}.{body}"},  # a timestamp signed but found nowhere
        {"signed": "{id}.{body}"},  # an id signed but no id header
        {"signed": "{nonce}{body}"},
        {"signed": "{timestamp}", "timestamp_header": "x-ts"},  # the body unsigned
        {"encoding": "base32"},
        {"timestamp_header": "x-ts", "timestamp_unit": "us", "signed": "{timestamp}{body}"},
        {"timestamp_prefix": "t=", "signed": "{timestamp}{body}"},  # no entries to find it in
    ],
)
def test_an_inconsistent_scheme_is_refused_when_it_is_declared(changes):
    with pytest.raises(ValueError):
        Scheme(header="x-sig", **changes)


def test_read_timestamp_and_window():
    assert read_timestamp(" 1767225600123 ", "ms") == pytest.approx(1767225600.123)
    for text in ("", "-5", "12.5", "١٢٣", "soon"):
        with pytest.raises(SignatureInvalid):
            read_timestamp(text, "s")
    check_window(NOW + 10, 10, now=NOW)
    with pytest.raises(SignatureInvalid, match="in the future"):
        check_window(NOW + 11, 10, now=NOW)


def test_tokens_and_basic_credentials_take_several_values():
    for token in ("old-token-1", "new-token-2"):
        check_token(
            InboundRequest("POST", "r", headers={"x-bridge-token": token}),
            ["old-token-1", "new-token-2"],
        )
    with pytest.raises(SignatureInvalid) as info:
        check_token(InboundRequest("POST", "r", query={"token": "other"}), ("new-token-2",))
    assert info.value.reason == "bad_token"
    for user in ("zap:old", "zap:new"):
        auth = "Basic " + base64.b64encode(user.encode()).decode()
        check_basic_auth(
            InboundRequest("POST", "r", headers={"authorization": auth}), ["zap:old", "zap:new"]
        )


def test_every_signed_source_declares_its_schemes_as_data_but_hubspot():
    sources = [get_source(name) for name in source_names()]
    signed = {s.name for s in sources if s.signs}
    by_data = {s.name for s in sources if s.schemes}
    assert by_data <= signed
    assert signed - by_data == {"hubspot"}
    assert type(get_source("hubspot")).verify is not Source.verify
    for source in sources:
        for scheme in source.schemes:
            assert scheme.header == scheme.header.lower()
