"""``RedisConfig``: where the Redis storage connects and how (no redis-py import)."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from datetime import timedelta
from urllib.parse import parse_qsl, urlencode, urlsplit

from ...errors import ConfigurationError
from .keys import check_prefix

DEFAULT_URL = "redis://127.0.0.1:6379/0"
_SCHEMES = ("redis", "rediss", "unix")
#: Query parameters of a storage URL that configure qml rather than redis-py.
_OWN_OPTIONS = ("pool_size", "command_timeout", "key_prefix", "completed_job_ttl", "hand_off")
_FLAGS = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}


def _flag(value: str, what: str) -> bool:
    try:
        return _FLAGS[value.lower()]
    except KeyError:
        raise ConfigurationError(f"{what} must be 1 or 0, not {value!r}") from None


def _seconds(value: float | timedelta, what: str) -> float:
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ConfigurationError(f"{what} must be a positive number of seconds")
    return float(value)


@dataclass(frozen=True, slots=True)
class RedisConfig:
    """Settings of :class:`RedisStorage` (SPEC §3).

    * ``url``: ``redis://[:password@]host:port/db``, ``rediss://…`` or
      ``unix:///path.sock``; other query parameters go to redis-py.
    * ``pool_size``: connections in the pool (plus one for wake-up signals).
    * ``command_timeout``: seconds a command (and a pool checkout) may take.
    * ``key_prefix``: every key lives under the hash tag ``{key_prefix}``.
    * ``completed_job_ttl``: seconds Succeeded jobs are kept (overrides the
      storage's retention); None keeps the retention default.
    * ``hand_off``: a server with free slots parks its claim while it waits,
      and the enqueue that makes jobs ready claims them for it and hands them
      over (one hop instead of a wake-up, a claim and its reply); False: it
      is only woken, then claims.

    Build one fluently, as in the seed::

        RedisConfig().with_url("redis://cache:6379/0").with_key_prefix("myapp:jobs")
    """

    url: str = DEFAULT_URL
    pool_size: int = 20
    command_timeout: float = 5.0
    key_prefix: str = "qml"
    completed_job_ttl: float | None = None
    hand_off: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.url, str) or urlsplit(self.url).scheme not in _SCHEMES:
            raise ConfigurationError("Redis URL must start with redis://, rediss:// or unix://")
        if (
            isinstance(self.pool_size, bool)
            or not isinstance(self.pool_size, int)
            or self.pool_size < 1
        ):
            raise ConfigurationError("pool_size must be an integer >= 1")
        object.__setattr__(
            self, "command_timeout", _seconds(self.command_timeout, "command_timeout")
        )
        check_prefix(self.key_prefix)
        if not isinstance(self.hand_off, bool):
            raise ConfigurationError("hand_off must be True or False")
        if self.completed_job_ttl is not None:
            object.__setattr__(
                self, "completed_job_ttl", _seconds(self.completed_job_ttl, "completed_job_ttl")
            )

    def __repr__(self) -> str:
        from ..factory import mask_url

        return (
            f"RedisConfig(url={mask_url(self.url)!r}, pool_size={self.pool_size}, "
            f"command_timeout={self.command_timeout}, key_prefix={self.key_prefix!r}, "
            f"completed_job_ttl={self.completed_job_ttl}, hand_off={self.hand_off})"
        )

    @classmethod
    def from_url(cls, url: str) -> RedisConfig:
        """A config from a storage URL; ``pool_size``, ``command_timeout``,
        ``key_prefix``, ``completed_job_ttl`` and ``hand_off`` (1 or 0) may be
        given as query parameters
        (``redis://host:6379/0?key_prefix=myapp&pool_size=50``)."""
        parts = urlsplit(url)
        own: dict[str, str] = {}
        rest: list[tuple[str, str]] = []
        for k, v in parse_qsl(parts.query, keep_blank_values=True):
            if k in _OWN_OPTIONS:
                own[k] = v
            else:
                rest.append((k, v))
        clean = url
        if own:  # rebuilt by hand: urlunsplit would turn unix:///path into unix:/path
            clean = url.split("?", 1)[0] + (f"?{urlencode(rest)}" if rest else "")
        try:
            return cls(
                url=clean,
                pool_size=int(own.get("pool_size", 20)),
                command_timeout=float(own.get("command_timeout", 5.0)),
                key_prefix=own.get("key_prefix", "qml"),
                completed_job_ttl=(
                    float(own["completed_job_ttl"]) if own.get("completed_job_ttl") else None
                ),
                hand_off=_flag(own.get("hand_off", "1"), "hand_off"),
            )
        except ValueError as exc:
            raise ConfigurationError(f"invalid option in Redis URL: {exc}") from exc

    def with_url(self, url: str) -> RedisConfig:
        return replace(self, url=url)

    def with_pool_size(self, pool_size: int) -> RedisConfig:
        return replace(self, pool_size=pool_size)

    def with_command_timeout(self, timeout: float | timedelta) -> RedisConfig:
        return replace(self, command_timeout=_seconds(timeout, "command_timeout"))

    def with_key_prefix(self, key_prefix: str) -> RedisConfig:
        return replace(self, key_prefix=key_prefix)

    def with_completed_job_ttl(self, ttl: float | timedelta | None) -> RedisConfig:
        return replace(
            self, completed_job_ttl=None if ttl is None else _seconds(ttl, "completed_job_ttl")
        )

    def with_hand_off(self, hand_off: bool) -> RedisConfig:
        return replace(self, hand_off=hand_off)
