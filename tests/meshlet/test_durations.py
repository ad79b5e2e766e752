from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshlet.durations import DurationError, format_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        pytest.param("100ms", 0.1, id="millis"),
        pytest.param("10s", 10.0, id="seconds"),
        pytest.param("5m", 300.0, id="minutes"),
        pytest.param("1h30m", 5400.0, id="compound"),
        pytest.param("1.5s", 1.5, id="fraction"),
        pytest.param(" 2d ", 172800.0, id="days-with-spaces"),
    ],
)
def test_parse(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "10", "s", "10x", "-1s", "1s 2s", "1" * 40 + "s", "ms10"])
def test_rejects_with_the_value_in_the_message(text: str) -> None:
    with pytest.raises(DurationError, match="invalid duration"):
        parse_duration(text)


@given(st.integers(min_value=0, max_value=10**9))
def test_format_round_trips(millis: int) -> None:
    assert parse_duration(format_duration(millis / 1000)) == pytest.approx(millis / 1000)
