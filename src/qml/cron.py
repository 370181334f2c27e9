"""Cron schedules: the seed's 6-field form with seconds first
(``sec min hour day month dow``) and the common 5-field form, in an IANA
time zone, with correct behaviour across daylight-saving changes."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .errors import ConfigurationError

if TYPE_CHECKING:
    from croniter import croniter

# croniter (and dateutil under it) is imported on first use, not at import: a
# worker that runs no recurring template starts without it.


@dataclass(frozen=True)
class CronSchedule:
    """A validated cron expression in a time zone.

    Build it with :meth:`parse`; ticks are returned as aware UTC datetimes.
    """

    expression: str
    timezone: str = "UTC"
    _zone: ZoneInfo = field(init=False, repr=False, compare=False)
    _seconds: bool = field(init=False, repr=False, compare=False)
    _fixed_hour: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        fields = self.expression.split()
        if len(fields) not in (5, 6):
            raise ConfigurationError(
                f"invalid cron expression {self.expression!r}: expected 6 fields "
                "(sec min hour day month dow) or 5 fields (min hour day month dow)"
            )
        try:
            zone = ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ConfigurationError(f"unknown time zone {self.timezone!r}") from exc
        seconds = len(fields) == 6
        from croniter import CroniterBadCronError, CroniterBadDateError, croniter

        if not croniter.is_valid(self.expression, second_at_beginning=seconds):
            raise ConfigurationError(f"invalid cron expression {self.expression!r}")
        try:  # is_valid misses some impossible dates (e.g. 30 February)
            croniter(
                self.expression, datetime(2000, 1, 1, tzinfo=zone), second_at_beginning=seconds
            ).get_next(datetime)
        except (CroniterBadCronError, CroniterBadDateError, ValueError) as exc:
            raise ConfigurationError(f"invalid cron expression {self.expression!r}: {exc}") from exc
        object.__setattr__(self, "_zone", zone)
        object.__setattr__(self, "_seconds", seconds)
        object.__setattr__(self, "_fixed_hour", fields[2 if seconds else 1] != "*")

    @classmethod
    def parse(cls, expression: str, timezone: str = "UTC") -> CronSchedule:
        """Validate; raises :class:`ConfigurationError` with a clear message."""
        if not isinstance(expression, str):
            raise ConfigurationError("cron expression must be a string")
        return cls(" ".join(expression.split()), timezone)

    def _repeated_wall_time(self, t: datetime) -> bool:
        """Whether ``t`` is the second pass through a wall-clock time repeated when
        clocks go back. A template with a fixed hour fires once on that day (as cron
        does); one with ``*`` in the hour field keeps firing through both passes."""
        if not self._fixed_hour:
            return False
        local = t.astimezone(self._zone)
        return local.fold == 1 and local.replace(fold=0).utcoffset() != local.utcoffset()

    def _iter(self, start: datetime) -> croniter:
        from croniter import croniter

        return croniter(
            self.expression, start.astimezone(self._zone), second_at_beginning=self._seconds
        )

    def _next(self, it: croniter) -> datetime:
        while True:
            t: datetime = it.get_next(datetime)
            if not self._repeated_wall_time(t):
                return t.astimezone(UTC)

    def next_after(self, t: datetime) -> datetime:
        """The first tick strictly after ``t``."""
        return self._next(self._iter(t))

    def ticks_between(self, start: datetime, end: datetime, limit: int = 1000) -> list[datetime]:
        """Ticks ``t`` with ``start < t <= end``, oldest first, at most ``limit`` (the
        most recent ones are kept when there are more)."""
        out: list[datetime] = []
        it = self._iter(start)
        while True:
            t = self._next(it)
            if t > end:
                break
            out.append(t)
            if len(out) > limit:
                out.pop(0)
        return out

    def upcoming(self, after: datetime, count: int) -> list[datetime]:
        """The next ``count`` ticks after ``after``."""
        out: list[datetime] = []
        t = after
        for _ in range(count):
            t = self.next_after(t)
            out.append(t)
        return out
