"""The transition table (SPEC §2) and the rules tied to states."""

from __future__ import annotations

import itertools
from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qml.errors import InvalidTransitionError
from qml.job import FINAL_STATES, JobState
from qml.states import (
    DELETABLE,
    REQUEUEABLE,
    TRANSITIONS,
    Retention,
    can_transition,
    check_transition,
    initial_state,
    is_final,
)

E, S, P = JobState.ENQUEUED, JobState.SCHEDULED, JobState.PROCESSING
OK, F, R, D = JobState.SUCCEEDED, JobState.FAILED, JobState.AWAITING_RETRY, JobState.DELETED

#: The table spelled out from SPEC §2, one reason per pair.
EXPECTED = {
    (E, P),  # atomic claim
    (E, D),  # soft delete
    (E, S),  # rescheduled for later
    (S, E),  # due
    (S, D),
    (R, E),  # due
    (R, D),
    (R, F),  # given up
    (P, OK),
    (P, R),  # backoff
    (P, F),  # retries exhausted / non-retryable / quarantined
    (P, E),  # released or lease expired
    (P, S),  # released with a delay
    (OK, E),  # requeue
    (OK, D),
    (F, E),  # requeue
    (F, D),
    (D, E),  # requeue
}
ALL_PAIRS = list(itertools.product(JobState, JobState))


def test_table_covers_every_state() -> None:
    assert set(TRANSITIONS) == set(JobState)


@pytest.mark.parametrize(("src", "dst"), ALL_PAIRS, ids=lambda s: s.label)
def test_every_pair_is_allowed_or_forbidden_as_specified(src: JobState, dst: JobState) -> None:
    allowed = (src, dst) in EXPECTED
    assert can_transition(src, dst) is allowed
    if allowed:
        check_transition(src, dst)
    else:
        with pytest.raises(InvalidTransitionError, match=src.label):
            check_transition(src, dst)


@given(st.sampled_from(JobState), st.sampled_from(JobState))
def test_check_agrees_with_can(src: JobState, dst: JobState) -> None:
    try:
        check_transition(src, dst)
    except InvalidTransitionError:
        assert not can_transition(src, dst)
    else:
        assert can_transition(src, dst)


@given(st.lists(st.sampled_from(JobState), min_size=1, max_size=30))
def test_random_walks_respect_the_invariants(path: list[JobState]) -> None:
    """Walk only allowed edges: no self-loops, Processing is only entered from
    Enqueued and never deleted directly, and everything can reach Deleted."""
    state = initial_state(False)
    for target in path:
        if not can_transition(state, target):
            continue
        assert target is not state
        if target is P:
            assert state is E
        if target is D:
            assert state is not P
        state = target
    assert (
        state is D
        or can_transition(state, D)
        or any(can_transition(state, mid) and can_transition(mid, D) for mid in JobState)
    )


def test_no_self_transitions() -> None:
    for state in JobState:
        assert not can_transition(state, state)


def test_requeueable_and_deletable_sets_follow_the_table() -> None:
    assert {s for s in REQUEUEABLE if can_transition(s, E)} == REQUEUEABLE
    assert {s for s in DELETABLE if can_transition(s, D)} == DELETABLE
    assert P not in DELETABLE and D not in DELETABLE
    assert {OK, F, D} <= REQUEUEABLE


def test_initial_state() -> None:
    assert initial_state(False) is E
    assert initial_state(True) is S


def test_final_states() -> None:
    assert {OK, F, D} == FINAL_STATES
    assert [s for s in JobState if is_final(s)] == [OK, F, D]


def test_retention_ttls() -> None:
    r = Retention(timedelta(hours=1), timedelta(days=2), timedelta(days=3))
    assert r.ttl_for(OK) == timedelta(hours=1)
    assert r.ttl_for(F) == timedelta(days=2)
    assert r.ttl_for(D) == timedelta(days=3)
    for state in (E, S, P, R):
        assert r.ttl_for(state) is None


def test_labels_match_the_seed() -> None:
    assert [s.label for s in JobState] == [
        "Enqueued",
        "Scheduled",
        "Processing",
        "Succeeded",
        "Failed",
        "AwaitingRetry",
        "Deleted",
    ]
