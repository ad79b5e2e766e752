"""The soaks' growth rule (``soak_watch.summarize_rss``) on made-up RSS series (KiB)."""

from __future__ import annotations

from tests.proxy_e2e.soak_watch import RSS_ALLOWANCE_KIB, summarize_rss


def test_a_rise_during_the_warm_up_then_flat_is_not_growth() -> None:
    series = [30_000 + 400 * i for i in range(20)] + [38_000] * 80
    summary = summarize_rss(series)
    assert (summary.start, summary.early, summary.late) == (30_000, 38_000, 38_000)
    assert not summary.grew


def test_a_steady_climb_after_the_warm_up_is_growth() -> None:
    series = [30_000 + 100 * i for i in range(300)]  # 100 KiB a second
    summary = summarize_rss(series)
    assert summary.late - summary.early > RSS_ALLOWANCE_KIB
    assert summary.grew


def test_the_allowance_is_a_tenth_of_a_large_early_peak() -> None:
    series = [100_000] * 50 + [109_000] * 50
    summary = summarize_rss(series)
    assert summary.allowance == 10_000
    assert not summary.grew
    assert summarize_rss([100_000] * 50 + [111_000] * 50).grew
