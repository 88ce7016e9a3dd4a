"""`rlhf up` serves whatever the model store holds and builds nothing: with no policy
(or no reward) version it stops before starting anything and says what to run."""

from __future__ import annotations

import pytest

from rlhf_cli import up_cmd
from rlhf_cli.main import main
from shared.models.store import ModelStore


@pytest.fixture
def nothing_starts(monkeypatch):
    def refuse(*_args, **_kwargs):
        raise AssertionError("rlhf up started the stack")

    monkeypatch.setattr(up_cmd, "start_stack", refuse)


def store_with(root, *kinds: str) -> ModelStore:
    def fill(out) -> None:
        (out / "config.json").write_text("{}")

    store = ModelStore(root)
    for kind in kinds:
        store.write_version(kind, fill)
    return store


def test_up_on_an_empty_store_starts_nothing_and_says_where_models_come_from(tmp_path, nothing_starts, capsys):
    store = tmp_path / "store"
    assert main(["up", "--model-store", str(store), "--log-dir", str(tmp_path / "logs")]) == 2

    message = capsys.readouterr().err
    assert "holds no policy version and no reward version; nothing was started" in message
    for command in (
        f"rlhf import policy DIR --set-current --model-store {store}",
        f"rlhf import reward DIR --set-current --model-store {store}",
        "rlhf sft --data FILE",
        "rlhf train-reward --data FILE",
        f"rlhf bootstrap --model-store {store}",
        f"rlhf demo --model-store {store}",
    ):
        assert command in message
    assert not (tmp_path / "logs").exists()  # not even the broker's log
    assert not store.exists() or not any(store.iterdir())  # and nothing was built


def test_up_names_only_the_missing_kind(tmp_path, nothing_starts, capsys):
    store_with(tmp_path, "policy")
    assert main(["up", "--model-store", str(tmp_path)]) == 2
    message = capsys.readouterr().err
    assert "holds no reward version;" in message and "no policy version" not in message
    assert "rlhf import reward DIR" in message and "rlhf import policy DIR" not in message


def test_the_models_needed_follow_the_services_started(tmp_path):
    store_with(tmp_path, "reward")
    assert up_cmd.missing_models(tmp_path, ["feedback", "openai_api"]) == []
    assert up_cmd.missing_models(tmp_path, ["reward"]) == []
    assert up_cmd.missing_models(tmp_path, ["policy"]) == ["policy"]
    assert up_cmd.missing_models(tmp_path, ["trainer"]) == ["policy"]
    store_with(tmp_path, "policy")
    assert up_cmd.missing_models(tmp_path, ["reward", "policy", "feedback", "trainer"]) == []


def test_no_bootstrap_is_a_deprecated_no_op(tmp_path, nothing_starts, capsys):
    assert main(["up", "--model-store", str(tmp_path / "store"), "--no-bootstrap"]) == 2
    message = capsys.readouterr().err
    assert "--no-bootstrap is deprecated and does nothing" in message
    assert "nothing was started" in message  # the same check as without it: still no bootstrap


def test_the_demo_still_takes_no_bootstrap():
    from rlhf_cli.main import build_parser

    assert build_parser().parse_args(["demo", "--no-bootstrap"]).no_bootstrap is True
    assert build_parser().parse_args(["demo"]).no_bootstrap is False


def test_the_demo_without_bootstrap_on_an_empty_store_starts_nothing(tmp_path, capsys):
    code = main(
        ["demo", "--no-bootstrap", "--model-store", str(tmp_path / "store"), "--log-dir", str(tmp_path / "logs")]
    )
    assert code == 2
    assert "holds no policy version and no reward version; nothing was started" in capsys.readouterr().err
    assert not (tmp_path / "logs").exists()
