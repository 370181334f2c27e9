"""An injectable clock, so time-dependent rules can be tested without sleeping."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    """Source of the current time (timezone-aware UTC)."""

    def now(self) -> datetime: ...


class SystemClock:
    """The host's wall clock."""

    def now(self) -> datetime:
        return datetime.now(UTC)


class FrozenClock:
    """A clock that only moves when told to; for tests."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(2030, 1, 1, tzinfo=UTC)
        self._lock = threading.Lock()

    def now(self) -> datetime:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> datetime:
        """Move the clock forward and return the new time."""
        with self._lock:
            self._now += timedelta(seconds=seconds)
            return self._now

    def set(self, when: datetime) -> None:
        with self._lock:
            self._now = when


SYSTEM_CLOCK = SystemClock()


def utcnow() -> datetime:
    """The host's current time (UTC)."""
    return datetime.now(UTC)


def to_epoch(dt: datetime) -> float:
    """Seconds since the epoch for an aware datetime."""
    return dt.timestamp()


def from_epoch(ts: float) -> datetime:
    """Aware UTC datetime from seconds since the epoch."""
    return datetime.fromtimestamp(ts, UTC)


def ensure_aware(dt: datetime) -> datetime:
    """Treat naive datetimes as UTC; convert aware ones to UTC."""
    if dt.tzinfo is None:
        return dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC)
