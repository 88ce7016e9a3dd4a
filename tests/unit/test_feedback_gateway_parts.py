"""The gateway's first-answer cache and per-client rate limiter (no broker)."""

from __future__ import annotations

import pytest

from services.feedback.config import FeedbackConfig
from services.feedback.dedup import FirstAnswerCache
from services.feedback.gateway import FeedbackReceipt
from services.feedback.rate_limit import ClientRateLimiter
from shared.config import ConfigError
from shared.errors import ResourceExhausted, Unavailable


def test_first_answer_is_returned_to_duplicates_and_waiters():
    cache = FirstAnswerCache(ttl_s=60, capacity=10)
    stored, future, owner = cache.claim("a")
    assert stored is None and owner
    _, waiter, waiter_owns = cache.claim("a")
    assert waiter is future and not waiter_owns
    receipt = FeedbackReceipt("a", False, 1, 2, 3)
    cache.finish("a", receipt)
    assert waiter.result() == receipt
    assert cache.claim("a")[0] == receipt


def test_a_failed_submission_is_forgotten_so_a_retry_produces_again():
    cache = FirstAnswerCache(ttl_s=60, capacity=10)
    _, future, _ = cache.claim("a")
    cache.fail("a", Unavailable("broker down"))
    with pytest.raises(Unavailable):
        future.result()
    assert cache.claim("a")[2] is True


def test_cache_is_bounded_and_expires():
    cache = FirstAnswerCache(ttl_s=60, capacity=2)
    for fid in "abc":
        cache.claim(fid)
        cache.finish(fid, FeedbackReceipt(fid, False, 0, 0, 0))
    assert len(cache) == 2 and cache.claim("a")[2] is True
    expiring = FirstAnswerCache(ttl_s=1e-9, capacity=10)
    expiring.claim("x")
    expiring.finish("x", FeedbackReceipt("x", False, 0, 0, 0))
    assert expiring.claim("x")[2] is True


def test_rate_limiter_is_per_client_and_says_when_to_retry():
    limiter = ClientRateLimiter(rate_per_s=0.001, burst=2)
    limiter.acquire("a")
    limiter.acquire("a")
    with pytest.raises(ResourceExhausted) as info:
        limiter.acquire("a")
    assert info.value.retry_after_s > 0
    limiter.acquire("b")
    ClientRateLimiter(rate_per_s=0, burst=0).acquire("anyone", 10**6)  # 0 disables


def test_config_refuses_a_burst_below_the_batch_limit():
    with pytest.raises(ConfigError, match="rate-burst"):
        FeedbackConfig(rate_limit=10, rate_burst=5, max_batch_size=10)
    assert FeedbackConfig().port == 50053 and FeedbackConfig().metrics_port == 9103


def test_config_names_a_bad_server_or_linger():
    with pytest.raises(ConfigError, match="--server: must be 'aio' or 'sync'"):
        FeedbackConfig(server="threads")
    with pytest.raises(ConfigError, match="--linger-ms: must be in 0..1000"):
        FeedbackConfig(linger_ms=-1)
    assert FeedbackConfig().server == "aio" and FeedbackConfig(server="sync", linger_ms=0).linger_ms == 0


def test_config_reads_server_and_linger_from_flags_and_env(monkeypatch):
    from shared.config import load_config

    monkeypatch.setenv("RLHF_FEEDBACK_SERVER", "sync")
    config = load_config(FeedbackConfig, ["--linger-ms", "5"])
    assert (config.server, config.linger_ms) == ("sync", 5)


def test_entry_point_help_lists_the_gateway_flags():
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "services.feedback", "--help"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0 and "--rate-limit" in out.stdout and "RLHF_FEEDBACK_RATE_LIMIT" in out.stdout
