"""Secrets out of stored lead data, raw bodies and provider error text: one ``redact``."""

from __future__ import annotations

import pytest

from bridge.redaction import REDACTED, redact

TOKEN = "tok/en+with space&more"


def test_every_form_of_a_secret_is_replaced_at_any_depth():
    value = {
        "plain": f"token={TOKEN}",
        "url": "https://x/hooks/r?token=tok%2Fen%2Bwith%20space%26more",
        "form": "token=tok%2Fen%2Bwith+space%26more",
        "list": [1, None, [f"deep {TOKEN}"]],
        TOKEN: "as a key",
    }
    out = redact(value, [TOKEN])
    assert out == {
        "plain": f"token={REDACTED}",
        "url": f"https://x/hooks/r?token={REDACTED}",
        "form": f"token={REDACTED}",
        "list": [1, None, [f"deep {REDACTED}"]],
        REDACTED: "as a key",
    }
    assert value["plain"] == f"token={TOKEN}"  # the input is left as it was


def test_bytes_are_redacted_as_bytes():
    assert redact(b"a=sk_live_123456&b=2", ["sk_live_123456"]) == b"a=[redacted]&b=2"


def test_short_secrets_stay_in_lead_data_but_not_in_error_text():
    # "abc" would match ordinary words in a lead that is delivered with what is left
    assert redact({"city": "abcity"}, ["abc", ""]) == {"city": "abcity"}
    assert redact("token abc refused", ["abc"], min_chars=1) == "token [redacted] refused"


def test_an_empty_secret_changes_nothing():
    assert redact("text", ["", None], min_chars=1) == "text"  # type: ignore[list-item]


def test_a_secret_inside_a_longer_one_does_not_leave_the_rest_of_it_behind():
    short, long = "secret-1", "secret-1-and-more"
    assert redact(f"x {long} y", [short, long]) == f"x {REDACTED} y"


def test_values_that_are_not_text_pass_through():
    assert redact(12, ["123456"]) == 12
    assert redact(None, ["123456"]) is None


@pytest.mark.parametrize(
    "lead",
    [
        {"name": "Asha", "answers": {"utm": {"url": f"https://x/?token={TOKEN}"}}},
        {"name": "Asha", "url": "https://x/hooks/r?token=tok%2Fen%2Bwith%20space%26more"},
        {"name": "Asha", "form": "token=tok%2Fen%2Bwith+space%26more"},
        {"name": "Asha", "list": [1, None, {"deep": [f"{TOKEN}"]}]},
        {"name": "Asha", TOKEN: "as a key"},
        {"name": "Asha", "nested": {f"key {TOKEN}": 1}},
        {"name": "Asha", "raw": f"x{TOKEN}".encode()},
        [{"phone": "+919876543210"}, f"{TOKEN}"],
    ],
)
def test_a_lead_holding_one_secret_anywhere_has_it_replaced(lead):
    """Most leads hold no secret and are handed back without a copy; one that holds one,
    wherever and in whichever form, is not."""
    out = repr(redact(lead, [TOKEN]))
    assert REDACTED in out
    assert "tok/en" not in out and "tok%2F" not in out


def test_a_lead_without_a_secret_comes_back_as_it_was():
    lead = {"name": "Asha", "tags": ["a", 1, None, {"k": 2.5}], 7: "seven", "b": b"bytes"}
    assert redact(lead, [TOKEN]) == lead
