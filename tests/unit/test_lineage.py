"""Lineage: ranges, what a candidate trained on, which versions a user shaped, `rlhf lineage`."""

from __future__ import annotations

import json

import pytest

from rlhf_cli.main import main
from services.trainer.data.fair_share import UserCaps
from services.trainer.data.ledger import FeedbackLedger
from services.trainer.loop.lineage import (
    CandidateLineage,
    compact_ranges,
    in_ranges,
    parse_ranges,
    reward_lineage,
    versions_shaped_by,
)
from shared.models.store import ModelStore
from tests.unit.test_ledger import gen, preference
from tests.unit.test_ledger_caps import correction, deletion


def test_ranges_round_trip():
    assert compact_ranges([7, 1, 2, 3, 3, 9, 10]) == "1-3,7,9-10"
    assert compact_ranges([]) == ""
    assert parse_ranges("1-3,7,9-10,junk") == [(1, 3), (7, 7), (9, 10)]
    assert in_ranges(2, parse_ranges("1-3")) and not in_ranges(4, parse_ranges("1-3,7"))


def test_a_candidate_accumulates_its_rounds():
    state = CandidateLineage().add_step("v4", 1, 40, [3, 5], "v2")
    state = CandidateLineage.load(state).add_step("v4", 2, 55, [5, 6], "v3")
    notes = CandidateLineage.load(state).notes("v3", UserCaps())
    assert notes["reward_version"] == "v3" and notes["reward_versions"] == "v2,v3"
    assert notes["corrections_seqs"] == "3,5-6" and notes["feedback_seq_to"] == "55" and notes["rounds"] == "1-2"
    # A candidate trained from another version (an operator moved CURRENT) starts afresh.
    other = CandidateLineage.load(CandidateLineage.load(state).add_step("v5", 3, 60, [], "v3"))
    assert (other.rounds, other.correction_seqs, other.reward_versions) == ([3], [], ["v3"])
    assert CandidateLineage.load({"unknown": 1}) == CandidateLineage()


def fill(out):
    (out / "model.safetensors").write_bytes(b"weights")


@pytest.fixture()
def store(tmp_path):
    """reward v1 (bootstrap), reward v2 (trained on seqs 1-4), policy v1, policy v2 (corrections 5, scored by v2)."""
    s = ModelStore(tmp_path / "store")
    s.write_version("reward", fill)
    s.write_version("reward", fill, parent_version="v1", notes=reward_lineage(0, 4, [], UserCaps(), 0))
    s.write_version("policy", fill)
    notes = CandidateLineage(rounds=[1], feedback_seq_to=6, correction_seqs=[5], reward_versions=["v2"]).notes(
        "v2", UserCaps()
    )
    s.write_version("policy", fill, parent_version="v1", notes={**notes, "promoted_by": "trainer gate"})
    s.append_history("policy", {"at": 1.0, "action": "promote", "version": "v2", "previous_version": "v1"})
    s.append_history("policy", {"at": 2.0, "action": "rollback", "version": "v1", "previous_version": "v2"})
    s.append_history("policy", {"at": 3.0, "action": "promote", "version": "v3", "previous_version": "v1"})
    return s


def test_versions_a_users_feedback_shaped(store):
    shaped = versions_shaped_by(store, [(2, "preference", "f2"), (5, "correction", "f5")])
    assert [(s.kind, s.version) for s in shaped] == [("reward", "v2"), ("policy", "v2")]
    assert "ledger seq 2" in shaped[0].how and "1 corrections" in shaped[1].how and "reward v2" in shaped[1].how
    assert versions_shaped_by(store, [(9, "preference", "f9"), (5, "flag", "x")]) == []
    only_reward = versions_shaped_by(store, [(3, "rating", "r")])
    assert [(s.kind, s.version) for s in only_reward] == [("reward", "v2"), ("policy", "v2")]


def test_history_lists_the_moves_of_a_version(store):
    assert [e["action"] for e in store.history("policy", "v2")] == ["promote", "rollback"]
    assert len(store.history("policy")) == 3
    with open(store.kind_dir("policy") / "HISTORY.jsonl", "a") as fh:
        fh.write('{"torn')  # a crash mid-append
    assert len(store.history("policy")) == 3


def test_rlhf_lineage_of_a_version(store, capsys):
    assert main(["lineage", "policy", "v2", "--model-store", str(store.root), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["parent_version"] == "v1" and report["ancestors"] == ["v1"]
    assert report["notes"]["reward_version"] == "v2" and report["notes"]["corrections_seqs"] == "5"
    assert [e["action"] for e in report["history"]] == ["promote", "rollback"]
    assert main(["lineage", "policy", "v2", "--model-store", str(store.root)]) == 0
    text = capsys.readouterr().out
    assert "v2 <- v1" in text and "trainer gate" in text
    assert main(["lineage", "policy", "v9", "--model-store", str(store.root)]) == 2
    assert "v9 is not in the model store" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["lineage", "policy"])


def test_rlhf_lineage_of_a_user(store, tmp_path, capsys):
    state = tmp_path / "state"
    ledger = FeedbackLedger(state / "ledger.sqlite")
    ledger.record_generation(gen("a"))
    ledger.record_generation(gen("b"))
    ledger.record_feedback(preference("f1", "a", "b", user="carol"))  # seq 1
    ledger.record_feedback(preference("f2", "b", "a", user="alice"))
    ledger.record_feedback(correction("f3", "a", "alice"))
    ledger.record_feedback(deletion("d1", "alice", "leaving"))
    ledger.commit()
    ledger.close()
    args = ["lineage", "--user", "alice", "--model-store", str(store.root), "--state-dir", str(state)]
    assert main([*args, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["feedback"] == {"preference": 1, "correction": 1} and report["excluded"]
    assert report["deletion_requests"][0]["reason"] == "leaving"
    # Reward v2 trained on seqs 1-4 (alice's preference is seq 2); her correction (seq 3) is not among
    # policy v2's corrections (seq 5), but v2 was scored by the reward model her preference shaped.
    assert [(v["kind"], v["version"]) for v in report["versions"]] == [("reward", "v2"), ("policy", "v2")]
    assert "corrections" not in report["versions"][1]["how"] and "reward v2" in report["versions"][1]["how"]
    assert main(args) == 0
    assert "asked to be excluded" in capsys.readouterr().out
    assert main(["lineage", "--user", "alice", "--state-dir", str(tmp_path / "nowhere")]) == 2
    assert "no trainer ledger" in capsys.readouterr().out
