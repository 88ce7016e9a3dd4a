"""The trainer service in-process: a real broker, a real gRPC server on port 0,
a real model store with a tiny policy, and a Python reward callable injected
into the core (no reward service needed)."""

from __future__ import annotations

import dataclasses
import shutil
import sqlite3

import grpc
import pytest
from prometheus_client import REGISTRY

from services.trainer.config import TrainerConfig
from services.trainer.data.ledger_lineage import read_user_rows
from services.trainer.loop.gate import GateBudget
from services.trainer.loop.heldout import HeldoutSplit
from services.trainer.loop.lineage import in_ranges, parse_ranges
from services.trainer.methods.ppo.ppo_config import PPOConfig
from services.trainer.server import TrainerServer
from shared.kafka import events
from shared.kafka.producer import create_producer, produce_event
from shared.models.store import ModelStore
from shared.proto.rlhf.v1 import common_pb2, events_pb2, trainer_pb2, trainer_pb2_grpc
from tests.helpers import FAST_GROUP_CONFIG, read_topic, start_group_at_end, wait_until

QUESTIONS = ["How do I boil an egg?", "What is the capital of France?", "How do I water a plant?"]
# An application's own prompt frame: the platform knows nothing of any one frame.
PROMPT_FRAME = "Q: {question}\nA:"
SPLIT = HeldoutSplit(2)  # the fixture's --gate-heldout-one-in
# Questions the gate keeps for itself (found by the same hash the trainer uses), and ones it trains on.
CANDIDATE_QUESTIONS = [f"What is {a} plus {b}?" for a in range(1, 6) for b in range(1, 6)]
GATE_QUESTIONS = [q for q in CANDIDATE_QUESTIONS if SPLIT.is_heldout(PROMPT_FRAME.format(question=q))][:2]
TRAINING_QUESTIONS = [q for q in CANDIDATE_QUESTIONS if not SPLIT.is_heldout(PROMPT_FRAME.format(question=q))][:3]


def short_answer_reward(prompts, responses):
    """Prefers responses of about three words: learnable by a random tiny LM."""
    return [-abs(len(r.split()) - 3) / 3.0 for r in responses]


def copy_dir(src):
    def fill(out):
        for path in src.iterdir():
            if path.is_file():
                shutil.copy2(path, out / path.name)

    return fill


@pytest.fixture()
def trainer(broker, tiny_lm_dir, tmp_path, unique_name):
    store = ModelStore(tmp_path / "store")
    store.write_version("policy", copy_dir(tiny_lm_dir))
    store.set_current("policy", "v1")
    config = TrainerConfig(
        port=0,
        metrics_port=-1,
        kafka=broker.bootstrap,
        model_store=str(store.root),
        state_dir=str(tmp_path / "state"),
        consumer_group=unique_name,
        feedback_hold_s=1.0,
        grace_period_s=1,
        policy_min_prompts=2,
        policy_min_new_feedback=1,
        policy_steps_per_round=2,
        ppo=PPOConfig(batch_size=2, mini_batch_size=2, max_new_tokens=6, learning_rate=1e-4),
        gate_prompts=2,
        gate_min_prompts=2,
        gate_heldout_one_in=2,
        gate_samples_per_prompt=1,
        reward_min_heldout_comparisons=1,
        gate_min_reward_gain=-1e9,
        torch_threads=1,
        round_check_s=3600,
        **FAST_GROUP_CONFIG,
    )
    # The group starts where the session's topics end: what every earlier test left there
    # (their events, their number, how fast a loaded machine drains them) is no part of this test.
    start_group_at_end(broker.bootstrap, unique_name, [events.GENERATIONS_TOPIC, events.FEEDBACK_TOPIC])
    server = TrainerServer(config, reward_fn=short_answer_reward)
    port = server.start(train=False)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    yield server, trainer_pb2_grpc.TrainerServiceStub(channel), store
    channel.close()
    server.stop(1)


@pytest.fixture(scope="module")
def producer(broker):
    producer = create_producer(broker.bootstrap)
    yield producer
    producer.close()


def generation(gid: str, question: str, response: str, version: str = "v1") -> events_pb2.GenerationEvent:
    return events_pb2.GenerationEvent(
        event_id=events.new_id(),
        generation_id=gid,
        request_id=gid,
        prompt=PROMPT_FRAME.format(question=question),
        response=response,
        model_version=version,
        created_at=events.now_timestamp(),
    )


def feedback(fid: str, gid: str, user: str = "u1", **kind) -> events_pb2.FeedbackEvent:
    return events_pb2.FeedbackEvent(
        feedback_id=fid, generation_id=gid, user_id=user, created_at=events.now_timestamp(), **kind
    )


def send(producer, topic, key, message):
    produce_event(producer, topic, key, message).get(timeout=10)


def ledger_seq(server, feedback_id: str) -> int:
    db = sqlite3.connect(server.config.ledger_path)
    try:
        return db.execute("SELECT seq FROM feedback WHERE feedback_id = ?", (feedback_id,)).fetchone()[0]
    finally:
        db.close()


def ledger_ids(server) -> list[str]:
    db = sqlite3.connect(server.config.ledger_path)
    try:
        return [r[0] for r in db.execute("SELECT feedback_id FROM feedback")]
    finally:
        db.close()


def test_ingest_joins_dedups_holds_and_dead_letters(trainer, producer, unique_name):
    server, stub, _ = trainer
    g = [f"{unique_name}-g{i}" for i in range(4)]
    f = [f"{unique_name}-f{i}" for i in range(7)]
    version = f"{unique_name}-v"  # this test's own, so the per-version verdicts are its alone
    for gid, question in zip(g[:2], QUESTIONS):
        send(producer, events.GENERATIONS_TOPIC, gid, generation(gid, question, "Boil it.", version))
    send(producer, events.FEEDBACK_TOPIC, g[0], feedback(f[0], g[0], rating=events_pb2.Rating(score=0.5)))
    send(producer, events.FEEDBACK_TOPIC, g[0], feedback(f[0], g[0], rating=events_pb2.Rating(score=0.5)))
    send(
        producer,
        events.FEEDBACK_TOPIC,
        g[0],
        feedback(f[1], g[0], preference=events_pb2.Preference(chosen_generation_id=g[0], rejected_generation_id=g[1])),
    )
    send(
        producer, events.FEEDBACK_TOPIC, g[1], feedback(f[2], g[1], correction=events_pb2.Correction(response="Paris."))
    )
    send(producer, events.FEEDBACK_TOPIC, g[0], feedback(f[3], g[0], rating=events_pb2.Rating(score=5.0)))
    send(producer, events.FEEDBACK_TOPIC, g[3], feedback(f[4], g[3], rating=events_pb2.Rating(score=-1.0)))
    # Feedback first, its generation second: held, then joined.
    send(
        producer,
        events.FEEDBACK_TOPIC,
        g[2],
        feedback(f[5], g[2], flag=events_pb2.Flag(category=events_pb2.FLAG_CATEGORY_WRONG)),
    )
    send(producer, events.GENERATIONS_TOPIC, g[2], generation(g[2], QUESTIONS[2], "Water it.", version))

    wait_until(lambda: {f[0], f[1], f[2], f[5]} <= set(ledger_ids(server)), timeout_s=180, message="ledger joins")

    def dead_letters():
        letters = read_topic(server.config.kafka, events.DEADLETTER_TOPIC, events_pb2.DeadLetter, timeout_s=2)
        mine = {}
        for _, letter in letters:
            if letter.consumer_group == unique_name:
                mine[events_pb2.FeedbackEvent.FromString(letter.value).feedback_id] = letter
        return mine if {f[3], f[4]} <= set(mine) else None

    letters = wait_until(dead_letters, timeout_s=120, message="dead letters")
    assert letters[f[3]].reason == "invalid_field" and "rating.score" in letters[f[3]].error
    unknown = letters[f[4]]
    assert unknown.reason == "unknown_generation" and g[3] in unknown.error
    assert unknown.source_topic == events.FEEDBACK_TOPIC and unknown.key == g[3].encode()
    # The session broker also carries other tests' events; look at ours only.
    ids = [i for i in ledger_ids(server) if i.startswith(unique_name)]
    assert sorted(ids) == sorted({f[0], f[1], f[2], f[5]})  # the duplicate f0 counted once

    # Per-version satisfaction: the rating once (its duplicate is not counted), the correction and the
    # flag (joined when its generation came) as unsatisfied, the preference as neither.
    def verdicts():
        return {
            v: REGISTRY.get_sample_value(
                "rlhf_trainer_feedback_verdicts_total", {"model_version": version, "verdict": v}
            )
            for v in ("satisfied", "unsatisfied")
        }

    wait_until(lambda: verdicts() == {"satisfied": 1.0, "unsatisfied": 2.0}, timeout_s=30, message="verdicts")

    status = stub.GetStatus(trainer_pb2.GetStatusRequest())
    assert all(status.feedback_counts[kind] >= 1 for kind in ("rating", "preference", "correction", "flag"))
    assert status.generations_seen >= 3 and status.policy_version == "v1"


def test_pause_resume_promote_and_rollback(trainer, broker):
    server, stub, store = trainer
    paused = stub.Pause(trainer_pb2.PauseRequest(reason="maintenance"))
    assert paused.state == trainer_pb2.TRAINER_STATE_PAUSED and paused.pause_reason == "maintenance"
    resumed = stub.Resume(trainer_pb2.ResumeRequest())
    assert resumed.state != trainer_pb2.TRAINER_STATE_PAUSED and resumed.pause_reason == ""

    policy = common_pb2.MODEL_KIND_POLICY
    with pytest.raises(grpc.RpcError) as err:
        stub.Rollback(trainer_pb2.RollbackRequest(kind=policy))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(grpc.RpcError) as err:
        stub.Promote(trainer_pb2.PromoteRequest(kind=policy, version="v9"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as err:
        stub.Promote(trainer_pb2.PromoteRequest(version="v1"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    store.write_version("policy", copy_dir(store.open_version("policy", "v1")), parent_version="v1")
    promoted = stub.Promote(trainer_pb2.PromoteRequest(kind=policy, version="v2", reason="canary looks good"))
    assert promoted.action == events_pb2.MODEL_UPDATE_ACTION_PROMOTE and store.current("policy") == "v2"
    assert promoted.manifest_sha256 == store.manifest_sha256("policy", "v2")
    rolled = stub.Rollback(trainer_pb2.RollbackRequest(kind=policy, reason="bad answers"))
    assert rolled.action == events_pb2.MODEL_UPDATE_ACTION_ROLLBACK
    assert (rolled.version, rolled.previous_version) == ("v1", "v2") and store.current("policy") == "v1"

    published = read_topic(broker.bootstrap, events.MODEL_UPDATES_TOPIC, events_pb2.ModelUpdateEvent, min_count=2)
    ids = {update.event_id for _, update in published}
    assert promoted.event_id in ids and rolled.event_id in ids
    # Lineage: the store's history says who moved CURRENT, when, why, with which event.
    history = store.history("policy")
    assert [(h["action"], h["version"], h["event_id"]) for h in history] == [
        ("promote", "v2", promoted.event_id),
        ("rollback", "v1", rolled.event_id),
    ]
    assert history[0]["actor"].startswith("operator via TrainerService.Promote (")
    assert history[0]["reason"] == "canary looks good" and history[1]["reason"] == "bad answers"


def test_training_round_promotes_keeps_training_then_discards(trainer, producer, unique_name):
    server, stub, store = trainer
    gids = [f"{unique_name}-g{i}" for i in range(3)]
    for gid, question in zip(gids, TRAINING_QUESTIONS):
        send(producer, events.GENERATIONS_TOPIC, gid, generation(gid, question, "An answer."))
    send(
        producer,
        events.FEEDBACK_TOPIC,
        gids[0],
        feedback(f"{unique_name}-c", gids[0], correction=events_pb2.Correction(response="Nine minutes.")),
    )
    wait_until(lambda: f"{unique_name}-c" in ledger_ids(server), timeout_s=180, message="feedback in the ledger")

    # Until traffic has given the gate its held-out prompts, a candidate trains on but is not promoted.
    # (The session's broker also carries other tests' prompts: count from what is there.)
    server.online.config = dataclasses.replace(server.config, gate_prompts=0)  # count them all
    before = server.online.heldout_status()["gate_prompts"]
    server.online.config = dataclasses.replace(server.config, gate_min_prompts=before + 2, gate_prompts=0)
    assert server.online.heldout_status()["waiting_for"].startswith("2 more held-out prompts")
    server.online.run_once()
    waiting = stub.GetStatus(trainer_pb2.GetStatusRequest())
    assert waiting.recent_candidates[-1].reason == "heldout_too_small" and store.current("policy") == "v1"
    assert waiting.heldout.gate_prompts == before and waiting.heldout.gate_prompts_required == before + 2
    assert "held-out prompts" in waiting.heldout.waiting_for
    fresh = [f"{unique_name}: what is {n} times {n}?" for n in range(40)]
    held = [q for q in fresh if SPLIT.is_heldout(PROMPT_FRAME.format(question=q))][:2]
    held_gids = [f"{unique_name}-h{i}" for i in range(2)]
    for gid, question in zip(held_gids, held):
        send(producer, events.GENERATIONS_TOPIC, gid, generation(gid, question, "An answer."))
    send(
        producer,
        events.FEEDBACK_TOPIC,
        held_gids[0],
        feedback(f"{unique_name}-h", held_gids[0], rating=events_pb2.Rating(score=1.0)),
    )
    wait_until(lambda: f"{unique_name}-h" in ledger_ids(server), timeout_s=180, message="held-out traffic")
    assert "held-out prompts" not in server.online.heldout_status()["waiting_for"]

    server.online.run_once()  # a round: 2 more PPO steps, then the gate (min gain -inf: passes)
    assert store.current("policy") == "v2"
    manifest = store.manifest("policy", "v2")
    assert manifest.parent_version == "v1"
    assert {
        "mean_reward",
        "kl",
        "current_mean_reward",
        "reward_gain",
        "reward_gain_standard_error",
        "kl_budget",
        "gate_prompts",
        "gate_test",
        "gate_z",
    } <= set(manifest.eval_metrics)
    assert manifest.eval_metrics["gate_test"] == 1.0 and manifest.eval_metrics["gate_prompts"] == before + 2
    # Lineage: what made v2 and who promoted it.
    notes = manifest.notes
    assert notes["promoted_by"] == "trainer gate" and notes["promotion_reason"].startswith("gate passed")
    assert notes["reward_version"] == "unversioned reward callable" and notes["rounds"] == "1-2"
    correction_seq = ledger_seq(server, f"{unique_name}-c")
    assert in_ranges(correction_seq, parse_ranges(notes["corrections_seqs"]))
    assert int(notes["feedback_seq_to"]) >= correction_seq
    [promotion] = store.history("policy", "v2")
    assert promotion["event_id"] == notes["promotion_event_id"] and promotion["actor"] == "trainer gate"
    status = stub.GetStatus(trainer_pb2.GetStatusRequest())
    assert status.last_policy_update.step == 3 and status.recent_candidates[-1].promoted
    assert status.recent_candidates[-1].version == "v2" and status.recent_candidates[-1].reason == "passed"

    # New feedback starts another round. A gain that is not significant (here: an
    # infinitely wide confidence bound) is not promoted, but the candidate's weights
    # are kept and the next round trains on from them.
    send(
        producer,
        events.FEEDBACK_TOPIC,
        gids[1],
        feedback(f"{unique_name}-r", gids[1], rating=events_pb2.Rating(score=1.0)),
    )
    wait_until(lambda: f"{unique_name}-r" in ledger_ids(server), timeout_s=180, message="second feedback")
    server.online.budget = GateBudget(min_reward_gain=1e9, kl_budget=1e9, confidence_z=1e12)
    server.online.run_once()
    last = stub.GetStatus(trainer_pb2.GetStatusRequest()).recent_candidates[-1]
    assert not last.promoted and last.reason == "reward_gain_too_small" and last.version == ""
    assert store.versions("policy") == ["v1", "v2"] and store.current("policy") == "v2"
    assert server.config.checkpoint_dir.exists()  # kept for the next round
    steps_before = server.online.rounds.trainer.step_count

    # A candidate over the KL budget is discarded: the next round starts again from v2.
    send(
        producer,
        events.FEEDBACK_TOPIC,
        gids[2],
        feedback(f"{unique_name}-t", gids[2], rating=events_pb2.Rating(score=-1.0)),
    )
    wait_until(lambda: f"{unique_name}-t" in ledger_ids(server), timeout_s=180, message="third feedback")
    server.online.budget = GateBudget(min_reward_gain=0.0, kl_budget=-1e9)
    server.online.run_once()
    last = stub.GetStatus(trainer_pb2.GetStatusRequest()).recent_candidates[-1]
    assert not last.promoted and last.reason == "kl_over_budget"
    # the third round trained on from the second round's weights, not from a fresh copy of v2
    assert last.metrics["ppo_step"] == steps_before + server.config.policy_steps_per_round
    assert store.versions("policy") == ["v1", "v2"] and store.current("policy") == "v2"
    assert not server.config.checkpoint_dir.exists()  # the discarded candidate's weights are gone


def test_reward_update_promotes_within_tolerance_and_publishes(broker, tmp_path):
    from services.trainer.data.training_sets import Comparison
    from services.trainer.loop.promotion import Promoter
    from services.trainer.loop.reward_update import RewardUpdateSettings, update_reward_model
    from shared.models.reward.format import save_reward_model
    from shared.models.reward.minilm import new_reward_model

    store = ModelStore(tmp_path / "store")
    model, tokenizer = new_reward_model(max_length=32)
    store.write_version("reward", lambda out: save_reward_model(model, tokenizer, out))
    comparisons = [
        Comparison(PROMPT_FRAME.format(question=q), f"{q.split()[-1]} is easy: here is how.", "No.")
        for q in CANDIDATE_QUESTIONS
    ]
    producer = create_producer(broker.bootstrap)
    try:
        promoter = Promoter(store, lambda: producer)
        too_few = RewardUpdateSettings(
            min_new_comparisons=1, steps=2, tolerance=1.0, batch_size=4, min_heldout_pairs=len(CANDIDATE_QUESTIONS)
        )
        waiting = update_reward_model(store, promoter, too_few, comparisons, comparisons, SPLIT, threads=1)
        assert not waiting.promoted and waiting.reason == "heldout_too_small" and store.versions("reward") == ["v1"]

        strict = RewardUpdateSettings(min_new_comparisons=1, steps=2, tolerance=-1.0, batch_size=4, min_heldout_pairs=2)
        refused = update_reward_model(store, promoter, strict, comparisons, comparisons, SPLIT, threads=1)
        assert not refused.promoted and refused.reason == "accuracy_dropped" and store.versions("reward") == ["v1"]

        lenient = RewardUpdateSettings(min_new_comparisons=1, steps=2, tolerance=1.0, batch_size=4, min_heldout_pairs=2)
        outcome = update_reward_model(store, promoter, lenient, comparisons, comparisons, SPLIT, threads=1)
    finally:
        producer.close()
    assert outcome.promoted and outcome.version == "v2" and store.current("reward") == "v2"
    assert {"pairwise_accuracy", "previous_pairwise_accuracy"} <= set(store.manifest("reward", "v2").eval_metrics)
    assert (store.kind_dir("reward") / "v2" / "model.onnx").is_file()
    updates = read_topic(broker.bootstrap, events.MODEL_UPDATES_TOPIC, events_pb2.ModelUpdateEvent, min_count=1)
    mine = [
        u
        for _, u in updates
        if u.kind == common_pb2.MODEL_KIND_REWARD and u.manifest_sha256 == store.manifest_sha256("reward", "v2")
    ]
    assert mine and mine[0].action == events_pb2.MODEL_UPDATE_ACTION_PROMOTE and mine[0].previous_version == "v1"
    notes = store.manifest("reward", "v2").notes
    assert notes["promotion_event_id"] == mine[0].event_id and notes["promoted_by"] == "trainer gate"


def test_the_gate_prompts_are_never_trained_on(trainer, producer, unique_name):
    server, _, _ = trainer
    held_out, trained_on = GATE_QUESTIONS[0], TRAINING_QUESTIONS[0]
    pairs = [(f"{unique_name}-held", held_out), (f"{unique_name}-train", trained_on)]
    for gid, question in pairs:
        send(producer, events.GENERATIONS_TOPIC, gid, generation(gid, question, "An answer."))
        send(
            producer,
            events.FEEDBACK_TOPIC,
            gid,
            feedback(f"{gid}-c", gid, correction=events_pb2.Correction(response="Better.")),
        )
    wait_until(
        lambda: {f"{gid}-c" for gid, _ in pairs} <= set(ledger_ids(server)),
        timeout_s=180,
        message="both corrections in the ledger",
    )
    prompts, demos = server.online._training_data()
    trained = set(prompts) | {p for p, _ in demos}
    assert PROMPT_FRAME.format(question=trained_on) in trained
    assert not any(held_out in p for p in trained)
    with server.online._ledger_lock:
        seen = server.online.ledger.distinct_prompts()
    assert PROMPT_FRAME.format(question=held_out) in server.online.split.heldout(seen)


def test_a_deletion_request_on_the_topic_excludes_the_user_from_training(trainer, producer, unique_name):
    server, _, _ = trainer
    user = f"{unique_name}-leaving"
    question = TRAINING_QUESTIONS[1]
    gid = f"{unique_name}-g"
    send(producer, events.GENERATIONS_TOPIC, gid, generation(gid, question, "An answer."))
    fid = f"{unique_name}-c"
    send(
        producer,
        events.FEEDBACK_TOPIC,
        gid,
        feedback(fid, gid, user, correction=events_pb2.Correction(response="Mine.")),
    )
    wait_until(lambda: fid in ledger_ids(server), timeout_s=180, message="the user's correction in the ledger")
    assert "Mine." in [r for _, r in server.online._training_data()[1]]

    request = events_pb2.FeedbackEvent(
        feedback_id=f"{unique_name}-d", user_id=user, deletion=events_pb2.DataDeletionRequest(reason="forget me")
    )
    send(producer, events.FEEDBACK_TOPIC, user, request)
    wait_until(
        lambda: read_user_rows(server.config.ledger_path, user)[1], timeout_s=180, message="the deletion in the ledger"
    )
    assert "Mine." not in [r for _, r in server.online._training_data()[1]]
    assert fid in ledger_ids(server), "the row stays, for lineage; it is only excluded"
