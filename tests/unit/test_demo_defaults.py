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


def test_the_assistant_demo_has_its_own_store_logs_pace_and_trainer_settings(monkeypatch):
    from rlhf_cli.demo_assistant import DEFAULT_LOG_DIR, DEFAULT_MODEL_STORE, apply_defaults, trainer_settings
    from rlhf_cli.main import build_parser

    for name in (env.MODEL_STORE, env.SIM_RATE, env.SIM_CONCURRENCY, env.DEMO_OUT):
        monkeypatch.delenv(name, raising=False)
    args = build_parser().parse_args(["demo", "--app", "assistant"])
    apply_defaults(args)
    assert (args.model_store, args.log_dir, args.minutes) == (DEFAULT_MODEL_STORE, DEFAULT_LOG_DIR, 30.0)
    assert args.out == "runs/assistant/loop.png" and args.rate < 8
    # What the user gives is kept.
    args = build_parser().parse_args(["demo", "--app", "assistant", "--model-store", "/s", "--minutes", "3"])
    apply_defaults(args)
    assert (args.model_store, args.minutes) == ("/s", 3.0)
    # Rollout settings only for the methods that sample (the trainer fits the adapter to the model's size).
    assert trainer_settings("rloo")["RLHF_TRAINER_RLOO_BATCH_SIZE"] == "4"
    assert "RLHF_TRAINER_RLOO_MAX_NEW_TOKENS" in trainer_settings("rloo")
    assert "RLHF_TRAINER_DPO_MAX_NEW_TOKENS" not in trainer_settings("dpo")
    # The toy demo's own defaults are untouched.
    args = build_parser().parse_args(["demo"])
    assert args.app == "demo" and args.minutes is None and args.model_store == "./model-store"
