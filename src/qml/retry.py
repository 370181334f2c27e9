"""Retry policy: exponential backoff with jitter and a retry limit."""

from __future__ import annotations

import random
from dataclasses import dataclass

from .errors import ConfigurationError


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """When and how often a failed job is tried again.

    ``max_retries`` counts retries after the first attempt (so a job runs at
    most ``max_retries + 1`` times). The delay before retry ``n`` (1-based) is
    ``min(max_delay, base_delay * factor ** (n - 1))``, then spread by
    ``jitter`` (a fraction: 0.1 means ±10 %).
    """

    max_retries: int = 3
    base_delay: float = 1.0
    factor: float = 2.0
    max_delay: float = 3600.0
    jitter: float = 0.1

    def __post_init__(self) -> None:
        if self.max_retries < 0:
            raise ConfigurationError("max_retries must be >= 0")
        if self.base_delay < 0 or self.max_delay < 0:
            raise ConfigurationError("retry delays must be >= 0")
        if self.factor < 1:
            raise ConfigurationError("backoff factor must be >= 1")
        if not 0 <= self.jitter <= 1:
            raise ConfigurationError("jitter must be between 0 and 1")

    def nominal_delay(self, retry_number: int) -> float:
        """Delay before retry ``retry_number`` (1-based), without jitter."""
        n = max(1, retry_number)
        try:
            delay = self.base_delay * self.factor ** (n - 1)
        except OverflowError:
            delay = self.max_delay if self.base_delay else 0.0
        return min(self.max_delay, delay)

    def delay(self, retry_number: int, rng: random.Random | None = None) -> float:
        """Delay before retry ``retry_number`` with jitter applied."""
        base = self.nominal_delay(retry_number)
        if not self.jitter or not base:
            return base
        r = (rng or random).uniform(-self.jitter, self.jitter)
        return max(0.0, base * (1.0 + r))

    def should_retry(self, failures: int, max_retries: int | None = None) -> bool:
        """Whether a job that has failed ``failures`` times gets another try.

        ``max_retries`` overrides the policy's own limit (per-job override).
        """
        limit = self.max_retries if max_retries is None else max_retries
        return failures <= limit


DEFAULT_RETRY_POLICY = RetryPolicy()
