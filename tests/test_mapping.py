"""Event → contact: route expressions, adapter hints, guesses by key name, metadata."""

import pytest

from bridge.config import build_settings
from bridge.event import Event, Lead
from bridge.exceptions import Unmappable
from bridge.mapping import map_event


def route(**overrides):
    data = {"name": "r", "source": "generic", "audience_name": "A", **overrides}
    return build_settings({"routes": [data]}, env={}).routes["r"]


def event(fields, **hints):
    lead = Lead(fields=fields, **hints)
    return Event.from_lead(
        lead, route="r", source="generic", event_id="e1", received_at="2026-01-01T00:00:00.000Z"
    )


def test_guesses_name_phone_email_and_keeps_the_rest_as_metadata():
    contact = map_event(
        event(
            {
                "Full Name": "Priya Sharma",
                "Mobile Number": "098765 43210",
                "Email": "priya@example.com",
                "city": "Mumbai",
                "utm": {"source": "fb"},
            }
        ),
        route(),
    )
    assert contact == {
        "name": "Priya Sharma",
        "phoneNumber": "+919876543210",
        "metadata": {"city": "Mumbai", "utm.source": "fb", "email": "priya@example.com"},
    }


def test_first_and_last_name_are_joined():
    contact = map_event(
        event({"first_name": "Ravi", "last_name": "Kumar", "whatsapp": "+91-98765-43210"}), route()
    )
    assert contact["name"] == "Ravi Kumar"
    assert contact["phoneNumber"] == "+919876543210"
    assert contact["metadata"] == {}


def test_without_a_name_the_phone_number_is_the_name():
    assert map_event(event({"phone": "9876543210"}), route())["name"] == "+919876543210"


def test_adapter_hints_beat_guesses():
    contact = map_event(
        event({"phone": "9876543210", "name": "Guess"}, name="Typed Name", phone="+14155550132"),
        route(),
    )
    assert contact["name"] == "Typed Name"
    assert contact["phoneNumber"] == "+14155550132"


def test_country_field_is_a_phone_hint():
    contact = map_event(event({"phone": "(650) 253-0000", "country": "US"}), route())
    assert contact["phoneNumber"] == "+16502530000"


def test_route_expressions_win_and_metadata_is_exactly_what_is_mapped():
    r = route(
        fields={
            "name": "fields.who.full",
            "phoneNumber": "fields.numbers[0]",
            "language": "'hi-IN'",
        },
        metadata={"city": "fields.where", "event": "event_id"},
    )
    contact = map_event(
        event(
            {
                "who": {"full": "Asha"},
                "numbers": ["0091 98765 43210"],
                "where": "Pune",
                "noise": "dropped",
            }
        ),
        r,
    )
    assert contact == {
        "name": "Asha",
        "phoneNumber": "+919876543210",
        "language": "hi-IN",
        "metadata": {"city": "Pune", "event": "e1"},
    }


def test_route_language_applies_and_bad_language_is_omitted():
    assert map_event(event({"phone": "9876543210"}), route(language="en-IN"))["language"] == "en-IN"
    r = route(fields={"language": "fields.lang"})
    assert "language" not in map_event(event({"phone": "9876543210", "lang": "Hindi"}), r)


def test_no_phone_is_unmappable_naming_the_field():
    with pytest.raises(Unmappable) as err:
        map_event(event({"name": "Priya", "city": "Mumbai"}), route())
    assert err.value.field == "phoneNumber"
    assert "no phone number" in err.value.message


def test_mapped_phone_expression_that_finds_nothing_says_so():
    with pytest.raises(Unmappable, match="fields.tel"):
        map_event(event({"phone": "9876543210"}), route(fields={"phoneNumber": "fields.tel"}))


def test_invalid_phone_is_unmappable_with_the_value():
    with pytest.raises(Unmappable, match="'12345' is not a valid phone number"):
        map_event(event({"phone": "12345"}), route())


def test_metadata_values_are_flat_and_capped():
    contact = map_event(
        event(
            {
                "phone": "9876543210",
                "tags": ["a", "b"],
                "long": "x" * 5000,
                "n": 3,
                "ok": True,
                "empty": "",
                "none": None,
            }
        ),
        route(),
    )
    md = contact["metadata"]
    assert md["tags"] == "a, b"
    assert len(md["long"]) == 1000
    assert md["n"] == 3 and md["ok"] is True
    assert "empty" not in md and "none" not in md


def test_name_is_trimmed_and_capped():
    contact = map_event(event({"name": "  " + "N" * 300, "phone": "9876543210"}), route())
    assert contact["name"] == "N" * 100


def test_fields_the_adapter_typed_are_not_repeated_in_metadata():
    contact = map_event(
        event(
            {
                "first_name": "Asha",
                "last_name": "Rao",
                "phone": "+919876543210",
                "email": "a@x.in",
                "note": "call after 6",
            },
            first_name="Asha",
            last_name="Rao",
            phone="+919876543210",
            email="a@x.in",
        ),
        route(),
    )
    assert contact["name"] == "Asha Rao"
    assert contact["metadata"] == {"note": "call after 6", "email": "a@x.in"}
