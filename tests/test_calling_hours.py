"""Calling hours with a fixed clock: inside, outside, across midnight, closed days, zones."""

from datetime import UTC, datetime

import pytest

from bridge.calling_hours import CallingHours, parse_days, zone, zones_for

KOLKATA = zone("Asia/Kolkata")
INDIAN = "+919876543210"


def at(text: str, tz=KOLKATA) -> datetime:
    """A moment written in local time of ``tz`` (default India)."""
    return datetime.fromisoformat(text).replace(tzinfo=tz)


def test_inside_the_hours_a_lead_is_called_now():
    hours = CallingHours.parse("09:00-21:00")
    assert hours.next_opening(at("2026-12-02T10:30"), [KOLKATA]) is None
    assert hours.next_opening(at("2026-12-02T09:00"), [KOLKATA]) is None  # the start is in


def test_after_hours_the_call_waits_for_the_next_morning():
    hours = CallingHours.parse("09:00-21:00")
    opening = hours.next_opening(at("2026-12-02T21:00"), [KOLKATA])  # the end is out
    assert opening == at("2026-12-03T09:00").astimezone(UTC)
    assert opening.tzinfo == UTC
    assert hours.next_opening(at("2026-12-03T06:15"), [KOLKATA]) == at("2026-12-03T09:00")


def test_a_window_across_midnight_is_open_on_both_sides_of_it():
    hours = CallingHours.parse("21:00-02:00", "Fri")
    assert hours.next_opening(at("2026-12-04T23:30"), [KOLKATA]) is None  # Friday night
    assert hours.next_opening(at("2026-12-05T01:59"), [KOLKATA]) is None  # Saturday, early
    # Saturday 02:00 is past Friday's window; Saturday is closed: next Friday 21:00
    assert hours.next_opening(at("2026-12-05T02:00"), [KOLKATA]) == at("2026-12-11T21:00")
    # Thursday night before midnight: Thursday is closed, Friday 21:00 opens
    assert hours.next_opening(at("2026-12-03T23:00"), [KOLKATA]) == at("2026-12-04T21:00")


def test_a_closed_day_moves_the_call_to_the_next_open_day():
    hours = CallingHours.parse("09:00-21:00", "Mon-Sat")
    sunday_noon = at("2026-12-06T12:00")
    assert sunday_noon.weekday() == 6
    assert hours.next_opening(sunday_noon, [KOLKATA]) == at("2026-12-07T09:00")
    saturday_night = at("2026-12-05T22:00")
    assert hours.next_opening(saturday_night, [KOLKATA]) == at("2026-12-07T09:00")


def test_a_number_in_several_zones_is_called_only_when_open_in_all():
    eastern, pacific = zone("America/New_York"), zone("America/Los_Angeles")
    hours = CallingHours.parse("09:00-21:00")
    # 10:00 in New York is 07:00 in Los Angeles: wait for 09:00 there (12:00 in New York)
    opening = hours.next_opening(at("2026-12-02T10:00", eastern), [eastern, pacific])
    assert opening == at("2026-12-02T09:00", pacific)
    assert hours.next_opening(at("2026-12-02T13:00", eastern), [eastern, pacific]) is None


def test_zones_come_from_the_route_else_from_the_number():
    assert zones_for(INDIAN) == [KOLKATA]
    assert zones_for(INDIAN, "Europe/London") == [zone("Europe/London")]
    new_york = zones_for("+12125550123")  # area code 212: one zone
    assert new_york == [zone("America/New_York")]
    assert zones_for("+999123") == [KOLKATA]  # unplaceable: the default


@pytest.mark.parametrize(
    "text, days",
    [
        ("Mon-Sat", {0, 1, 2, 3, 4, 5}),
        ("Mon-Fri,Sun", {0, 1, 2, 3, 4, 6}),
        ("sat, sun", {5, 6}),
        ("Fri-Mon", {4, 5, 6, 0}),
        ("Monday-Wednesday", {0, 1, 2}),
    ],
)
def test_days_are_read_as_people_write_them(text, days):
    assert parse_days(text) == frozenset(days)


@pytest.mark.parametrize(
    "hours, days, message",
    [
        ("9-21", None, "HH:MM-HH:MM"),
        ("09:00-25:00", None, "not a time of day"),
        ("09:00-09:00", None, "empty"),
        ("09:00-21:00", "Weekdays", "day names"),
    ],
)
def test_bad_hours_and_days_are_named(hours, days, message):
    with pytest.raises(ValueError, match=message):
        CallingHours.parse(hours, days)


def test_an_unknown_time_zone_is_named():
    with pytest.raises(ValueError, match="not an IANA time zone"):
        zone("Mars/Olympus")
