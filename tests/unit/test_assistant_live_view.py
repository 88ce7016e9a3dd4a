"""`rlhf demo --app assistant`'s measurements: per-version summaries with the standard
error of the users' utility, the headline, the saved JSON and PNG, the chat frame the
seed reward strips, and the trainer-watch helpers both apps' monitors share."""

from __future__ import annotations

import json
import math

import pytest

from assistant.bootstrap import chat_frame
from assistant.live_view import (
    AssistantPoint,
    AssistantSeries,
    AssistantVersionSummary,
    headline_text,
    save_series,
)
from assistant.simulator import VersionTally
from shared.loop_watch import kl_budget_from_metrics, kl_from_metrics, version_sort_key


def tally(utilities: list[float], correct: int = 0, words: int = 0) -> VersionTally:
    return VersionTally(
        responses=len(utilities),
        correct=correct,
        clean=len(utilities),
        good=correct,
        utility_sum=sum(utilities),
        utility_sq_sum=sum(u * u for u in utilities),
        words_sum=words,
    )


def test_version_summary_mean_and_standard_error_match_the_sample():
    utilities = [0.2, 0.4, 0.9, 0.5]
    summary = AssistantVersionSummary.of(tally(utilities, correct=3, words=80))
    mean = sum(utilities) / 4
    sample_sd = math.sqrt(sum((u - mean) ** 2 for u in utilities) / 3)
    assert summary.utility == pytest.approx(mean)
    assert summary.utility_standard_error == pytest.approx(sample_sd / 2)
    assert (summary.correct, summary.words, summary.answers) == (0.75, 20.0, 4)


def test_headline_compares_the_first_and_latest_versions_in_version_order():
    series = AssistantSeries(kl_budget=8.0)
    series.versions["v10"] = AssistantVersionSummary.of(tally([0.8, 0.6]))
    series.versions["v1"] = AssistantVersionSummary.of(tally([0.4, 0.5]))
    series.versions["v2"] = AssistantVersionSummary.of(tally([0.5, 0.5]))
    series.versions["v10"].kl = 3.0
    head = series.headline()
    assert (head["baseline_version"], head["latest_version"]) == ("v1", "v10")
    assert head["utility_gain"] == pytest.approx(0.25)
    expected_se = math.hypot(
        series.versions["v1"].utility_standard_error, series.versions["v10"].utility_standard_error
    )
    assert head["utility_gain_standard_error"] == pytest.approx(expected_se)
    assert head["kl_under_budget"] is True
    assert "gain +0.250" in headline_text(series) and "KL 3.00 (budget 8)" in headline_text(series)


def test_one_version_only_says_nothing_was_deployed():
    series = AssistantSeries()
    series.versions["v1"] = AssistantVersionSummary.of(tally([0.5]))
    assert "no new version was deployed" in headline_text(series)
    assert headline_text(AssistantSeries()).startswith("no answers")


def test_save_series_writes_the_json_and_a_png(tmp_path):
    series = AssistantSeries(kl_budget=5.0)
    for t, version, utility in ((10.0, "v1", 0.4), (20.0, "v1", 0.45), (30.0, "v2", 0.6)):
        point = AssistantPoint(t, version, 10, utility, 0.5, 0.9, 30.0, mean_reward=0.1, kl=1.0)
        series.points.append(point)
    series.versions["v1"] = AssistantVersionSummary.of(tally([0.4, 0.45]))
    series.versions["v2"] = AssistantVersionSummary.of(tally([0.6]))
    png, data = save_series(series, tmp_path / "out" / "loop.png")
    saved = json.loads(data.read_text())
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p["version"] for p in saved["points"]] == ["v1", "v1", "v2"]
    assert saved["headline"]["latest_version"] == "v2" and saved["kl_budget"] == 5.0


def test_chat_frame_is_what_the_template_puts_around_one_user_message(tmp_path):
    from tests.foreign_models import build_tiny_llama

    prefix, suffix = chat_frame(build_tiny_llama(tmp_path / "llama"))
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "llama")
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 2 + 2?"}], tokenize=False, add_generation_prompt=True
    )
    assert prefix and rendered == prefix + "What is 2 + 2?" + suffix
    assert chat_frame(build_tiny_llama(tmp_path / "plain", chat_template=None)) == ("", "")


def test_kl_and_budget_are_found_under_the_names_gates_use():
    assert kl_from_metrics({"kl_to_reference": 1.5, "kl": 9.0}) == 1.5
    assert kl_from_metrics({"candidate_kl_nats": 2.0, "kl_coef": 0.1}) == 2.0
    assert kl_from_metrics({"kl_budget": 20.0}) is None
    assert kl_budget_from_metrics({"max_kl": 12.0}) == 12.0
    assert sorted(["v10", "v2", "odd", "v1"], key=version_sort_key) == ["v1", "v2", "v10", "odd"]
