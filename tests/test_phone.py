"""Phone numbers become E.164: the number's own +, then a hint from the payload, then the route."""

import pytest

from bridge.phone import InvalidPhone, to_e164


@pytest.mark.parametrize(
    "raw",
    [
        "098765 43210",
        "+91-98765-43210",
        "0091 98765 43210",
        "91 9876543210",
        "919876543210",
        "9876543210",
        "+91 98765 43210",
        "(987) 654-3210",
        9876543210,
        " +919876543210 ",
    ],
)
def test_indian_numbers_in_every_shape_become_the_same_e164(raw):
    assert to_e164(raw, region="IN") == "+919876543210"


def test_a_country_hint_beats_the_route_region():
    # With region IN alone this is a *valid* Indian landline: only the hint tells them apart.
    assert to_e164("(415) 555-0132", region="IN") == "+914155550132"
    assert to_e164("(650) 253-0000", region="IN", country_hint="US") == "+16502530000"


def test_a_number_with_plus_ignores_the_hint():
    assert to_e164("+44 20 7946 0958", region="IN", country_hint="US") == "+442079460958"


def test_a_hint_that_does_not_fit_falls_back_to_the_region():
    assert to_e164("98765 43210", region="IN", country_hint="US") == "+919876543210"


def test_json_number_from_webflow():
    assert to_e164(16502530000, region="IN") == "+16502530000"


@pytest.mark.parametrize(
    "raw, message",
    [
        ("", "empty"),
        ("   ", "empty"),
        (None, "empty"),
        ("12345", "not a valid phone number"),
        ("call me maybe", "not a valid phone number"),
        ("9" * 80, "too long"),
        (True, "empty"),
        (1.5, "not a phone number"),
        ({"a": 1}, "must be text"),
    ],
)
def test_unusable_values_say_why(raw, message):
    with pytest.raises(InvalidPhone, match=message):
        to_e164(raw, region="IN")
