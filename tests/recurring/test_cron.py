"""Cron parsing and tick arithmetic: 6-field (seconds first) and 5-field forms,
time zones and daylight-saving changes, invalid expressions."""

from __future__ import annotations

import itertools
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qml.cron import CronSchedule
from qml.errors import ConfigurationError

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def test_six_fields_have_seconds_first() -> None:
    s = CronSchedule.parse("15 0 9 * * *")
    assert s.next_after(T0) == datetime(2026, 1, 1, 9, 0, 15, tzinfo=UTC)


def test_five_fields_are_minute_based() -> None:
    s = CronSchedule.parse("30 9 * * 1")  # Mondays 09:30
    nxt = s.next_after(T0)
    assert nxt == datetime(2026, 1, 5, 9, 30, tzinfo=UTC)
    assert nxt.weekday() == 0


def test_every_second() -> None:
    s = CronSchedule.parse("* * * * * *")
    assert len(s.ticks_between(T0, T0 + timedelta(seconds=10))) == 10


def test_whitespace_is_normalized() -> None:
    assert CronSchedule.parse("  0  0 9 * * * ").expression == "0 0 9 * * *"


@pytest.mark.parametrize(
    "expr",
    [
        "",
        "* * *",
        "* * * * * * * *",
        "61 * * * * *",
        "* 60 * * *",
        "* 24 * * *",
        "0 0 0 32 * *",
        "0 0 30 2 *",
        "x y z a b",
        "*/0 * * * *",
        "* * * 13 *",
    ],
)
def test_invalid_expressions_are_rejected(expr: str) -> None:
    with pytest.raises(ConfigurationError):
        CronSchedule.parse(expr)


def test_unknown_time_zone_is_rejected() -> None:
    with pytest.raises(ConfigurationError, match="time zone"):
        CronSchedule.parse("0 0 * * *", "Mars/Olympus_Mons")


def _local_days(ticks: list[datetime], zone: str) -> Counter[date]:
    tz = ZoneInfo(zone)
    return Counter(t.astimezone(tz).date() for t in ticks)


@pytest.mark.parametrize(
    ("zone", "expr", "hour", "minute"),
    [
        ("America/New_York", "0 30 1 * * *", 1, 30),  # 01:30 repeats on fall-back days
        ("Europe/Oslo", "0 30 2 * * *", 2, 30),  # 02:30 repeats in autumn, is skipped in spring
        ("America/New_York", "30 2 * * *", 2, 30),  # 5-field form, skipped on spring-forward days
    ],
)
def test_daily_template_fires_once_per_local_day_across_dst_for_years(
    zone: str, expr: str, hour: int, minute: int
) -> None:
    s = CronSchedule.parse(expr, zone)
    start = datetime(2024, 1, 1, tzinfo=UTC)
    end = datetime(2031, 1, 1, tzinfo=UTC)
    ticks = s.ticks_between(start, end, limit=10_000)
    per_day = _local_days(ticks, zone)
    days = (end - start).days
    assert len(ticks) == days
    assert set(per_day.values()) == {1}
    tz = ZoneInfo(zone)
    for t in ticks:
        local = t.astimezone(tz)
        # on a spring-forward day the missing wall time fires at the first instant after it
        assert (local.hour, local.minute) == (hour, minute) or local.hour == hour + 1
    assert ticks == sorted(ticks)


def test_wildcard_hour_keeps_firing_through_the_repeated_hour() -> None:
    s = CronSchedule.parse("0 */30 * * * *", "America/New_York")
    fall_back = datetime(2026, 11, 1, 4, tzinfo=UTC)  # 00:00 EDT
    ticks = s.ticks_between(fall_back, fall_back + timedelta(hours=4))
    assert len(ticks) == 8  # four real hours, every 30 minutes


@settings(max_examples=200, deadline=None)
@given(
    second=st.integers(0, 59),
    minute=st.integers(0, 59),
    hour=st.integers(0, 23),
    start=st.datetimes(
        min_value=datetime(2000, 1, 1), max_value=datetime(2090, 1, 1), timezones=st.just(UTC)
    ),
    zone=st.sampled_from(["UTC", "Europe/Oslo", "America/New_York", "Australia/Sydney"]),
)
def test_next_after_is_strictly_later_and_consistent(
    second: int, minute: int, hour: int, start: datetime, zone: str
) -> None:
    s = CronSchedule.parse(f"{second} {minute} {hour} * * *", zone)
    a = s.next_after(start)
    b = s.next_after(a)
    assert start < a < b
    assert timedelta(hours=22) <= b - a <= timedelta(hours=26)
    assert s.ticks_between(start, b) == [a, b]


@settings(max_examples=100, deadline=None)
@given(step=st.sampled_from([1, 2, 5, 10, 15, 30]), n=st.integers(1, 50))
def test_step_expressions_tick_evenly(step: int, n: int) -> None:
    s = CronSchedule.parse(f"*/{step} * * * * *")
    ticks = s.upcoming(T0, n)
    assert all((b - a) <= timedelta(seconds=step) for a, b in itertools.pairwise(ticks))
    assert all(t.second % step == 0 for t in ticks)
