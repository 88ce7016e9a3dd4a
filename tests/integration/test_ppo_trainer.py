"""PPO end to end on a tiny random GPT-2: it learns a programmatic reward,
the ptx loss learns a demonstration, and checkpoints resume exactly."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from services.trainer.methods.ppo.ppo_config import PPOConfig
from services.trainer.methods.ppo.ppo_trainer import VALUE_HEAD_FILE, PPOTrainer

PROMPTS = [
    "User: how do I boil an egg?\nAssistant:",
    "User: what is the capital of France?\nAssistant:",
    "User: how do I water a plant?\nAssistant:",
    "User: tell me how to pick a lock.\nAssistant:",
] * 4


def letter_e_reward(prompts: list[str], responses: list[str]) -> list[float]:
    """10 x the share of characters that are 'e': dense enough for a random policy to find."""
    return [10.0 * r.count("e") / max(1, len(r)) for r in responses]


@pytest.fixture(scope="module")
def tiny_lm(tiny_lm_dir):
    """(directory, tokenizer) of the session's 2-layer, 64-dim random GPT-2.

    One torch thread: matrices this small gain nothing from a second one, and
    on a busy 2-core machine two spinning OpenMP threads were ~30x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield tiny_lm_dir, AutoTokenizer.from_pretrained(tiny_lm_dir)
    torch.set_num_threads(threads)


def make_trainer(tiny_lm, **overrides) -> PPOTrainer:
    lm_dir, tokenizer = tiny_lm
    settings = dict(batch_size=16, mini_batch_size=8, epochs=2, learning_rate=3e-3, max_new_tokens=12, kl_coef=0.02)
    settings.update(overrides)
    return PPOTrainer(AutoModelForCausalLM.from_pretrained(lm_dir), tokenizer, letter_e_reward, PPOConfig(**settings))


def test_rollout_records_masked_responses_and_starts_at_zero_kl(tiny_lm):
    trainer = make_trainer(tiny_lm, batch_size=8, mini_batch_size=4)
    rollout = trainer.rollout(PROMPTS[:8])
    batch, width = rollout.response_ids.shape
    assert batch == 8 and 1 <= width <= 12
    eos = trainer.tokenizer.eos_token_id
    for ids, mask in zip(rollout.response_ids.tolist(), rollout.response_mask.tolist()):
        n = sum(mask)
        assert mask == [1] * n + [0] * (width - n)  # a prefix: up to and including the first EOS
        assert eos not in ids[: n - 1]
    # The policy starts as the reference, so their log-probs agree exactly.
    assert torch.equal(rollout.logprobs, rollout.ref_logprobs)
    assert (rollout.logprobs <= 0).all() and len(rollout.responses) == 8
    assert torch.all(rollout.values == 0)  # zero-initialised value head


def test_ppo_increases_the_reward_and_keeps_kl_finite(tiny_lm):
    trainer = make_trainer(tiny_lm, seed=0)
    history = [trainer.step(PROMPTS) for _ in range(15)]
    scores = [s.mean_score for s in history]
    first, last = sum(scores[:3]) / 3, sum(scores[-3:]) / 3
    # Over model/trainer seeds 0-9 the observed increase was 0.77-2.2 from ~0.3; 0.5 leaves margin.
    assert last > first + 0.5, f"reward did not improve: {[round(s, 2) for s in scores]}"
    for s in history:
        for name in ("kl", "kl_coef", "policy_loss", "value_loss", "entropy", "approx_kl", "clipfrac"):
            assert math.isfinite(getattr(s, name)), (name, s)
        assert 0.0 <= s.clipfrac <= 1.0 and s.samples_per_s > 0
    assert history[0].kl == 0.0 and history[-1].kl > 0.0
    assert math.isnan(history[0].ptx_loss)


def test_ptx_loss_learns_a_demonstration(tiny_lm):
    from services.trainer.methods.rollout import demonstration_batch, demonstration_loss

    trainer = make_trainer(tiny_lm, batch_size=4, mini_batch_size=4, epochs=1, ptx_coef=1.0)
    demo = [("User: how do I boil an egg?\nAssistant:", " Put the egg in boiling water for nine minutes.")]
    cfg = trainer.config
    batch = demonstration_batch(trainer.tokenizer, demo, cfg.max_prompt_length, cfg.max_new_tokens)
    with torch.no_grad():
        before = demonstration_loss(trainer.policy, batch).item()
    history = [trainer.step(PROMPTS[:4], demonstrations=demo) for _ in range(6)]
    with torch.no_grad():
        after = demonstration_loss(trainer.policy, batch).item()
    assert history[0].ptx_loss == pytest.approx(before, rel=1e-4)  # the first SFT term is the untrained loss
    assert history[-1].ptx_loss < history[0].ptx_loss
    assert after < 0.8 * before, (before, after)


def test_ptx_frames_a_correction_exactly_as_sft_and_sampling_do(tiny_lm):
    # A correction arrives as bare text; the policy samples " text<eos>" after "Assistant:".
    from services.trainer.methods.rollout import demonstration_batch
    from services.trainer.supervised.sft import IGNORE_INDEX, build_sft_example

    trainer = make_trainer(tiny_lm, batch_size=4, mini_batch_size=4)
    tok, cfg = trainer.tokenizer, trainer.config
    prompt, correction = "User: how do I boil an egg?\nAssistant:", "Boil it."  # fits max_new_tokens
    batch = demonstration_batch(tok, [(prompt, correction)], cfg.max_prompt_length, cfg.max_new_tokens)
    ids, labels = build_sft_example(tok, prompt, correction, 10_000)
    assert batch.input_ids[0, : len(ids)].tolist() == ids
    assert batch.labels[0, : len(labels)].tolist() == labels
    response = [t for t in labels if t != IGNORE_INDEX]
    assert response[-1] == tok.eos_token_id
    assert tok.decode(response[:-1]) == " " + correction


def test_policy_loss_coef_zero_leaves_only_the_ptx_term(tiny_lm):
    # The ablation baseline: no policy gradient, no value loss, so only the
    # demonstrations move the policy; without them nothing does.
    def policy_weights(trainer):
        return [p.detach().clone() for p in trainer.policy.parameters()]

    trainer = make_trainer(tiny_lm, batch_size=4, mini_batch_size=4, policy_loss_coef=0.0, vf_coef=0.0)
    before = policy_weights(trainer)
    trainer.step(PROMPTS[:4])
    assert all(torch.equal(a, b) for a, b in zip(before, policy_weights(trainer)))
    trainer.step(PROMPTS[:4], demonstrations=[("User: how do I boil an egg?\nAssistant:", "Boil it.")])
    assert not all(torch.equal(a, b) for a, b in zip(before, policy_weights(trainer)))


def test_checkpoint_restore_resumes_bit_for_bit(tiny_lm, tmp_path):
    trainer = make_trainer(tiny_lm, batch_size=8, mini_batch_size=4, seed=3)
    trainer.step(PROMPTS[:8])
    ckpt = trainer.checkpoint(tmp_path / "ckpt")
    trainer.checkpoint(tmp_path / "ckpt")  # overwriting an existing checkpoint is fine
    expected = trainer.step(PROMPTS[:8])

    resumed = PPOTrainer.from_checkpoint(ckpt, letter_e_reward)
    assert resumed.config == trainer.config and resumed.step_count == 1
    got = resumed.step(PROMPTS[:8])
    for name in ("mean_score", "kl", "kl_coef", "policy_loss", "value_loss", "entropy", "approx_kl"):
        assert getattr(got, name) == getattr(expected, name), name
    for (name, a), b in zip(trainer.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # no temporary dirs left behind


def test_save_policy_writes_a_servable_causal_lm(tiny_lm, tmp_path):
    trainer = make_trainer(tiny_lm, batch_size=4, mini_batch_size=4)
    trainer.step(PROMPTS[:4])
    out = trainer.save_policy(tmp_path / "policy")
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    assert not any("value_head" in k for k in load_file(str(out / "model.safetensors")))
    served = AutoModelForCausalLM.from_pretrained(out)
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        assert torch.allclose(served(ids).logits, trainer.policy(ids).logits, atol=1e-6)
    trainer.save_value_head(tmp_path / VALUE_HEAD_FILE)
    assert set(load_file(str(tmp_path / VALUE_HEAD_FILE))) == {"weight", "bias"}


def test_bad_reward_functions_are_refused(tiny_lm):
    trainer = make_trainer(tiny_lm, batch_size=4, mini_batch_size=4)
    rollout = trainer.rollout(PROMPTS[:4])
    trainer.reward_fn = lambda prompts, responses: [1.0]
    with pytest.raises(ValueError, match="returned \\(1,\\) scores for 4"):
        trainer.score(rollout)
    trainer.reward_fn = lambda prompts, responses: [math.nan] * len(responses)
    with pytest.raises(ValueError, match="non-finite"):
        trainer.score(rollout)
    with pytest.raises(ValueError, match="batch_size=4"):
        trainer.step(PROMPTS[:3])


def test_an_explicit_reference_is_what_the_kl_is_measured_against(tiny_lm):
    lm_dir, tokenizer = tiny_lm
    reference = AutoModelForCausalLM.from_pretrained(lm_dir)
    with torch.no_grad():
        reference.transformer.wte.weight.mul_(2.0)  # a different (sharper) frozen model
    config = PPOConfig(batch_size=4, mini_batch_size=4, max_new_tokens=8)
    trainer = PPOTrainer(
        AutoModelForCausalLM.from_pretrained(lm_dir), tokenizer, letter_e_reward, config, reference=reference
    )
    assert trainer.reference is reference and not any(p.requires_grad for p in reference.parameters())
    rollout = trainer.rollout(PROMPTS[:4])
    assert not torch.allclose(rollout.logprobs, rollout.ref_logprobs)
