"""A reward model cloned from a policy: the causal LM's own backbone with a scalar head.

:func:`clone_policy_as_reward` loads a policy directory (e.g. SmolLM2-135M-Instruct,
a LlamaForCausalLM) as ``AutoModelForSequenceClassification`` with one label (the
LM head is dropped, a fresh ``score`` head added) and wraps it in a LoRA adapter
(PEFT, task SEQ_CLS, which also trains the score head whole). The result is a
:class:`LoraSequenceClassificationReward`: a
:class:`shared.models.reward.adapter.SequenceClassificationReward`, so
``train_reward_model`` trains it as it trains any imported reward model (with
``trainable_layers=None``: LoRA already chose what trains, the adapter at ``lr``
and the head at ``head_lr``).

For serving, :meth:`LoraSequenceClassificationReward.merged` folds the adapter
into the weights: a plain one-label classifier that ``save_reward_model`` writes
in the ``hf-sequence-classification`` format, which the reward service already
loads like any imported reward model. The reward then reads exactly the tokens
the policy wrote (prompt as rendered by the chat template, then the response).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from shared.models.reward.adapter import SequenceClassificationReward, default_head_config, set_missing_pad_token
from shared.models.reward.head_config import RewardHeadConfig

# Every projection of a Llama-style block: a reward model must re-read the text, not
# only re-weight attention, and LoRA's own parameters cost little beside the backward pass.
DEFAULT_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class LoraSequenceClassificationReward(SequenceClassificationReward):
    """A one-label classifier under a PEFT LoRA adapter; the score head is PEFT's
    ``modules_to_save`` copy, trained whole."""

    def head_parameters(self) -> list[torch.nn.Parameter]:
        return [p for name, p in self.model.named_parameters() if "modules_to_save" in name and p.requires_grad]

    def freeze_lower_layers(self, n_trainable_layers: int) -> int:
        """Nothing to freeze: the base is frozen and the adapter is what trains."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    @property
    def architecture(self) -> str:
        return f"{super().architecture}+LoRA"

    def merged(self) -> SequenceClassificationReward:
        """The adapter folded into the base weights (this model's own modules are
        changed: use it for saving or serving, not to train on)."""
        model = self.model.merge_and_unload()
        model.eval()
        return SequenceClassificationReward(model, self.head_config)


def clone_policy_as_reward(
    policy_dir: str | Path,
    *,
    lora_rank: int = 16,
    lora_alpha: int = 32,
    lora_targets: Sequence[str] = DEFAULT_LORA_TARGETS,
    lora_layers: int | None = None,
    max_length: int | None = None,
    seed: int = 0,
) -> tuple[LoraSequenceClassificationReward, Any]:
    """The causal LM in ``policy_dir`` as a one-label sequence classifier with a
    zeroed score head and a fresh LoRA adapter (float32, eager attention so the
    merged model exports to ONNX), and its tokenizer (given its EOS as pad if it
    has none, which the score head needs to find each row's last token).

    ``lora_layers``: the adapter only on the top that many blocks (None: all). The
    backward pass then stops at the lowest adapted block, which is most of a CPU
    step's cost saved (as the MiniLM reward trains only its top layers).

    The head starts at zero so every first Bradley-Terry margin is 0 (loss log 2)
    whatever the scale of the backbone's last hidden state; its gradient is not
    zero, and once it moves the adapter's gradients are not either."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    path = Path(policy_dir)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    config = AutoConfig.from_pretrained(path, local_files_only=True)
    config.num_labels = 1
    set_missing_pad_token(tokenizer, config)
    torch.manual_seed(seed)
    base = AutoModelForSequenceClassification.from_pretrained(
        path,
        config=config,
        local_files_only=True,
        use_safetensors=True,
        attn_implementation="eager",
        dtype=torch.float32,
    )
    prefix = base.base_model_prefix + "."
    with torch.no_grad():
        for name, param in base.named_parameters():
            if not name.startswith(prefix):
                param.zero_()
    n_blocks = config.num_hidden_layers
    top = None if lora_layers is None or lora_layers >= n_blocks else list(range(n_blocks - lora_layers, n_blocks))
    lora = LoraConfig(
        task_type="SEQ_CLS",
        r=lora_rank,
        lora_alpha=lora_alpha,
        lora_dropout=0.0,
        target_modules=list(lora_targets),
        layers_to_transform=top,
    )
    peft_model = get_peft_model(base, lora)
    head = default_head_config(config, tokenizer)
    if max_length is not None:
        head = RewardHeadConfig(pooling=head.pooling, max_length=max_length)
    return LoraSequenceClassificationReward(peft_model, head), tokenizer
