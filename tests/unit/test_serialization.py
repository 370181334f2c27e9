"""Strict JSON payloads: no silent conversion, a size limit, corrupt data flagged."""

from __future__ import annotations

import dataclasses
import decimal
from datetime import UTC, date, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qml.errors import SerializationError
from qml.serialization import CorruptPayload, check_payload, dumps, dumps_str, loads


@dataclasses.dataclass
class Point:
    x: int


class Tag(str):
    pass


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(), children, max_size=5)
    ),
    max_leaves=30,
)


@given(json_values)
def test_json_values_round_trip(value: Any) -> None:
    assert loads(dumps(value)) == value
    assert loads(dumps_str(value)) == value


@pytest.mark.parametrize(
    "value",
    [
        datetime(2024, 1, 1, tzinfo=UTC),
        date(2024, 1, 1),
        {1, 2},
        frozenset({1}),
        b"bytes",
        bytearray(b"x"),
        object(),
        Point(1),
        Tag("subclass"),
        decimal.Decimal("1.5"),
        {"nested": [datetime(2024, 1, 1, tzinfo=UTC)]},
        {1: "non-string key"},
        2**70,
    ],
    ids=lambda v: type(v).__name__,
)
def test_non_json_values_are_refused(value: Any) -> None:
    with pytest.raises(SerializationError, match="not JSON-serializable"):
        dumps(value)
    with pytest.raises(SerializationError):
        check_payload({"arg": value})


def test_size_limit() -> None:
    data = check_payload({"s": "x" * 100}, limit=200)
    assert loads(data) == {"s": "x" * 100}
    with pytest.raises(SerializationError, match="over the limit of 50 bytes"):
        check_payload({"s": "x" * 100}, limit=50)


@pytest.mark.parametrize("raw", [b"{not json", b"", "[1, 2", b"\xff\xfe"])
def test_corrupt_data_raises_serialization_error(raw: bytes | str) -> None:
    with pytest.raises(SerializationError, match="corrupt JSON payload"):
        loads(raw)


def test_corrupt_payload_marker() -> None:
    marker = CorruptPayload("{" * 100, "corrupt JSON payload: unexpected end")
    assert marker.raw.startswith("{{{")
    assert "unexpected end" in marker.error
    text = repr(marker)
    assert text.startswith("CorruptPayload(")
    assert len(text) < 120  # the raw text is shortened
    assert not hasattr(marker, "__dict__")
