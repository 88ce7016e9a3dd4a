"""LoRA in the base trainer, for every method: one step trains only the adapter, the
reference is the base with the adapter off (its outputs are the base's and never move,
and it shares the policy's base tensors: one copy), and a checkpoint resumes exactly."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from services.trainer.data.preference_sets import PreferencePair, RatedResponse
from services.trainer.methods.dpo.dpo_config import DPOConfig
from services.trainer.methods.dpo.kto_config import KTOConfig
from services.trainer.methods.lora import AdapterOffReference, parameter_counts
from services.trainer.methods.policy_gradient.grpo_config import GRPOConfig
from services.trainer.methods.policy_gradient.rloo_config import RLOOConfig
from services.trainer.methods.ppo.ppo_config import PPOConfig
from services.trainer.methods.registry import build_trainer, resume_trainer
from shared.models.adapters import ADAPTER_CONFIG, ADAPTER_WEIGHTS

PROMPTS = ["User: how do I boil an egg?\nAssistant:", "User: what is 2+2?\nAssistant:"]
GOOD, BAD = "the answer is here, see", "no no no no"
PAIRS = [PreferencePair(p, GOOD, BAD) for p in PROMPTS]
THUMBS = [RatedResponse(p, GOOD, True) for p in PROMPTS] + [RatedResponse(p, BAD, False) for p in PROMPTS]
LORA = dict(lora_rank=4, lora_alpha=8, learning_rate=1e-2, num_threads=1)
SAMPLED = dict(batch_size=2, samples_per_prompt=2, mini_batch_size=2, max_new_tokens=6, **LORA)
JUDGED = dict(batch_size=4, mini_batch_size=2, max_response_length=8, kl_coef=0.5, **LORA)
CONFIGS = {
    "ppo": PPOConfig(**SAMPLED),
    "rloo": RLOOConfig(**SAMPLED),
    "grpo": GRPOConfig(**SAMPLED),
    "dpo": DPOConfig(**JUDGED),
    "kto": KTOConfig(**JUDGED),
}
SOURCES = {"dpo": lambda: PAIRS, "kto": lambda: THUMBS}


def letter_e_reward(prompts: list[str], responses: list[str]) -> list[float]:
    return [10.0 * r.count("e") / max(1, len(r)) for r in responses]


@pytest.fixture(scope="module")
def tiny_lm(tiny_lm_dir):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: a second thread only contends (see test_ppo_trainer)
    yield tiny_lm_dir, AutoTokenizer.from_pretrained(tiny_lm_dir)
    torch.set_num_threads(threads)


def make(tiny_lm, method: str):
    lm_dir, tokenizer = tiny_lm
    lm = AutoModelForCausalLM.from_pretrained(lm_dir)
    return build_trainer(method, lm, tokenizer, letter_e_reward, CONFIGS[method], SOURCES.get(method))


def base_logits(lm_dir, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return AutoModelForCausalLM.from_pretrained(lm_dir).eval()(input_ids=ids).logits


@pytest.mark.parametrize("method", list(CONFIGS))
def test_a_lora_step_trains_the_adapter_alone_against_the_base_as_reference(tiny_lm, method):
    lm_dir, tokenizer = tiny_lm
    trainer = make(tiny_lm, method)
    assert isinstance(trainer.reference, AdapterOffReference) and trainer.adapter_run
    ids = tokenizer(PROMPTS[0], return_tensors="pt").input_ids
    expected = base_logits(lm_dir, ids)
    assert torch.allclose(trainer.reference(input_ids=ids).logits, expected, atol=1e-6)
    # One copy of the base: every reference tensor is the policy's own base tensor.
    policy_ptrs = {p.data_ptr() for p in trainer.policy.parameters()}
    assert all(p.data_ptr() in policy_ptrs for p in trainer.reference.parameters())
    trained = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    lora = {id(p) for n, p in trainer.model.named_parameters() if "lora_" in n or n.startswith("value_head")}
    assert trained == lora, "AdamW holds the adapter (and PPO's value head) only"
    before = {k: v.clone() for k, v in trainer.reference.state_dict().items()}

    for _ in range(2):
        stats = trainer.step(PROMPTS, [(PROMPTS[0], "Boil it.")])
        assert math.isfinite(stats.policy_loss) and math.isfinite(stats.kl)
    after = trainer.reference.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert torch.allclose(trainer.reference(input_ids=ids).logits, expected, atol=1e-6)
    with torch.no_grad():
        policy_logits = trainer.policy(input_ids=ids).logits
    assert not torch.allclose(policy_logits, expected, atol=1e-4), "the adapter moved the policy"


def test_a_lora_trainer_holds_far_fewer_trainable_parameters_and_one_base(tiny_lm):
    lm_dir, tokenizer = tiny_lm
    full = build_trainer("rloo", AutoModelForCausalLM.from_pretrained(lm_dir), tokenizer, letter_e_reward,
                         RLOOConfig(**{**SAMPLED, "lora_rank": 0}))  # fmt: skip
    lora = make(tiny_lm, "rloo")
    full_counts, lora_counts = parameter_counts(full.policy), parameter_counts(lora.policy)
    assert lora_counts["trainable"] < full_counts["trainable"] / 10
    # Full fine-tuning keeps a second copy of every weight as its reference; LoRA keeps none.
    full_ptrs = {p.data_ptr() for p in full.policy.parameters()}
    assert not any(p.data_ptr() in full_ptrs for p in full.reference.parameters())


@pytest.mark.parametrize("method", ["ppo", "dpo"])
def test_a_lora_checkpoint_holds_the_adapter_and_resumes_exactly(tiny_lm, tmp_path, method):
    trainer = make(tiny_lm, method)
    trainer.step(PROMPTS)
    ckpt = trainer.checkpoint(tmp_path / "ckpt")
    assert sorted(p.name for p in (ckpt / "policy").iterdir()) == [ADAPTER_CONFIG, ADAPTER_WEIGHTS]
    assert not (ckpt / "reference").exists(), "the base is named, not copied"
    expected = trainer.step(PROMPTS)

    resumed = resume_trainer(method, ckpt, letter_e_reward, None, SOURCES.get(method))
    assert resumed.adapter_run and resumed.step_count == 1
    got = resumed.step(PROMPTS)
    assert got.policy_loss == expected.policy_loss and got.kl == expected.kl
    for (name, a), b in zip(trainer.policy.state_dict().items(), resumed.policy.state_dict().values()):
        assert torch.equal(a, b), name


def test_a_full_weights_checkpoint_does_not_resume_a_lora_trainer(tiny_lm, tmp_path):
    lm_dir, tokenizer = tiny_lm
    full = build_trainer("rloo", AutoModelForCausalLM.from_pretrained(lm_dir), tokenizer, letter_e_reward,
                         RLOOConfig(**{**SAMPLED, "lora_rank": 0}))  # fmt: skip
    full.checkpoint(tmp_path / "ckpt")
    with pytest.raises(ValueError, match="cannot resume a trainer of a LoRA adapter"):
        make(tiny_lm, "rloo").restore(tmp_path / "ckpt")


def test_save_policy_of_a_lora_run_writes_the_peft_adapter(tiny_lm, tmp_path):
    from peft import PeftModel

    lm_dir, tokenizer = tiny_lm
    trainer = make(tiny_lm, "grpo")
    trainer.step(PROMPTS)
    out = trainer.save_policy(tmp_path / "adapter")
    assert sorted(p.name for p in out.iterdir()) == [ADAPTER_CONFIG, ADAPTER_WEIGHTS]
    loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(lm_dir), str(out)).eval()
    ids = tokenizer(PROMPTS[1], return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.allclose(loaded(input_ids=ids).logits, trainer.policy(input_ids=ids).logits, atol=1e-5)


def test_a_lora_run_refuses_a_separate_reference(tiny_lm):
    lm_dir, tokenizer = tiny_lm
    lm = AutoModelForCausalLM.from_pretrained(lm_dir)
    trainer_class = build_trainer("rloo", lm, tokenizer, letter_e_reward, CONFIGS["rloo"]).__class__
    with pytest.raises(ValueError, match="pass no reference"):
        trainer_class(AutoModelForCausalLM.from_pretrained(lm_dir), tokenizer, letter_e_reward, CONFIGS["rloo"], lm)
