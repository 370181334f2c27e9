"""ServerConfig: defaults from SPEC §4 and validation."""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

import pytest

from qml import ConfigurationError, JobState, ServerConfig


def test_defaults() -> None:
    cfg = ServerConfig("srv")
    assert cfg.queues == ["default"]
    assert cfg.shutdown_timeout == 25.0
    assert cfg.cleanup_interval == 60.0
    assert cfg.succeeded_ttl == timedelta(hours=24)
    assert cfg.failed_ttl == timedelta(days=7)
    assert cfg.max_crashes == 3
    assert cfg.effective_heartbeat_interval == cfg.lease_seconds / 3
    assert cfg.retention.ttl_for(JobState.SUCCEEDED) == timedelta(hours=24)
    assert cfg.retention.ttl_for(JobState.FAILED) == timedelta(days=7)


def test_default_server_name_is_host_and_pid() -> None:
    assert ServerConfig().server_name.endswith(f":{os.getpid()}")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"server_name": ""},
        {"worker_count": 0},
        {"queues": []},
        {"queues": ["ok", ""]},
        {"fetch_batch_size": 0},
        {"lease_seconds": 0},
        {"lease_seconds": 3.0, "heartbeat_interval": 2.0},
        {"polling_interval": -1},
        {"shutdown_timeout": -1},
        {"job_timeout": 0},
        {"max_crashes": 0},
    ],
)
def test_invalid_settings_are_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        ServerConfig(**({"server_name": "srv"} | kwargs))


def test_heartbeat_interval_at_most_a_third_of_the_lease() -> None:
    cfg = ServerConfig("s", lease_seconds=3.0, heartbeat_interval=1.0)
    assert cfg.effective_heartbeat_interval == 1.0
