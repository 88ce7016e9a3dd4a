"""A Hugging Face sequence-classification model with one label, as a reward model.

:class:`SequenceClassificationReward` wraps any ``AutoModelForSequenceClassification``
whose config has ``num_labels == 1`` (a BERT/DeBERTa cross-encoder, a
Llama/GPT-2-style model with a score head, ...) so it looks to the platform
like the MiniLM :class:`shared.models.reward.minilm.RewardModel`: ``forward(input_ids,
attention_mask) -> scores [batch]`` and a ``head_config``. Loading and saving
go through shared.models.reward.format, which dispatches on the ``format``
recorded in ``reward_config.json``; scoring, ONNX export and training treat
both alike.

On disk (format ``hf-sequence-classification``): what ``save_pretrained``
writes (config.json, safetensors weights, possibly sharded), the tokenizer
files, and ``reward_config.json`` (format, max_length, prompt frame).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from shared.models.reward.head_config import REWARD_CONFIG_FILE, RewardHeadConfig, write_reward_config

HF_FORMAT = "hf-sequence-classification"
# Longest input scored by default: beyond this the CPU cost per pair grows
# quadratically for little gain on (prompt, response) pairs.
MAX_LENGTH_CAP = 512
_POSITION_LIMITS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")


def set_missing_pad_token(tokenizer, config) -> str:
    """Give a tokenizer without a pad token its EOS as pad, and make the model
    config's ``pad_token_id`` agree (causal-LM score heads find the last real
    token by it). Changes both in memory; returns what changed ('' if nothing)."""
    changed = []
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError(
                "the tokenizer has neither a pad nor an eos token; set tokenizer.pad_token "
                "and save it again (tokenizer.save_pretrained)"
            )
        tokenizer.pad_token = tokenizer.eos_token
        changed.append(f"tokenizer pad_token set to its eos token {tokenizer.eos_token!r}")
    if config is not None and getattr(config, "pad_token_id", None) != tokenizer.pad_token_id:
        config.pad_token_id = tokenizer.pad_token_id
        changed.append(f"config pad_token_id set to {tokenizer.pad_token_id}")
    return "; ".join(changed)


def default_head_config(config, tokenizer) -> RewardHeadConfig:
    """max_length from the model's position limit and the tokenizer's, capped
    at MAX_LENGTH_CAP; no prompt frame (the prompt is scored as sent)."""
    limits = [MAX_LENGTH_CAP]
    for name in _POSITION_LIMITS:
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            limits.append(value)
            break
    tokenizer_limit = getattr(tokenizer, "model_max_length", 0)
    if isinstance(tokenizer_limit, int) and 0 < tokenizer_limit < 10**7:
        limits.append(tokenizer_limit)
    return RewardHeadConfig(pooling="model", max_length=min(limits))


def segment_ids(input_ids: torch.Tensor, attention_mask: torch.Tensor, sep_token_id: int) -> torch.Tensor:
    """BERT token types of ``[CLS] a [SEP] b [SEP]`` rows: 0 up to and including
    the first separator, 1 after it, 0 on padding (as the tokenizer makes them)."""
    seps = (input_ids == sep_token_id).long()
    before = torch.cumsum(seps, dim=1) - seps
    return (before >= 1).long() * attention_mask


def pair_segment_token(tokenizer, config) -> int | None:
    """The separator id when the model was trained with token types on text
    pairs (BERT-style: type_vocab_size > 1 and the tokenizer marks the second
    text with type 1), else None. The adapter then rebuilds token types inside
    forward(), so ONNX and the service keep two inputs."""
    from shared.models.reward.encoding import uses_text_pairs

    if getattr(config, "type_vocab_size", 0) <= 1 or not uses_text_pairs(tokenizer):
        return None
    probe = tokenizer("a", "b", return_token_type_ids=True).get("token_type_ids") or []
    return tokenizer.sep_token_id if 1 in probe else None


class SequenceClassificationReward(torch.nn.Module):
    """An HF sequence-classification model (one label) scoring logits[:, 0]."""

    format = HF_FORMAT

    def __init__(self, model: Any, head_config: RewardHeadConfig, sep_token_id: int | None = None):
        # ``model``: a PreTrainedModel (Any: mypy sees nn.Module attributes as Tensor | Module).
        super().__init__()
        if model.config.num_labels != 1:
            raise ValueError(
                f"a reward model needs one scalar label; this one has num_labels={model.config.num_labels}"
            )
        if head_config.ensemble_size != 1:
            raise ValueError(
                f"{REWARD_CONFIG_FILE}: ensemble_size is {head_config.ensemble_size}; a sequence-classification "
                "reward model has one head (set ensemble_size to 1)"
            )
        self.model: Any = model
        self.head_config = head_config
        self.sep_token_id = sep_token_id

    ensemble_size = 1  # one head: its score is the score (shared.models.reward.ensemble)

    def member_scores(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The one head's score as a [batch, 1] ensemble."""
        return self(input_ids, attention_mask).unsqueeze(-1)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        extra = {}
        if self.sep_token_id is not None:
            extra["token_type_ids"] = segment_ids(input_ids, attention_mask, self.sep_token_id)
        return self.model(input_ids=input_ids, attention_mask=attention_mask, **extra).logits[:, 0]

    @property
    def architecture(self) -> str:
        return (self.model.config.architectures or [type(self.model).__name__])[0]

    def _layers(self) -> torch.nn.ModuleList | None:
        """The backbone's list of transformer blocks, found generically: the
        first ModuleList as long as the config's num_hidden_layers."""
        count = getattr(self.model.config, "num_hidden_layers", None)
        for module in self.model.base_model.modules():
            if isinstance(module, torch.nn.ModuleList) and len(module) == count:
                return module
        return None

    @property
    def n_layers(self) -> int:
        """Number of transformer blocks (0 when they cannot be found: then
        freeze_lower_layers leaves everything trainable)."""
        layers = self._layers()
        return len(layers) if layers is not None else 0

    def head_parameters(self) -> list[torch.nn.Parameter]:
        """The score head: every parameter outside the backbone."""
        prefix = self.model.base_model_prefix + "."
        return [p for name, p in self.model.named_parameters() if not name.startswith(prefix)]

    def freeze_lower_layers(self, n_trainable_layers: int) -> int:
        """Train the top ``n_trainable_layers`` blocks and everything after them
        (final norm, pooler, head); freeze the blocks below and everything
        registered before the first block (embeddings). Returns the number of
        trainable parameters."""
        layers = self._layers()
        if layers is None or n_trainable_layers >= len(layers):
            self.requires_grad_(True)
        else:
            keep_from = len(layers) - n_trainable_layers
            block_of = {id(p): i for i, block in enumerate(layers) for p in block.parameters()}
            seen_blocks = False
            for p in self.parameters():
                block = block_of.get(id(p))
                seen_blocks = seen_blocks or block is not None
                # Registration order: embeddings, blocks, then norm/pooler/head.
                p.requires_grad_(block >= keep_from if block is not None else seen_blocks)
        return sum(p.numel() for p in self.parameters() if p.requires_grad)


def load_sequence_classification_reward(
    model_dir: str | Path,
    head_config: RewardHeadConfig | None = None,
) -> tuple[SequenceClassificationReward, object]:
    """Load an HF sequence-classification dir (float32, eval mode, eager
    attention so it traces to ONNX) and its tokenizer, giving the tokenizer a
    pad token if it lacks one. Raises ValueError when the weights do not cover
    the model (e.g. a base model without a trained score head)."""
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    path = Path(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    config = AutoConfig.from_pretrained(path, local_files_only=True)
    if config.num_labels != 1:
        raise ValueError(
            f"{path / 'config.json'}: num_labels is {config.num_labels}; a reward model needs one "
            "scalar label (num_labels=1)"
        )
    set_missing_pad_token(tokenizer, config)
    model, info = AutoModelForSequenceClassification.from_pretrained(
        path,
        config=config,
        local_files_only=True,
        use_safetensors=True,
        attn_implementation="eager",
        dtype=torch.float32,
        output_loading_info=True,
    )
    missing = sorted(k for k in info["missing_keys"] if not k.endswith("position_ids"))
    if missing:
        raise ValueError(
            f"{path}: the weights do not cover the model: missing {missing[:6]}"
            f"{' ...' if len(missing) > 6 else ''} (a base model without a trained score head?)"
        )
    model.eval()
    head = head_config or default_head_config(config, tokenizer)
    return SequenceClassificationReward(model, head, pair_segment_token(tokenizer, config)), tokenizer


def save_sequence_classification_reward(model: SequenceClassificationReward, tokenizer, out_dir: str | Path) -> Path:
    """``save_pretrained`` (safetensors), the tokenizer and reward_config.json."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.model.save_pretrained(out, safe_serialization=True)  # the only format in transformers 5; explicit for 4.x
    tokenizer.save_pretrained(out)
    write_reward_config(out / REWARD_CONFIG_FILE, HF_FORMAT, model.head_config)
    return out
