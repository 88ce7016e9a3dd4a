"""One user flooding flipped preferences must not steer the reward model.

Ten honest users compare answers of the demo world (the chosen answer is
clearly better); one attacker sends 30% of all feedback, every time preferring
the rude answer of a pair. Everything goes through a real ledger (SQLite) and
the trainer's own training path (weighted Bradley-Terry on the MiniLM reward
model). With the per-user caps, held-out accuracy on honest pairs stays within
2 points of a model trained on the honest users alone; without them it drops
further. And the gate, scoring with the defended reward model, refuses the
policy the attacker wants (rude answers) while the undefended model would let
it through.
"""

from __future__ import annotations

import random

import pytest

from demo.world.generator import FLAWS, build_prompts, make_response, preference_pairs, split_prompts
from services.trainer.data.fair_share import NO_CAPS, UserCaps
from services.trainer.data.ledger import FeedbackLedger
from services.trainer.loop.gate import GateBudget, PolicyEvaluation, promote_if_better
from services.trainer.loop.reward_update import RewardUpdateSettings, fine_tune
from shared.models.reward.minilm import new_reward_model
from shared.models.reward.scoring import pairwise_accuracy, score_texts
from shared.proto.rlhf.v1 import events_pb2

pytestmark = pytest.mark.slow

HONEST_USERS = 10
ATTACKER_SHARE = 0.3
# Small and quick: one trainable layer, a fast head, 40 steps.
SETTINGS = RewardUpdateSettings(
    min_new_comparisons=1, steps=40, tolerance=0.0, batch_size=16, lr=5e-5, head_lr=1e-3, trainable_layers=1
)


def honest_pairs() -> list[tuple[str, str, str]]:
    prompts = split_prompts(build_prompts(), "train")
    return preference_pairs(random.Random(1).sample(prompts, 120), seed=1, per_prompt=1)


def attacker_pairs(count: int) -> list[tuple[str, str, str]]:
    """(prompt, rude answer as 'chosen', the same answer politely as 'rejected')."""
    rng = random.Random(3)
    out = []
    for prompt in rng.choices(split_prompts(build_prompts(), "train"), k=count):
        base = frozenset() if rng.random() < 0.7 else frozenset({rng.choice([f for f in FLAWS if f != "rude"])})
        out.append(
            (prompt.text, make_response(prompt, base | {"rude"}, rng).text, make_response(prompt, base, rng).text)
        )
    return out


def record(ledger: FeedbackLedger, pairs, users) -> None:
    """Each pair as two generations and one user's preference event."""
    for i, ((prompt, chosen, rejected), user) in enumerate(zip(pairs, users)):
        ids = []
        for side, response in (("c", chosen), ("r", rejected)):
            gid = f"{user}-{i}-{side}"
            ledger.record_generation(
                events_pb2.GenerationEvent(
                    generation_id=gid, request_id=gid, prompt=prompt, response=response, model_version="v1"
                )
            )
            ids.append(gid)
        outcome = ledger.record_feedback(
            events_pb2.FeedbackEvent(
                feedback_id=f"{user}-{i}",
                generation_id=ids[0],
                user_id=user,
                preference=events_pb2.Preference(chosen_generation_id=ids[0], rejected_generation_id=ids[1]),
            )
        )
        assert outcome == "recorded"
    ledger.commit()


@pytest.fixture(scope="module")
def ledgers(tmp_path_factory):
    """(honest-only ledger, ledger with the attacker)."""
    honest = honest_pairs()
    users = [f"user-{i % HONEST_USERS}" for i in range(len(honest))]
    attack = attacker_pairs(round(ATTACKER_SHARE / (1 - ATTACKER_SHARE) * len(honest)))
    root = tmp_path_factory.mktemp("poisoning")
    clean = FeedbackLedger(root / "clean.sqlite")
    record(clean, honest, users)
    poisoned = FeedbackLedger(root / "poisoned.sqlite")
    record(poisoned, honest, users)
    record(poisoned, attack, ["attacker"] * len(attack))
    yield clean, poisoned
    clean.close()
    poisoned.close()


@pytest.fixture(scope="module")
def heldout_prompts():
    return split_prompts(build_prompts(), "heldout")


def train(ledger: FeedbackLedger, caps: UserCaps):
    ledger.caps = caps
    comparisons = ledger.comparisons()
    model, tokenizer = new_reward_model(max_length=64)
    fine_tune(model, tokenizer, comparisons, SETTINGS)
    model.requires_grad_(False)
    return model, tokenizer, comparisons


def gate_on_rudeness(model, tokenizer, prompts):
    """The gate's paired test of a policy answering rudely against one answering politely,
    each scored by ``model`` (the same answers otherwise; KL 0); and on what share of
    the prompts ``model`` scores the rude answer higher."""
    rng = random.Random(5)
    texts = [p.text for p in prompts]
    polite = [make_response(p, (), rng).text for p in prompts]
    rude = [make_response(p, {"rude"}, rng).text for p in prompts]

    def evaluation(responses):
        scores = score_texts(model, tokenizer, texts, responses)
        return PolicyEvaluation(mean_reward=sum(scores) / len(scores), kl=0.0, prompt_rewards=tuple(scores))

    candidate, current = evaluation(rude), evaluation(polite)
    rude_preferred = sum(r > p for r, p in zip(candidate.prompt_rewards, current.prompt_rewards)) / len(prompts)
    return promote_if_better(candidate, current, GateBudget(min_reward_gain=0.0, kl_budget=1.0)), rude_preferred


def test_one_user_flooding_flipped_preferences_does_not_steer_the_reward_model(ledgers, heldout_prompts):
    import torch

    torch.set_num_threads(1)
    clean, poisoned = ledgers
    heldout = preference_pairs(heldout_prompts, seed=2, per_prompt=3)[:150]

    honest_model, honest_tok, _ = train(clean, UserCaps())
    defended_model, defended_tok, defended = train(poisoned, UserCaps())
    undefended_model, undefended_tok, undefended = train(poisoned, NO_CAPS)

    # The attacker sent 30% of the comparisons; under the caps they weigh at most 10%.
    attacker_rows = [c for c in undefended if c.users == ("attacker",)]
    assert len(attacker_rows) / len(undefended) == pytest.approx(ATTACKER_SHARE, abs=0.01)
    attacker_weight = sum(c.weight for c in defended if c.users == ("attacker",))
    assert attacker_weight / sum(c.weight for c in defended) == pytest.approx(0.1, abs=1e-6)
    assert all(c.weight == 1.0 for c in defended if c.users != ("attacker",))

    honest = pairwise_accuracy(honest_model, honest_tok, heldout)
    with_caps = pairwise_accuracy(defended_model, defended_tok, heldout)
    without_caps = pairwise_accuracy(undefended_model, undefended_tok, heldout)
    assert honest > 0.8, f"the honest-only model should learn the world's preferences ({honest:.3f})"
    assert with_caps >= honest - 0.02, f"caps: {with_caps:.3f} vs honest-only {honest:.3f}"
    assert without_caps < honest - 0.02, f"without caps: {without_caps:.3f} vs honest-only {honest:.3f}"

    # The gate, scoring with the defended reward model, refuses the policy the attacker wants;
    # the undefended model has been talked out of telling rude from polite.
    refused, rude_with_caps = gate_on_rudeness(defended_model, defended_tok, heldout_prompts)
    steered, rude_without_caps = gate_on_rudeness(undefended_model, undefended_tok, heldout_prompts)
    assert not refused.promote and refused.reason == "reward_regressed", refused.detail
    assert rude_without_caps > rude_with_caps + 0.2, (rude_without_caps, rude_with_caps)
