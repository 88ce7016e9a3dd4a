"""Canary rollouts: the sticky user slice, the store's CANARY pointer, the feedback
scores and the decision rule, and the policy's router."""

from __future__ import annotations

import math
import statistics

import pytest

from services.trainer.data.ledger_lineage import VersionFeedback
from services.trainer.loop.canary import COMPLETED, ROLLED_BACK, RUNNING, CanarySettings, feedback_scores, judge_canary
from shared.canary import serves_canary, user_bucket
from shared.models.store import ModelStore, ModelStoreError

SETTINGS = CanarySettings(share=0.2, min_feedback=10, confidence_z=1.645)


def test_user_slice_is_sticky_and_grows_with_the_share():
    users = [f"user-{i}" for i in range(2000)]
    at_10 = {u for u in users if serves_canary(u, 0.1)}
    at_30 = {u for u in users if serves_canary(u, 0.3)}
    assert at_10 <= at_30, "raising the share only adds users"
    assert 0.05 < len(at_10) / len(users) < 0.15 and 0.25 < len(at_30) / len(users) < 0.35
    assert all(serves_canary(u, 0.3) == (user_bucket(u) < 0.3) for u in users[:50])
    assert not serves_canary("", 0.99), "requests without a user id stay on stable"


def test_canary_pointer_is_written_read_and_cleared(tmp_path):
    store = ModelStore(tmp_path)
    for _ in range(2):
        store.write_version("policy", lambda out: (out / "model.safetensors").write_bytes(b"w"))
    assert store.canary("policy") is None
    pointer = store.set_canary("policy", "v2", 0.25, "v1")
    assert store.canary("policy") == pointer
    assert (pointer.version, pointer.stable_version, pointer.share) == ("v2", "v1", 0.25)
    assert store.current("policy") == "v2", "CURRENT is untouched (here: the latest, as no CURRENT file exists)"
    with pytest.raises(ModelStoreError, match="between 0 and 1"):
        store.set_canary("policy", "v2", 1.0, "v1")
    with pytest.raises(ModelStoreError, match="v7 is not in the model store"):
        store.set_canary("policy", "v7", 0.2, "v1")
    store.clear_canary("policy")
    store.clear_canary("policy")
    assert store.canary("policy") is None
    (tmp_path / "policy" / "CANARY").write_text("{not json")
    with pytest.raises(ModelStoreError, match="remove it to end the canary"):
        store.canary("policy")


def test_feedback_scores_per_event():
    rows = [
        VersionFeedback("rating", 1.0, "v2", ""),  # thumb up on the canary
        VersionFeedback("rating", -1.0, "v1", ""),  # thumb down on stable
        VersionFeedback("rating", 0.25, "v1", ""),
        VersionFeedback("flag", None, "v2", ""),
        VersionFeedback("preference", None, "v1", "v1"),  # same version: no information
        VersionFeedback("preference", None, "v2", "v1"),  # canary answer chosen over a stable one
        VersionFeedback("rating", 1.0, "v0", ""),  # another version: ignored
    ]
    canary, stable = feedback_scores(rows, canary="v2", stable="v1")
    assert canary == [1.0, -1.0, 1.0]
    assert stable == [-1.0, 0.25, -1.0]


def test_waits_for_min_feedback_on_both_sides():
    verdict = judge_canary([-1.0] * 50, [1.0] * 9, SETTINGS, elapsed_s=10)
    assert verdict.decision == RUNNING and verdict.reason == "waiting_for_feedback"
    assert "--canary-min-feedback" in verdict.detail


def test_significantly_worse_canary_is_rolled_back():
    canary = [-1.0, 1.0, -1.0, -1.0, -1.0] * 4  # mean -0.6
    stable = [1.0, 1.0, -1.0, 1.0, 1.0] * 6  # mean 0.6
    verdict = judge_canary(canary, stable, SETTINGS, elapsed_s=10)
    assert verdict.decision == ROLLED_BACK and verdict.reason == "significantly_worse"
    assert verdict.difference == pytest.approx(-1.2)
    expected_error = math.sqrt(statistics.variance(canary) / 20 + statistics.variance(stable) / 30)
    assert verdict.standard_error == pytest.approx(expected_error)
    assert verdict.difference + 1.645 * verdict.standard_error < 0


def test_canary_not_worse_is_completed():
    equal = [1.0, -1.0, 1.0, 1.0] * 5
    verdict = judge_canary(equal, equal * 2, SETTINGS, elapsed_s=10)
    assert verdict.decision == COMPLETED and verdict.reason == "not_worse"
    # Slightly worse, but within the noise: still completed.
    slightly = [1.0, -1.0, 1.0, 1.0, 1.0, -1.0, 1.0, 1.0, -1.0, 1.0] * 2  # mean 0.4 against 0.5
    assert judge_canary(slightly, equal, SETTINGS, elapsed_s=10).decision == COMPLETED
    # Everyone happy on both sides (no variance): not worse.
    assert judge_canary([1.0] * 10, [1.0] * 10, SETTINGS, elapsed_s=10).decision == COMPLETED


def test_time_limit_decides_on_what_arrived():
    limited = CanarySettings(share=0.2, min_feedback=100, confidence_z=1.645, max_s=60)
    assert judge_canary([-1.0] * 5, [1.0] * 5, limited, elapsed_s=59).decision == RUNNING
    worse = judge_canary([-1.0] * 5, [1.0] * 5, limited, elapsed_s=61)
    assert (worse.decision, worse.reason) == (ROLLED_BACK, "time_limit")
    quiet = judge_canary([], [1.0], limited, elapsed_s=61)
    assert (quiet.decision, quiet.reason) == (COMPLETED, "time_limit")
