"""The Job value: defaults, copies and its JSON-ready view."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

from qml.job import Job, JobState, StateChange
from qml.serialization import CorruptPayload, dumps, loads

T0 = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)


def test_defaults() -> None:
    job = Job("send_email")
    assert job.args == {}
    assert job.queue == "default"
    assert job.priority == 0
    assert job.state is JobState.ENQUEUED
    assert job.attempts == job.crashes == 0
    assert job.created_at.tzinfo is not None
    assert not job.is_final
    assert Job("a").id != Job("a").id


def test_copy_shares_no_containers() -> None:
    job = Job("m", meta={"k": 1}, history=[StateChange(JobState.ENQUEUED, T0)])
    clone = job.copy()
    clone.meta["k"] = 2
    clone.history.append(StateChange(JobState.PROCESSING, T0))
    assert job.meta == {"k": 1}
    assert len(job.history) == 1


def test_copy_keeps_every_field() -> None:
    job = Job("m", {"a": [1]}, meta={"k": 1})
    for n, f in enumerate(dataclasses.fields(Job)):
        if f.name not in ("method", "args", "meta", "history", "state", "cancel_requested"):
            setattr(job, f.name, f"value-{n}")  # a distinct value in every field
    job.state, job.cancel_requested = JobState.FAILED, True
    clone = job.copy()
    assert clone == job
    assert [getattr(clone, f.name) for f in dataclasses.fields(Job)] == [
        getattr(job, f.name) for f in dataclasses.fields(Job)
    ]


def test_to_dict_is_json_ready() -> None:
    job = Job(
        "send_email",
        {"to": "a@example.com"},
        queue="mail",
        priority=5,
        run_at=T0,
        created_at=T0,
        state=JobState.SUCCEEDED,
        result={"sent": True},
        lease_token="secret",
        history=[StateChange(JobState.ENQUEUED, T0, "enqueued", "srv", 1)],
    )
    d = job.to_dict()
    assert loads(dumps(d)) == d  # strict JSON: no datetimes or enums left
    assert d["state"] == "succeeded"
    assert d["run_at"] == T0.isoformat()
    assert d["created_at"] == T0.isoformat()
    assert d["started_at"] is None
    assert d["args"] == {"to": "a@example.com"}
    assert d["result"] == {"sent": True}
    assert "lease_token" not in d
    assert d["history"] == [
        {
            "state": "enqueued",
            "at": T0.isoformat(),
            "reason": "enqueued",
            "server": "srv",
            "attempt": 1,
        }
    ]


def test_to_dict_shows_undecodable_args_as_text() -> None:
    job = Job("m", CorruptPayload("{oops", "corrupt JSON payload"))
    d = job.to_dict()
    assert isinstance(d["args"], str)
    assert "oops" in d["args"]
    dumps(d)


def test_state_change_round_trip() -> None:
    change = StateChange(JobState.FAILED, T0, "retries_exhausted", "srv-1", 3)
    assert StateChange.from_dict(change.to_dict()) == change
    bare = StateChange(JobState.ENQUEUED, T0)
    assert bare.to_dict() == {"state": "enqueued", "at": T0.timestamp()}
    assert StateChange.from_dict(bare.to_dict()) == bare
