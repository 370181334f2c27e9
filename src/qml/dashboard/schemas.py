"""Pydantic models of the REST API (they make the OpenAPI document)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from ..job import JobState

_STATE_NAMES = "|".join([s.value for s in JobState] + [s.label for s in JobState])
#: One or more states (values like ``awaiting_retry`` or labels like ``AwaitingRetry``).
STATES_PATTERN = f"^({_STATE_NAMES})(,({_STATE_NAMES}))*$"


class Problem(BaseModel):
    """An RFC 9457 problem document (``application/problem+json``)."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str | None = None


class JobSummary(BaseModel):
    id: str
    method: str
    queue: str
    state: str
    priority: int
    attempts: int
    max_retries: int | None
    args_preview: str = Field(description="Redacted JSON of the args, truncated")
    error_type: str | None
    error: str | None = Field(description="The last error message, truncated")
    server_id: str | None
    progress: float | None
    created_at: str | None
    updated_at: str | None
    enqueued_at: str | None
    run_at: str | None
    started_at: str | None
    finished_at: str | None
    expires_at: str | None


class HistoryEntry(BaseModel):
    state: str
    at: str
    reason: str | None
    server_id: str | None
    attempt: int
    duration_seconds: float | None = Field(description="Time spent in this state")


class JobDetail(JobSummary):
    args: Any = Field(description="The job's arguments, redacted")
    result: Any
    meta: Any
    traceback: str | None
    crashes: int
    timeout: float | None
    dedup_key: str | None
    cancel_requested: bool
    lease_expires_at: str | None
    history: list[HistoryEntry]


class JobPage(BaseModel):
    items: list[JobSummary]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page")


class MinuteCount(BaseModel):
    minute: str
    succeeded: int
    failed: int


class StatsOut(BaseModel):
    counts: dict[str, int]
    by_queue: dict[str, dict[str, int]]
    total: int
    history: list[MinuteCount]


class QueueOut(BaseModel):
    name: str
    counts: dict[str, int]
    oldest_enqueued_at: str | None
    oldest_age_seconds: float | None
    paused: bool


class RecurringOut(BaseModel):
    id: str
    cron: str
    timezone: str
    method: str
    queue: str
    args: Any
    paused: bool
    next_run_at: str | None
    next_runs: list[str]
    last_run_at: str | None
    last_job_id: str | None


class TriggerOut(BaseModel):
    job_id: str


class ServerOut(BaseModel):
    id: str
    hostname: str
    pid: int
    queues: list[str]
    worker_count: int
    busy: int
    version: str
    started_at: str | None
    heartbeat_at: str | None
    heartbeat_age_seconds: float | None
    status: str
    current_jobs: list[str]


class OperationFilterIn(BaseModel):
    """The jobs an operation acts on: the same filters as ``GET /api/v1/jobs``."""

    model_config = ConfigDict(extra="forbid")

    state: str | None = Field(None, pattern=STATES_PATTERN, description="State(s), comma separated")
    queue: str | None = Field(None, min_length=1, max_length=200)
    method: str | None = Field(None, min_length=1, max_length=200)
    text: str | None = Field(None, min_length=1, max_length=200)
    error: str | None = Field(
        None, pattern=r"^[0-9a-f]{12}$", description="An error group's fingerprint"
    )


class OperationOnIds(BaseModel):
    """Retry, delete or cancel the jobs with these ids."""

    model_config = ConfigDict(extra="forbid")

    action: Literal["retry", "delete", "cancel"]
    ids: list[Annotated[str, StringConstraints(min_length=1, max_length=200)]] = Field(
        min_length=1, max_length=100_000
    )
    dry_run: bool = Field(False, description="Only count; change nothing")


class OperationOnFilter(BaseModel):
    """Retry, delete or cancel every job matching ``filter`` (frozen when it starts)."""

    model_config = ConfigDict(extra="forbid")

    action: Literal["retry", "delete", "cancel"]
    filter: OperationFilterIn
    dry_run: bool = Field(False, description="Only count the matching jobs; change nothing")


class OperationOut(BaseModel):
    id: str
    action: str
    status: str = Field(description="pending, running, completed, cancelled or failed")
    filter: dict[str, str | None] | None
    selection: str = Field(description="The selection in words (the filter as a query)")
    ids_count: int | None
    total: int
    estimate_exact: bool
    processed: int = Field(description="Jobs the action applied to")
    failed: int = Field(description="Matched jobs whose state did not allow the action")
    progress: float
    cancel_requested: bool
    created_at: str
    started_at: str | None
    finished_at: str | None
    error: str | None


class OperationCreated(BaseModel):
    id: str | None = Field(description="The operation's id (null for a dry run)")
    estimate: int = Field(description="How many jobs match now")
    estimate_exact: bool
    dry_run: bool
    operation: OperationOut | None


class ErrorGroupOut(BaseModel):
    fingerprint: str
    error_type: str
    message: str = Field(description="The normalized message (numbers, UUIDs, hex replaced)")
    sample_message: str
    top_frame: str | None
    sample_job_id: str
    count: int
    failed: int
    awaiting_retry: int
    first_seen: str | None
    last_seen: str | None
    methods: list[str]


class ErrorReportOut(BaseModel):
    groups: list[ErrorGroupOut]
    scanned: int = Field(description="Failures scanned (the newest first)")
    scan_limit: int
    truncated: bool = Field(description="More failures exist than were scanned")
