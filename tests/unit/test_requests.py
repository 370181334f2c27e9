"""Leases and outcomes: frozen values with constructors of their own.

``Lease`` and ``Outcome`` are built once per job on the hot path, so they set
their slots directly instead of through the generated frozen ``__init__``;
they must still behave exactly like the frozen dataclasses they are declared as.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Any

import pytest

from qml.job import Job, JobState
from qml.storage.requests import ErrorInfo, Lease, Outcome, OutcomeKind

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
ERROR = ErrorInfo("ValueError", "boom", "trace")


def _lease() -> Lease:
    job = Job("m", {"a": 1}, "q")
    job.server_id = "srv"
    return Lease(job, "tok", NOW)


def _fields(value: Any) -> dict[str, Any]:
    return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}


def test_a_lease_holds_what_it_was_given_and_stays_frozen() -> None:
    lease = _lease()
    assert (lease.job.id, lease.token, lease.expires_at) == (lease.job_id, "tok", NOW)
    assert Lease(job=lease.job, token="tok", expires_at=NOW) == lease
    with pytest.raises(dataclasses.FrozenInstanceError):
        lease.token = "other"  # type: ignore[misc]
    later = dataclasses.replace(lease, token="t2")
    assert (later.job, later.token, later.expires_at) == (lease.job, "t2", NOW)
    assert "token='tok'" in repr(lease)


def test_each_outcome_kind_sets_every_field() -> None:
    lease = _lease()
    base = {"job_id": lease.job_id, "token": "tok", "server_id": "srv"}
    assert _fields(Outcome.succeed(lease, {"r": 1}, ttl=60.0)) == base | {
        "kind": OutcomeKind.SUCCEED, "result": {"r": 1}, "error": None, "delay": 0.0,
        "ttl": 60.0, "reason": None,
    }  # fmt: skip
    assert _fields(Outcome.fail(lease, ERROR, ttl=5.0, reason="invalid")) == base | {
        "kind": OutcomeKind.FAIL, "result": None, "error": ERROR, "delay": 0.0, "ttl": 5.0,
        "reason": "invalid",
    }  # fmt: skip
    assert _fields(Outcome.retry(lease, ERROR, delay=7.5, reason="timeout")) == base | {
        "kind": OutcomeKind.RETRY, "result": None, "error": ERROR, "delay": 7.5, "ttl": None,
        "reason": "timeout",
    }  # fmt: skip
    assert _fields(Outcome.release(lease, delay=2.0, reason="shutdown")) == base | {
        "kind": OutcomeKind.RELEASE, "result": None, "error": None, "delay": 2.0, "ttl": None,
        "reason": "shutdown",
    }  # fmt: skip


def test_an_outcome_built_directly_matches_its_shortcut_and_stays_frozen() -> None:
    lease = _lease()
    direct = Outcome(lease.job_id, "tok", OutcomeKind.SUCCEED, ttl=60.0, server_id="srv")
    assert direct == Outcome.succeed(lease, ttl=60.0)
    assert hash(direct) == hash(Outcome.succeed(lease, ttl=60.0))
    assert Outcome("j", "t", OutcomeKind.RELEASE).target_state is JobState.ENQUEUED
    assert Outcome("j", "t", OutcomeKind.RELEASE, delay=1.0).target_state is JobState.SCHEDULED
    with pytest.raises(dataclasses.FrozenInstanceError):
        direct.ttl = 1.0  # type: ignore[misc]
    again = dataclasses.replace(direct, kind=OutcomeKind.FAIL, error=ERROR)
    assert again.target_state is JobState.FAILED
    assert (again.error, again.ttl, again.server_id) == (ERROR, 60.0, "srv")
    with pytest.raises(TypeError):
        Outcome("j", "t")  # type: ignore[call-arg]
