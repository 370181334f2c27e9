"""PostgreSQL row conversions that need no database (the storage's own tests
cover them against a real server too)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any

from qml.job import Job, JobState, StateChange
from qml.storage.postgres.rows import parse_history, row_to_job

T0 = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
HISTORY = (
    '[{"at": "2026-01-02T03:04:05.678901+00:00", "state": "enqueued", "reason": "enqueued",'
    ' "attempt": 0}, {"at": "2026-01-02T03:04:06.678901+00:00", "state": "processing",'
    ' "server": "srv-1", "attempt": 1}]'
)


def _row() -> dict[str, Any]:
    """A job row with a different value in every column."""
    return {
        "method": "send",
        "args": '{"to": "a@b.c"}',
        "queue": "mail",
        "priority": 7,
        "max_retries": 4,
        "run_at": T0 + timedelta(seconds=1),
        "timeout": 12.5,
        "dedup_key": "k-1",
        "meta": '{"trace": "t"}',
        "id": "01234567-89ab-7cde-8f01-23456789abcd",
        "state": "processing",
        "attempts": 2,
        "crashes": 1,
        "created_at": T0 + timedelta(seconds=2),
        "updated_at": T0 + timedelta(seconds=3),
        "enqueued_at": T0 + timedelta(seconds=4),
        "started_at": T0 + timedelta(seconds=5),
        "finished_at": T0 + timedelta(seconds=6),
        "expires_at": T0 + timedelta(seconds=7),
        "error_type": "ValueError",
        "error": "boom",
        "traceback": "Traceback ...",
        "result": '{"r": 1}',
        "server_id": "srv-1",
        "lease_token": "tok",
        "lease_expires_at": T0 + timedelta(seconds=8),
        "cancel_requested": True,
        "progress": 0.25,
        "history": HISTORY,
    }


def test_row_to_job_puts_every_column_in_its_field() -> None:
    job = row_to_job(_row())
    expected = _row()
    assert {f.name for f in dataclasses.fields(Job)} == set(expected)
    converted = {
        "args": {"to": "a@b.c"},
        "meta": {"trace": "t"},
        "state": JobState.PROCESSING,
        "result": {"r": 1},
        "history": parse_history(HISTORY),
    }
    for name in expected:
        assert getattr(job, name) == converted.get(name, expected[name]), name


def test_parsed_histories_are_fresh_objects_each_time() -> None:
    first, second = parse_history(HISTORY), parse_history(HISTORY)
    assert (
        first
        == second
        == [
            StateChange(JobState.ENQUEUED, T0, "enqueued", None, 0),
            StateChange(JobState.PROCESSING, T0 + timedelta(seconds=1), None, "srv-1", 1),
        ]
    )
    assert first is not second and first[0] is not second[0]
    first[0].reason = "changed"  # one job's history is its own
    assert parse_history(HISTORY)[0].reason == "enqueued"


def test_damaged_histories_keep_their_readable_entries() -> None:
    assert parse_history(None) == [] and parse_history("") == []
    assert parse_history("not json") == []
    assert parse_history('{"state": "enqueued"}') == []
    damaged = '[{"state": "nope", "at": 0}, {"state": "failed", "at": 60}, 5]'
    assert parse_history(damaged) == [
        StateChange(JobState.FAILED, datetime(1970, 1, 1, 0, 1, tzinfo=UTC), None, None, 0)
    ]
