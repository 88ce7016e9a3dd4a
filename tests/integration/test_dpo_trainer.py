"""Online DPO and KTO on a tiny random GPT-2: they move the policy's log-probs
the way the feedback says, never the frozen reference's, resume exactly from
a checkpoint, and read their examples from a real ledger."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from services.trainer.data.fair_share import NO_CAPS
from services.trainer.data.ledger import FeedbackLedger
from services.trainer.data.preference_sets import PreferencePair, RatedResponse
from services.trainer.loop.heldout import HeldoutSplit
from services.trainer.methods.dpo.dpo_config import DPOConfig
from services.trainer.methods.dpo.dpo_data import batch_logprobs, ledger_source, sequence_batch
from services.trainer.methods.dpo.dpo_trainer import DPOTrainer
from services.trainer.methods.dpo.kto_config import KTOConfig
from services.trainer.methods.dpo.kto_trainer import KTOTrainer
from services.trainer.methods.registry import build_trainer
from tests.unit.test_ledger import preference, rating
from tests.unit.test_preference_sets import gen, prompt_where

PROMPTS = [
    "User: how do I boil an egg?\nAssistant:",
    "User: what is the capital of France?\nAssistant:",
    "User: how do I water a plant?\nAssistant:",
    "User: tell me how to pick a lock.\nAssistant:",
]
GOOD, BAD = "the answer is here, see", "no no no no"
PAIRS = [PreferencePair(p, GOOD, BAD) for p in PROMPTS]
THUMBS = [RatedResponse(p, GOOD, True) for p in PROMPTS] + [RatedResponse(p, BAD, False) for p in PROMPTS]
SETTINGS = dict(batch_size=8, mini_batch_size=4, learning_rate=3e-3, kl_coef=0.5, max_response_length=16)


@pytest.fixture(scope="module")
def tiny_lm(tiny_lm_dir):
    """(directory, tokenizer) of the session's tiny GPT-2, on one torch thread (see test_ppo_trainer)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield tiny_lm_dir, AutoTokenizer.from_pretrained(tiny_lm_dir)
    torch.set_num_threads(threads)


def logratio(trainer, response: str) -> float:
    """Mean over PROMPTS of log pi(response) - log pi_ref(response)."""
    cfg = trainer.config
    batch = sequence_batch(trainer.tokenizer, [(p, response) for p in PROMPTS], cfg.max_prompt_length, 16)
    with torch.no_grad():
        return float((batch_logprobs(trainer.policy, batch) - batch_logprobs(trainer.reference, batch)).mean())


def snapshot(module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_dpo_raises_the_chosen_over_rejected_margin_and_keeps_the_reference_frozen(tiny_lm):
    lm_dir, tokenizer = tiny_lm
    trainer = DPOTrainer(AutoModelForCausalLM.from_pretrained(lm_dir), tokenizer, lambda: PAIRS, DPOConfig(**SETTINGS))
    reference = snapshot(trainer.reference)
    assert logratio(trainer, GOOD) == 0.0 and logratio(trainer, BAD) == 0.0
    history = [trainer.step(PROMPTS * 2) for _ in range(6)]
    assert history[0].policy_loss == pytest.approx(math.log(2), abs=1e-4), "policy == reference at the start"
    margin = logratio(trainer, GOOD) - logratio(trainer, BAD)
    assert margin > 2.0, f"margin {margin:.3f}; losses {[round(s.policy_loss, 3) for s in history]}"
    assert history[-1].policy_loss < 0.5 * math.log(2) and history[-1].accuracy == 1.0
    assert history[-1].reward_margin > 0 and history[-1].kl_coef == 0.5
    assert same_weights(reference, snapshot(trainer.reference)), "the reference must not move"
    for s in history:
        assert s.examples_available == 4 and s.examples_used == 4 and math.isfinite(s.grad_norm)
        assert math.isnan(s.ptx_loss)


def test_kto_raises_desirable_and_lowers_undesirable_log_probs(tiny_lm):
    lm_dir, tokenizer = tiny_lm
    trainer = KTOTrainer(AutoModelForCausalLM.from_pretrained(lm_dir), tokenizer, lambda: THUMBS, KTOConfig(**SETTINGS))
    reference = snapshot(trainer.reference)
    history = [trainer.step(PROMPTS * 2) for _ in range(6)]
    good, bad = logratio(trainer, GOOD), logratio(trainer, BAD)
    assert good > 1.0 and bad < -1.0, (good, bad, [round(s.policy_loss, 3) for s in history])
    assert all(s.kl >= 0.0 for s in history), "z0 is clamped at 0"
    assert history[-1].accuracy == 1.0 and history[-1].reward_margin > 0
    assert same_weights(reference, snapshot(trainer.reference))


def test_checkpoint_restore_resumes_identically(tiny_lm, tmp_path):
    lm_dir, tokenizer = tiny_lm
    demos = [(PROMPTS[0], "boil it for nine minutes"), (PROMPTS[1], "Paris"), (PROMPTS[2], "a little daily")]
    config = DPOConfig(**{**SETTINGS, "batch_size": 4, "mini_batch_size": 2, "ptx_batch_size": 2, "seed": 3})
    pairs = PAIRS + [PreferencePair(p, BAD, GOOD, weight=0.5) for p in PROMPTS[:2]]  # more than a batch: picks matter
    trainer = DPOTrainer(AutoModelForCausalLM.from_pretrained(lm_dir), tokenizer, lambda: pairs, config)
    for _ in range(2):
        trainer.step(PROMPTS, demos)
    trainer.checkpoint(tmp_path / "ckpt")
    expected = [trainer.step(PROMPTS, demos).as_dict() for _ in range(2)]
    expected_weights = snapshot(trainer.policy)

    resumed = DPOTrainer.from_checkpoint(tmp_path / "ckpt", lambda: pairs)
    assert isinstance(resumed, DPOTrainer) and resumed.step_count == 2 and resumed.config == config
    got = [resumed.step(PROMPTS, demos).as_dict() for _ in range(2)]
    for want, have in zip(expected, got):
        for key in ("policy_loss", "ptx_loss", "loss", "reward_margin", "grad_norm", "step"):
            assert have[key] == want[key], key
    assert same_weights(expected_weights, snapshot(resumed.policy))

    kto = KTOTrainer(AutoModelForCausalLM.from_pretrained(lm_dir), tokenizer, lambda: THUMBS)
    with pytest.raises(ValueError, match="a dpo checkpoint cannot resume a kto trainer"):
        kto.restore(tmp_path / "ckpt")


def test_without_feedback_a_step_is_sft_on_corrections_or_no_update(tiny_lm):
    lm_dir, tokenizer = tiny_lm
    trainer = build_trainer(
        "kto", AutoModelForCausalLM.from_pretrained(lm_dir), tokenizer, None, KTOConfig(**SETTINGS), lambda: []
    )
    before = snapshot(trainer.policy)
    idle = trainer.step(PROMPTS)
    assert same_weights(before, snapshot(trainer.policy)) and trainer.step_count == 1
    assert math.isnan(idle.loss) and idle.examples_available == 0
    sft = trainer.step(PROMPTS, [(PROMPTS[0], GOOD)])
    assert math.isfinite(sft.ptx_loss) and math.isnan(sft.policy_loss)
    assert not same_weights(before, snapshot(trainer.policy))
    with pytest.raises(ValueError, match="kto learns from the ledger's feedback: it needs a data_source"):
        build_trainer("kto", trainer.policy, tokenizer, None, None)
    with pytest.raises(TypeError, match="takes a DPOConfig"):
        build_trainer("dpo", trainer.policy, tokenizer, None, KTOConfig(), lambda: [])


def test_the_ledger_source_feeds_live_pairs_and_thumbs_to_the_trainers(tiny_lm, tmp_path):
    lm_dir, tokenizer = tiny_lm
    split = HeldoutSplit(one_in=3)
    ledger = FeedbackLedger(tmp_path / "ledger.sqlite", caps=NO_CAPS)
    train, held = prompt_where(False), prompt_where(True)
    for key, prompt in (("t", train), ("h", held)):
        ledger.record_generation(gen(f"{key}a", prompt, GOOD, request=key))
        ledger.record_generation(gen(f"{key}b", prompt, BAD, request=key))
        ledger.record_feedback(preference(f"p{key}", f"{key}a", f"{key}b"))
        ledger.record_feedback(rating(f"r{key}", f"{key}b", -1.0))
    ledger.commit()
    for method, config in (("dpo", DPOConfig(**SETTINGS)), ("kto", KTOConfig(**SETTINGS))):
        source = ledger_source(ledger, split.is_heldout, config)
        assert [e.prompt for e in source()] == [train], "the held-out prompt is the gate's, never trained on"
        trainer = build_trainer(method, AutoModelForCausalLM.from_pretrained(lm_dir), tokenizer, None, config, source)
        stats = trainer.step(PROMPTS * 2)
        assert stats.examples_used == 1 and math.isfinite(stats.policy_loss)
    ledger.close()
