"""ThreadTuner keeps the thread count whose decode steps are faster."""

from __future__ import annotations

import torch

from services.policy.threads import ThreadTuner


def _probe(tuner: ThreadTuner, step_s: dict[int, float]) -> None:
    """Run decode steps until one probe has completed, with given step times."""
    for _ in range(tuner.probe_every + 2 * tuner.probe_steps + 1):
        threads = tuner.threads_for_next_step()
        tuner.record(threads, step_s[threads])


def test_switches_to_the_faster_count_and_backs_off_when_the_probe_loses():
    before = torch.get_num_threads()
    try:
        tuner = ThreadTuner((1, 2), probe_every=10, probe_steps=3)
        assert tuner.current == 1
        _probe(tuner, {1: 0.010, 2: 0.006})
        assert tuner.current == 2 and torch.get_num_threads() == 2
        _probe(tuner, {1: 0.009, 2: 0.008})  # 1 is not 10 % faster: stay, probe less often
        assert tuner.current == 2 and tuner.probe_every == 20
    finally:
        torch.set_num_threads(before)


def test_a_single_choice_never_probes():
    tuner = ThreadTuner((1,))
    assert {tuner.threads_for_next_step() for _ in range(600)} == {1}
