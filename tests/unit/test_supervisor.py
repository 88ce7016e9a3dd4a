"""`rlhf up`'s restart policy: the backoff doubles with each quick crash up to
its cap, and exits are described the way an operator reads them."""

from __future__ import annotations

import signal

from rlhf_cli.supervisor import RestartPolicy, describe_exit


def test_backoff_doubles_per_quick_crash_up_to_the_cap():
    policy = RestartPolicy(initial_backoff_s=0.5, max_backoff_s=4.0)
    assert [policy.backoff_s(n) for n in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]


def test_exit_codes_and_signals_are_named():
    assert describe_exit(-signal.SIGKILL) == "signal SIGKILL"
    assert describe_exit(1) == "code 1"
    assert describe_exit(0) == "code 0"
