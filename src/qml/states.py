"""The transition table and the rules tied to states: pure functions, no I/O.

Backends store; these rules decide. ``Storage`` checks every change against
:data:`TRANSITIONS` before asking a backend to write it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from .errors import InvalidTransitionError
from .job import FINAL_STATES, JobState

E, S, P = JobState.ENQUEUED, JobState.SCHEDULED, JobState.PROCESSING
OK, F, R, D = JobState.SUCCEEDED, JobState.FAILED, JobState.AWAITING_RETRY, JobState.DELETED

#: Allowed state changes (SPEC §2).
#:
#: * Scheduled and AwaitingRetry become Enqueued when due (or on "run now").
#: * Enqueued becomes Processing only through an atomic claim.
#: * Processing ends Succeeded, AwaitingRetry or Failed; it returns to Enqueued
#:   when released or its lease expires, to Scheduled when released with a
#:   delay, and to AwaitingRetry when a crashed job is recovered with backoff.
#: * Any state but Processing may be Deleted (soft delete).
#: * Failed, Succeeded and Deleted go back to Enqueued on requeue.
#: * AwaitingRetry may be given up (Failed).
TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    E: frozenset({P, D, S}),
    S: frozenset({E, D}),
    P: frozenset({OK, R, F, E, S}),
    OK: frozenset({E, D}),
    F: frozenset({E, D}),
    R: frozenset({E, D, F}),
    D: frozenset({E}),
}

#: States from which a job can be requeued (made Enqueued again by a person).
REQUEUEABLE = frozenset({S, R, OK, F, D})
#: States that can be deleted.
DELETABLE = frozenset(s for s in JobState if s is not P and s is not D)


def can_transition(src: JobState, dst: JobState) -> bool:
    """Whether ``src -> dst`` is in the transition table."""
    return dst in TRANSITIONS[src]


def check_transition(src: JobState, dst: JobState) -> None:
    """Raise :class:`InvalidTransitionError` if ``src -> dst`` is not allowed."""
    if dst not in TRANSITIONS[src]:
        raise InvalidTransitionError(f"cannot move a job from {src.label} to {dst.label}")


def initial_state(has_future_run_at: bool) -> JobState:
    """State of a newly enqueued job."""
    return S if has_future_run_at else E


@dataclass(frozen=True, slots=True)
class Retention:
    """How long final jobs are kept before cleanup may remove them."""

    succeeded_ttl: timedelta = timedelta(hours=24)
    failed_ttl: timedelta = timedelta(days=7)
    deleted_ttl: timedelta = timedelta(days=7)

    def ttl_for(self, state: JobState) -> timedelta | None:
        """The TTL stamped as ``expires_at`` on entering ``state`` (None: never expires)."""
        if state is OK:
            return self.succeeded_ttl
        if state is F:
            return self.failed_ttl
        if state is D:
            return self.deleted_ttl
        return None


DEFAULT_RETENTION = Retention()


def is_final(state: JobState) -> bool:
    return state in FINAL_STATES


#: A job whose worker died this many times is quarantined to Failed.
DEFAULT_MAX_CRASHES = 3
#: Reason recorded when a job is quarantined after repeated crashes.
WORKER_CRASHED = "worker_crashed"
#: Reason recorded when an expired lease puts a job back (its holder died).
#: A job that entered AwaitingRetry with it keeps its queue place when due.
LEASE_EXPIRED = "lease_expired"
#: Reason recorded when a server gives back (or, past the window, fails) a job
#: whose method no worker of its registry knows.
UNKNOWN_METHOD = "unknown_method"
