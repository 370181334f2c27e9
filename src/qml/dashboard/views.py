"""Job, queue, recurring and server values as the dashboard shows them.

Both the HTML pages and the JSON API build their data here, so redaction is
applied in exactly one place: :class:`ViewBuilder` is the only code that
reads ``job.args``, ``job.result`` and ``job.meta``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ..cron import CronSchedule
from ..errors import QmlError
from ..job import Job
from ..storage.requests import QueueInfo, RecurringTemplate, ServerInfo
from .redaction import RedactorFn

#: Longest preview of args or an error message on list rows.
PREVIEW_CHARS = 200


def iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def to_json_text(value: Any, *, indent: int | None = None) -> str:
    """JSON text for display; never fails (odd values become their repr)."""
    try:
        return json.dumps(value, ensure_ascii=False, indent=indent, default=repr)
    except (TypeError, ValueError):
        return repr(value)


def truncate(text: str | None, limit: int = PREVIEW_CHARS) -> str | None:
    if text is None or len(text) <= limit:
        return text
    return text[: limit - 1] + "…"


def _json_native(value: Any) -> Any:
    """``value`` if it is plain JSON data, else its repr (e.g. a corrupt payload)."""
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, dict):
        return {str(k): _json_native(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_native(v) for v in value]
    return repr(value)


@dataclass(frozen=True, slots=True)
class ViewBuilder:
    """Turns storage values into redacted, JSON-ready dictionaries."""

    redact: RedactorFn

    def _args(self, job: Job) -> Any:
        return self.redact(_json_native(job.args))

    def job_summary(self, job: Job) -> dict[str, Any]:
        """A light list row: args and error truncated, no traceback or result."""
        return {
            "id": job.id,
            "method": job.method,
            "queue": job.queue,
            "state": job.state.value,
            "priority": job.priority,
            "attempts": job.attempts,
            "max_retries": job.max_retries,
            "args_preview": truncate(to_json_text(self._args(job))) or "",
            "error_type": job.error_type,
            "error": truncate(job.error),
            "server_id": job.server_id,
            "progress": job.progress,
            "created_at": iso(job.created_at),
            "updated_at": iso(job.updated_at),
            "enqueued_at": iso(job.enqueued_at),
            "run_at": iso(job.run_at),
            "started_at": iso(job.started_at),
            "finished_at": iso(job.finished_at),
            "expires_at": iso(job.expires_at),
        }

    def job_detail(self, job: Job) -> dict[str, Any]:
        """Everything about one job, redacted, with the state-history timeline."""
        out = self.job_summary(job)
        history = []
        for i, h in enumerate(job.history):
            following = job.history[i + 1].at if i + 1 < len(job.history) else None
            history.append(
                {
                    "state": h.state.value,
                    "at": h.at.isoformat(),
                    "reason": h.reason,
                    "server_id": h.server_id,
                    "attempt": h.attempt,
                    "duration_seconds": (
                        (following - h.at).total_seconds() if following is not None else None
                    ),
                }
            )
        out.update(
            {
                "args": self._args(job),
                "result": self.redact(_json_native(job.result)),
                "meta": self.redact(_json_native(job.meta)),
                "error": job.error,
                "traceback": job.traceback,
                "crashes": job.crashes,
                "timeout": job.timeout,
                "dedup_key": job.dedup_key,
                "cancel_requested": job.cancel_requested,
                "lease_expires_at": iso(job.lease_expires_at),
                "history": history,
            }
        )
        return out

    def queue(self, q: QueueInfo, now: datetime) -> dict[str, Any]:
        oldest = q.oldest_enqueued_at
        return {
            "name": q.name,
            "counts": {s.value: n for s, n in q.counts.items()},
            "oldest_enqueued_at": iso(oldest),
            "oldest_age_seconds": (
                max(0.0, (now - oldest).total_seconds()) if oldest is not None else None
            ),
            "paused": q.paused,
        }

    def recurring(self, t: RecurringTemplate, now: datetime, upcoming: int = 3) -> dict[str, Any]:
        next_runs: list[str] = []
        if not t.paused:
            try:
                schedule = CronSchedule.parse(t.cron, t.timezone)
                at = t.next_run_at or now
                next_runs = [at.isoformat()]
                for _ in range(upcoming - 1):
                    at = schedule.next_after(at)
                    next_runs.append(at.isoformat())
            except (QmlError, ValueError):
                next_runs = []
        return {
            "id": t.id,
            "cron": t.cron,
            "timezone": t.timezone,
            "method": t.method,
            "queue": t.queue,
            "args": self.redact(_json_native(t.args)),
            "paused": t.paused,
            "next_run_at": iso(t.next_run_at),
            "next_runs": next_runs,
            "last_run_at": iso(t.last_run_at),
            "last_job_id": t.last_job_id,
        }

    def server(self, s: ServerInfo, now: datetime, dead_after: float) -> dict[str, Any]:
        age = (now - s.heartbeat_at).total_seconds() if s.heartbeat_at is not None else None
        status = "unknown"
        if age is not None:
            status = "ok" if age <= dead_after / 3 else ("late" if age <= dead_after else "dead")
        return {
            "id": s.id,
            "hostname": s.hostname,
            "pid": s.pid,
            "queues": list(s.queues),
            "worker_count": s.worker_count,
            "busy": s.busy,
            "version": s.version,
            "started_at": iso(s.started_at),
            "heartbeat_at": iso(s.heartbeat_at),
            "heartbeat_age_seconds": age,
            "status": status,
            "current_jobs": list(s.current_jobs),
        }
