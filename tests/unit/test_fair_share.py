"""Per-user caps: the share cap's water filling and the settings."""

from __future__ import annotations

import pytest

from services.trainer.data.fair_share import NO_CAPS, UserCaps, share_cap, share_factors


def test_a_flooding_user_is_weighted_down_to_the_share():
    counts = {f"u{i}": 10 for i in range(10)} | {"attacker": 43}
    factors = share_factors(counts, 0.1)
    weights = {user: n * factors[user] for user, n in counts.items()}
    assert weights["attacker"] / sum(weights.values()) == pytest.approx(0.1)
    assert all(factors[f"u{i}"] == 1.0 for i in range(10))


def test_two_heavy_users_share_one_cap():
    counts = {f"u{i}": 1 for i in range(20)} | {"a": 50, "b": 30}
    cap = share_cap(counts, 0.1)
    assert cap is not None
    weighted = {u: min(n, cap) for u, n in counts.items()}
    total = sum(weighted.values())
    assert max(weighted.values()) / total == pytest.approx(0.1)
    assert weighted["a"] == weighted["b"] == pytest.approx(cap)


def test_no_cap_when_everyone_is_under_the_share_or_it_cannot_be_met():
    assert share_cap({f"u{i}": 5 for i in range(20)}, 0.1) is None  # 5% each
    # Five users cannot each hold at most 10%: the share is not enforced (the window limit still is).
    assert share_cap({"a": 100, "b": 1, "c": 1, "d": 1, "e": 1}, 0.1) is None
    assert share_cap({"a": 100, "b": 1}, 1.0) is None
    assert share_cap({}, 0.1) is None
    assert share_factors({"a": 3}, 0.1) == {"a": 1.0}


def test_settings_are_checked_and_described():
    with pytest.raises(ValueError, match="max_share"):
        UserCaps(max_share=0)
    with pytest.raises(ValueError, match="window_s"):
        UserCaps(window_s=0)
    with pytest.raises(ValueError, match="max_per_window"):
        UserCaps(max_per_window=-1)
    assert "at most 0.1" in UserCaps().describe() and "per 3600 s" in UserCaps().describe()
    assert NO_CAPS.describe() == "no share cap; no per-user window limit"
