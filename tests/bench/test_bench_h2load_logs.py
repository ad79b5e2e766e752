"""The pure parts of the benches' h2load log handling (bench/h2load_logs.py)."""

from __future__ import annotations

import pytest

from bench import h2load_logs
from bench.h2load_logs import Entry

PERIOD = 10_000


def _log(*starts: int, latency: int = 100) -> list[Entry]:
    return [Entry(start, 200, latency) for start in starts]


def test_parse_log_reads_complete_lines_only() -> None:
    text = "1700000000000100\t200\t250\n1700000000010100\t200\t300\n17000000000201"
    assert h2load_logs.parse_log(text) == [
        Entry(1700000000000100, 200, 250),
        Entry(1700000000010100, 200, 300),
    ]
    assert h2load_logs.parse_log("") == []
    assert h2load_logs.parse_log("\n") == []


def test_parse_log_rejects_a_malformed_line() -> None:
    with pytest.raises(ValueError, match="line 2"):
        h2load_logs.parse_log("1\t200\t3\n1\t200\n")
    with pytest.raises(ValueError):
        h2load_logs.parse_log("1\tOK\t3\n")


def test_merge_orders_all_entries_by_start() -> None:
    merged = h2load_logs.merge([_log(0, 20, 40), _log(10, 30)])
    assert [entry.start_us for entry in merged] == [0, 10, 20, 30, 40]


def test_common_window_is_where_every_log_was_sending() -> None:
    assert h2load_logs.common_window([_log(0, 50, 100), _log(30, 80, 130)]) == (30, 100)
    with pytest.raises(ValueError, match="never ran"):
        h2load_logs.common_window([_log(0, 10), _log(20, 30)])
    with pytest.raises(ValueError, match="empty"):
        h2load_logs.common_window([_log(0, 10), []])


def test_percentile_keeps_the_benches_rank_definition() -> None:
    values = list(range(1, 101))  # 1..100
    assert h2load_logs.percentile(values, 0.5) == 51  # rank int(100 * 0.5) = 50
    assert h2load_logs.percentile(values, 0.99) == 100
    assert h2load_logs.percentile([7], 0.99) == 7
    with pytest.raises(ValueError):
        h2load_logs.percentile([], 0.5)


def test_latency_ms_sorts_and_converts() -> None:
    entries = [Entry(index, 200, latency) for index, latency in enumerate([3000, 1000, 2000])]
    assert h2load_logs.latency_ms(entries) == (2.0, 3.0)


def test_gap_stats_tell_bursts_from_evenly_spaced_starts() -> None:
    even = h2load_logs.merge(_log(*range(slot * 1000, 100_000, PERIOD)) for slot in range(10))
    spaced = h2load_logs.gap_stats(even)
    assert spaced.count == 99
    assert spaced.median_us == 1000
    assert spaced.close_share == 0
    # Ten connections firing together every 10 ms (a few µs apart).
    burst = h2load_logs.merge(_log(*range(slot * 5, 100_000, PERIOD)) for slot in range(10))
    bunched = h2load_logs.gap_stats(burst)
    assert bunched.median_us == 5
    assert bunched.close_share == pytest.approx(90 / 99)
    with pytest.raises(ValueError):
        h2load_logs.gap_stats(_log(1))


def test_timer_phase_takes_the_earliest_start_after_request_zero() -> None:
    # Request 0 on connecting (at 500), the timer due at 1_000 + k * 10 ms, firing late.
    log = _log(500, 11_300, 21_050, 31_400, 41_000)
    assert h2load_logs.timer_phase(log, PERIOD) == 1_050
    assert h2load_logs.timer_phase(log[:3], PERIOD) is None
    # The recent requests show a timer that restarted at a new phase.
    restarted = [*log, *_log(55_000, 65_200, 75_100)]
    assert h2load_logs.timer_phase(restarted, PERIOD, samples=3, recent=True) == 5_000


def test_timer_phase_wraps_around_the_period() -> None:
    # Due at 9_900 modulo 10 ms; one firing late enough to cross into the next period.
    log = _log(0, 19_900, 30_150, 39_950)
    assert h2load_logs.timer_phase(log, PERIOD) == 9_900


def test_slot_error_is_circular() -> None:
    assert h2load_logs.slot_error(9_950, 0, 0, period_us=PERIOD, slots=10) == 50
    assert h2load_logs.slot_error(3_100, 0, 3, period_us=PERIOD, slots=10) == 100
    assert h2load_logs.slot_error(500, 9_000, 2, period_us=PERIOD, slots=10) == 500


def test_plan_slots_picks_the_reference_placing_most() -> None:
    phases = {0: 4_000, 1: 1_000, 2: 2_050, 3: 3_900}
    reference, placed = h2load_logs.plan_slots(
        phases, [], None, period_us=PERIOD, slots=10, tolerance_us=300
    )
    assert reference in (1_000, 2_050, 3_900, 4_000)
    assert len(placed) == 3  # 3_900 and 4_000 contend for one slot
    assert sorted(placed) in ([0, 1, 2], [0, 1, 3])


def test_plan_slots_fills_free_slots_only_within_tolerance() -> None:
    phases = {0: 2_100, 1: 5_600, 2: 7_020, 3: 6_950}
    reference, placed = h2load_logs.plan_slots(
        phases, [2], 0, period_us=PERIOD, slots=10, tolerance_us=300
    )
    assert reference == 0
    # 2_100 would be slot 2 (taken), 5_600 is 400 µs off, 7_020 and 6_950 contend: closest wins.
    assert placed == {2: 7}


def test_plan_slots_needs_a_reference_or_candidates() -> None:
    with pytest.raises(ValueError):
        h2load_logs.plan_slots({}, [], None, period_us=PERIOD, slots=10, tolerance_us=300)


def test_h2load_summary_requires_every_request_to_succeed() -> None:
    ok = "requests: 10 total, 10 started, 10 done, 10 succeeded, 0 failed, 0 errored, 0 timeout"
    assert h2load_logs.h2load_summary(ok) == ok
    with pytest.raises(RuntimeError, match="h2load failed"):
        h2load_logs.h2load_summary(ok.replace("0 failed", "3 failed"), "connect refused")
