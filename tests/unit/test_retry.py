"""RetryPolicy: backoff, cap, jitter band, retry limit and per-job override."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qml.errors import ConfigurationError
from qml.retry import RetryPolicy


def test_backoff_sequence_doubles_from_base() -> None:
    policy = RetryPolicy(base_delay=1.0, factor=2.0, max_delay=1000.0, jitter=0)
    assert [policy.nominal_delay(n) for n in range(1, 7)] == [1, 2, 4, 8, 16, 32]
    assert [policy.delay(n) for n in range(1, 7)] == [1, 2, 4, 8, 16, 32]


def test_backoff_is_capped_at_max_delay() -> None:
    policy = RetryPolicy(base_delay=1.0, factor=10.0, max_delay=50.0, jitter=0)
    assert [policy.nominal_delay(n) for n in range(1, 5)] == [1, 10, 50, 50]
    assert policy.nominal_delay(10_000) == 50.0  # no overflow on huge retry numbers


def test_retry_number_below_one_counts_as_first() -> None:
    policy = RetryPolicy(base_delay=3.0, jitter=0)
    assert policy.nominal_delay(0) == policy.nominal_delay(-5) == 3.0


def test_zero_base_delay_never_waits() -> None:
    policy = RetryPolicy(base_delay=0.0, factor=2.0, jitter=0.5)
    assert policy.delay(1) == 0.0
    assert policy.nominal_delay(100_000) == 0.0


@given(
    base=st.floats(0.001, 100.0),
    factor=st.floats(1.0, 5.0),
    max_delay=st.floats(0.001, 10_000.0),
    jitter=st.floats(0.0, 1.0),
    n=st.integers(1, 2_000),
    seed=st.integers(0, 2**32 - 1),
)
def test_jitter_stays_in_its_band(
    base: float, factor: float, max_delay: float, jitter: float, n: int, seed: int
) -> None:
    policy = RetryPolicy(base_delay=base, factor=factor, max_delay=max_delay, jitter=jitter)
    nominal = policy.nominal_delay(n)
    assert 0.0 <= nominal <= max_delay
    delay = policy.delay(n, random.Random(seed))
    assert nominal * (1 - jitter) - 1e-9 <= delay <= nominal * (1 + jitter) + 1e-9
    assert delay >= 0.0


@given(n=st.integers(1, 60))
def test_nominal_delay_never_decreases(n: int) -> None:
    policy = RetryPolicy(base_delay=0.5, factor=1.7, max_delay=3600.0)
    assert policy.nominal_delay(n) <= policy.nominal_delay(n + 1)


def test_jitter_actually_spreads() -> None:
    policy = RetryPolicy(base_delay=10.0, jitter=0.5)
    rng = random.Random(7)
    delays = {round(policy.delay(1, rng), 6) for _ in range(50)}
    assert len(delays) > 10


def test_should_retry_counts_failures_against_the_limit() -> None:
    policy = RetryPolicy(max_retries=2)
    assert policy.should_retry(1)
    assert policy.should_retry(2)
    assert not policy.should_retry(3)


def test_per_job_override_wins_over_policy() -> None:
    policy = RetryPolicy(max_retries=5)
    assert not policy.should_retry(1, max_retries=0)
    assert policy.should_retry(1, max_retries=1)
    assert not policy.should_retry(2, max_retries=1)
    assert RetryPolicy(max_retries=0).should_retry(7, max_retries=10)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_retries": -1},
        {"base_delay": -1.0},
        {"max_delay": -0.1},
        {"factor": 0.5},
        {"jitter": 1.5},
        {"jitter": -0.1},
    ],
)
def test_invalid_policies_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigurationError):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]
