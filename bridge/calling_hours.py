"""When a lead may be called: a route's ``calling_hours``, ``days`` and time zone, read the way a
person writes them (``"09:00-21:00"``, ``"Mon-Sat"``, ``"Asia/Kolkata"``). Pure: the clock is an
argument.

A window belongs to the day it starts on, so ``"21:00-02:00"`` with ``days = "Fri"`` is Friday
night until 02:00 on Saturday. A number whose country spans several time zones (a US or an
Australian number without a route ``timezone``) is called only while it is within the hours in
every one of them: the hours are a promise to the lead, wherever in the country they are.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import phonenumbers
from phonenumbers import timezone as number_zones

DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
ALL_DAYS = frozenset(range(7))
#: The zone for a number phonenumbers cannot place, and for Indian numbers (one zone).
DEFAULT_TIMEZONE = "Asia/Kolkata"
_HOURS = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*$")
#: phonenumbers still names a few zones by their old IANA names; the API gets today's.
_RENAMED = {
    "Asia/Calcutta": "Asia/Kolkata",
    "Asia/Katmandu": "Asia/Kathmandu",
    "Asia/Saigon": "Asia/Ho_Chi_Minh",
    "Asia/Rangoon": "Asia/Yangon",
}
#: How far ahead an opening is looked for: a week has at least one open day.
_HORIZON_DAYS = 8


@dataclass(frozen=True)
class CallingHours:
    start: time
    end: time  # at or before ``start``: the window ends the next day
    days: frozenset[int] = ALL_DAYS  # Monday = 0

    @classmethod
    def parse(cls, hours: str, days: str | None = None) -> CallingHours:
        """Raises ValueError naming what is wrong."""
        found = _HOURS.match(hours or "")
        if not found:
            raise ValueError(f"calling_hours {hours!r}: write it as HH:MM-HH:MM, e.g. 09:00-21:00")
        h1, m1, h2, m2 = (int(g) for g in found.groups())
        if h2 == 24 and m2 == 0:
            h2 = 0  # "09:00-24:00" ends at midnight
        if not (h1 < 24 and h2 < 24 and m1 < 60 and m2 < 60):
            raise ValueError(f"calling_hours {hours!r}: not a time of day")
        if (h1, m1) == (h2, m2):
            raise ValueError(f"calling_hours {hours!r}: the window is empty")
        return cls(time(h1, m1), time(h2, m2), parse_days(days) if days else ALL_DAYS)

    def windows(self, day: date, zone: ZoneInfo) -> tuple[datetime, datetime] | None:
        """The window that starts on ``day`` in ``zone``, or None on a closed day."""
        if day.weekday() not in self.days:
            return None
        start = datetime.combine(day, self.start, zone)
        end_day = day if self.end > self.start else day + timedelta(days=1)
        return start, datetime.combine(end_day, self.end, zone)

    def open_in(self, moment: datetime, zone: ZoneInfo) -> bool:
        local = moment.astimezone(zone).date()
        for day in (local - timedelta(days=1), local):
            window = self.windows(day, zone)
            if window and window[0] <= moment < window[1]:
                return True
        return False

    def next_opening(self, now: datetime, zones: Iterable[ZoneInfo]) -> datetime | None:
        """None when ``now`` is within the hours in every zone; otherwise the first moment
        after ``now`` when it is (a window start in one of them), in UTC."""
        zones = list(zones)
        if all(self.open_in(now, zone) for zone in zones):
            return None
        candidates = sorted(
            window[0]
            for zone in zones
            for offset in range(_HORIZON_DAYS)
            if (window := self.windows(now.astimezone(zone).date() + timedelta(days=offset), zone))
            and window[0] > now
        )
        for moment in candidates:
            if all(self.open_in(moment, zone) for zone in zones):
                return moment.astimezone(UTC)
        raise ValueError("the calling hours never open in every time zone of this number")


def parse_days(text: str) -> frozenset[int]:
    """``"Mon-Sat"``, ``"Mon-Fri,Sun"``, ``"sat, sun"`` → weekday numbers (Monday = 0)."""
    days: set[int] = set()
    for part in text.split(","):
        names = [n.strip().lower()[:3] for n in part.split("-")]
        if not 1 <= len(names) <= 2 or any(n not in DAY_NAMES for n in names):
            raise ValueError(f"days {text!r}: use day names such as Mon-Sat or Mon-Fri,Sun")
        first, last = DAY_NAMES.index(names[0]), DAY_NAMES.index(names[-1])
        span = (last - first) % 7
        days.update((first + i) % 7 for i in range(span + 1))
    return frozenset(days)


def zone(name: str) -> ZoneInfo:
    """Raises ValueError for a name that is not an IANA time zone."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"timezone {name!r}: not an IANA time zone (e.g. Asia/Kolkata)") from None


def zones_for(phone_e164: str, configured: str | None = None) -> list[ZoneInfo]:
    """The zones a lead may be in: the route's ``timezone`` when set, else those of the number's
    country (``phonenumbers``), else ``DEFAULT_TIMEZONE``."""
    if configured:
        return [zone(configured)]
    try:
        number = phonenumbers.parse(phone_e164)
        names = [
            _RENAMED.get(n, n)
            for n in number_zones.time_zones_for_number(number)
            if n != "Etc/Unknown"
        ]
    except phonenumbers.NumberParseException:
        names = []
    found = []
    for name in names:
        try:
            found.append(ZoneInfo(name))
        except (ZoneInfoNotFoundError, ValueError):
            continue
    return found or [zone(DEFAULT_TIMEZONE)]
