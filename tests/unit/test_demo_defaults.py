"""What `rlhf demo` and `rlhf up` choose when told nothing: where the trainer keeps its
state, and which policy method the demo trains with."""

from __future__ import annotations

from rlhf_cli.stack import Stack
from shared import env


def test_the_trainer_state_lives_beside_the_logs_unless_the_environment_names_it(tmp_path, monkeypatch):
    monkeypatch.delenv(env.TRAINER_STATE_DIR, raising=False)
    stack = Stack(model_store=tmp_path / "store", log_dir=tmp_path / "run" / "logs", services=["trainer"])
    assert stack.trainer_state_dir == tmp_path / "run" / "trainer-state"
    monkeypatch.setenv(env.TRAINER_STATE_DIR, str(tmp_path / "fresh"))
    assert stack.trainer_state_dir == tmp_path / "fresh"


def test_the_demo_runs_the_best_measured_method_and_up_leaves_the_choice_to_the_trainer(monkeypatch):
    from rlhf_cli.demo_cmd import DEMO_POLICY_METHOD
    from rlhf_cli.main import build_parser

    monkeypatch.delenv(env.TRAINER_POLICY_METHOD, raising=False)
    parser = build_parser()
    assert parser.parse_args(["demo"]).policy_method == DEMO_POLICY_METHOD == "rloo"
    assert parser.parse_args(["up"]).policy_method is None
    assert parser.parse_args(["demo", "--policy-method", "ppo"]).policy_method == "ppo"
    monkeypatch.setenv(env.TRAINER_POLICY_METHOD, "grpo")
    assert build_parser().parse_args(["demo"]).policy_method == "grpo"
