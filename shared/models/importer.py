"""Bring your own model: a local Hugging Face model directory into the model store.

:func:`import_policy` takes any ``AutoModelForCausalLM`` with its tokenizer;
:func:`import_reward` any ``AutoModelForSequenceClassification`` with one
label, or the platform's MiniLM + scalar-head format (a dir with
``reward_config.json``, as shared.models.reward.format saves it). Both check the
directory completely BEFORE writing anything (files, config, tokenizer, that
the weights load into the right kind of model and produce finite outputs),
raising :class:`ModelImportError` with what is missing or unsupported; then
they copy the files into a new version with ModelStore.write_version (atomic:
a failure leaves nothing behind), whose parent is the kind's current version.

What is stored beyond a plain copy:

- a tokenizer without a pad token gets its EOS as pad (tokenizer_config.json;
  for a reward model also config.json's pad_token_id), said in the notes;
- policy: per-model sampling defaults (``sampling``, from `rlhf import policy
  --sampling temperature=0.2,top_p=0.9`) merged into generation_config.json,
  which serving uses for what a request leaves out;
- reward: ``reward_config.json`` recording the format, and ``model.onnx``
  when the export works and ONNX Runtime matches torch within 1e-4
  (shared.models.reward.onnx_export); otherwise the notes say ``scoring_backend: torch`` and why.

No torch and no grpc at import time: both load only when a function runs.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shared.models.hf_dir import (
    CONFIG_FILE,
    ModelDir,
    ModelImportError,
    check_vocab_fits,
    describe_error,
    inspect_model_dir,
    load_config,
    load_tokenizer,
)
from shared.models.sampling_defaults import sampling_patch, sampling_text
from shared.models.store import ModelStore

if TYPE_CHECKING:  # torch loads only when an import runs
    from shared.models.reward.head_config import ScalarReward

POLICY_FORMAT = "hf-causal-lm"
TOKENIZER_CONFIG = "tokenizer_config.json"
_SMOKE_PAIRS = (("How do I boil an egg?", "Put it in boiling water for nine minutes."), ("Hello?", "Hi."))

Patch = Callable[[Path], None]  # edits a copied file in the version being written

__all__ = [
    "ImportResult",
    "ModelImportError",
    "POLICY_FORMAT",
    "import_policy",
    "import_reward",
]


@dataclass(frozen=True)
class ImportResult:
    kind: str
    version: str
    notes: dict[str, str]  # as recorded in the version's manifest
    warnings: tuple[str, ...]
    current: bool  # whether CURRENT now names this version
    reused: bool = False  # an earlier version of the same source, not a new one (GGUF imports)


def _class_names(mapping: dict) -> set[str]:
    names: set[str] = set()
    for value in mapping.values():
        names.update([value] if isinstance(value, str) else value)
    return names


def _check_architecture(model_dir: ModelDir, config, mapping: dict, wanted: str, example: str, hint: str) -> str:
    """The config's architecture if it is one of ``mapping``'s model classes, else ModelImportError."""
    declared = list(getattr(config, "architectures", None) or [])
    if config.model_type not in mapping:
        raise ModelImportError(
            f"{model_dir.path / CONFIG_FILE}: model_type {config.model_type!r} has no "
            f"{wanted} class in transformers (expected e.g. {example}){hint}"
        )
    accepted = _class_names(mapping)
    if declared and not set(declared) & accepted:
        raise ModelImportError(
            f"{model_dir.path / CONFIG_FILE}: architectures {declared} is not a {wanted} "
            f"(expected e.g. {example}){hint}"
        )
    return declared[0] if declared else str(mapping[config.model_type])


def _missing_weights_error(model_dir: ModelDir, loading_info: dict, what: str) -> ModelImportError | None:
    missing = sorted(k for k in loading_info.get("missing_keys", ()) if not k.endswith("position_ids"))
    if not missing:
        return None
    shown = ", ".join(missing[:6]) + (" ..." if len(missing) > 6 else "")
    return ModelImportError(f"the weights in {model_dir.path} do not cover the {what}: missing {shown}")


def _check_causal_lm(model_dir: ModelDir, config, tokenizer) -> tuple[str, int]:
    """Load the weights as AutoModelForCausalLM and run one forward pass;
    returns (architecture, number of parameters)."""
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    from shared.models.prompting import encode_prompt

    architecture = _check_architecture(
        model_dir,
        config,
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        "causal language model",
        "LlamaForCausalLM, GPT2LMHeadModel",
        "; `rlhf import policy` needs a model AutoModelForCausalLM loads",
    )
    try:
        loaded: Any = AutoModelForCausalLM.from_pretrained(
            model_dir.path, local_files_only=True, use_safetensors=True, output_loading_info=True
        )
        model, info = loaded  # (model, loading info) with output_loading_info=True
    except Exception as exc:  # noqa: BLE001
        raise ModelImportError(
            f"{model_dir.path} does not load as AutoModelForCausalLM: {describe_error(exc)}"
        ) from exc
    error = _missing_weights_error(model_dir, info, f"{architecture} (not a causal LM checkpoint?)")
    if error:
        raise error
    check_vocab_fits(model_dir, tokenizer, model.get_input_embeddings().num_embeddings)
    ids = encode_prompt(tokenizer, "Hello, how are you?")
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits
    if not torch.isfinite(logits).all():
        raise ModelImportError(f"{model_dir.path}: the model's logits are not finite (NaN or inf weights?)")
    return architecture, sum(p.numel() for p in model.parameters())


def _pad_token_patch(tokenizer) -> Patch:
    """Store the tokenizer's (newly set) pad token: edit tokenizer_config.json,
    falling back to re-saving the tokenizer if transformers does not read it back."""
    from transformers import AutoTokenizer

    def patch(out: Path) -> None:
        path = out / TOKENIZER_CONFIG
        data = json.loads(path.read_text()) if path.is_file() else {}
        data["pad_token"] = tokenizer.pad_token
        path.write_text(json.dumps(data, indent=2, ensure_ascii=False))
        if AutoTokenizer.from_pretrained(out, local_files_only=True).pad_token_id != tokenizer.pad_token_id:
            tokenizer.save_pretrained(out)
        if AutoTokenizer.from_pretrained(out, local_files_only=True).pad_token_id != tokenizer.pad_token_id:
            raise ModelImportError(f"could not store a pad token for the tokenizer in {out}")

    return patch


def _config_pad_patch(pad_token_id: int) -> Patch:
    def patch(out: Path) -> None:
        path = out / CONFIG_FILE
        data = json.loads(path.read_text())
        data["pad_token_id"] = pad_token_id
        path.write_text(json.dumps(data, indent=2))

    return patch


def _write(
    store: ModelStore,
    kind: str,
    model_dir: ModelDir,
    patches: list[Patch],
    notes: dict[str, str],
    set_current: bool,
    warnings: list[str],
) -> ImportResult:
    """Copy the files and apply the patches into a new version (atomic); optionally make it current."""

    def fill(out: Path) -> None:
        for name in model_dir.files:
            shutil.copyfile(model_dir.path / name, out / name)  # follows symlinks (HF cache snapshots)
        for patch in patches:
            patch(out)

    manifest = store.write_version(kind, fill, parent_version=store.current(kind) or "", notes=notes)
    if set_current:
        store.set_current(kind, manifest.version)
    return ImportResult(kind, manifest.version, dict(manifest.notes), tuple(warnings), set_current)


def _base_notes(model_dir: ModelDir, format_name: str, architecture: str, extra: dict[str, str] | None) -> dict:
    notes = {
        "source": "rlhf import",
        "source_path": str(model_dir.path),
        "format": format_name,
        "architecture": architecture,
    }
    if model_dir.skipped:
        notes["skipped_files"] = "; ".join(model_dir.skipped)
    return {**notes, **{k: str(v) for k, v in (extra or {}).items()}}


def import_policy(
    store: ModelStore,
    src_dir: str | Path,
    *,
    set_current: bool = False,
    notes: dict[str, str] | None = None,
    sampling: dict[str, float | int] | None = None,
) -> ImportResult:
    """Import a causal-LM directory as the next policy version (see the module docstring);
    ``sampling`` (shared.models.sampling_defaults) goes into its generation_config.json."""
    from shared.models.prompting import encode_prompt, has_chat_template

    model_dir = inspect_model_dir(src_dir)
    config = load_config(model_dir)
    tokenizer = load_tokenizer(model_dir)
    architecture, n_params = _check_causal_lm(model_dir, config, tokenizer)
    warnings = [f"not imported: {s}" for s in model_dir.skipped]
    patches: list[Patch] = []
    if tokenizer.pad_token is not None:
        pad_note = f"{tokenizer.pad_token!r} (the tokenizer's own)"
    elif tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
        pad_note = f"{tokenizer.pad_token!r}: set to the eos token (the tokenizer had no pad token)"
        patches.append(_pad_token_patch(tokenizer))
    else:
        pad_note = "none (the tokenizer has neither pad nor eos)"
        warnings.append("the tokenizer has no eos token: generation stops only at max_new_tokens")
    bos = tokenizer.bos_token_id
    record = _base_notes(model_dir, POLICY_FORMAT, architecture, notes)
    record.update(
        num_parameters=str(n_params),
        pad_token=pad_note,
        chat_template="yes" if has_chat_template(tokenizer) else "no",
        adds_bos=str(bos is not None and encode_prompt(tokenizer, "Hi")[:1] == [bos]).lower(),
    )
    if not has_chat_template(tokenizer):
        warnings.append("the tokenizer has no chat template: clients must send a plain prompt, not messages")
    if sampling:
        patches.append(sampling_patch(sampling))
        record["sampling"] = sampling_text(sampling)
    return _write(store, "policy", model_dir, patches, record, set_current, warnings)


def _check_sequence_classifier(model_dir: ModelDir, config) -> str:
    from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES

    architecture = _check_architecture(
        model_dir,
        config,
        MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES,
        "sequence-classification model",
        "LlamaForSequenceClassification, BertForSequenceClassification",
        "; a reward model is an AutoModelForSequenceClassification with num_labels=1, or the platform's "
        "MiniLM format (with reward_config.json)",
    )
    if config.num_labels != 1:
        labels = getattr(config, "id2label", {}) or {}
        raise ModelImportError(
            f"{model_dir.path / CONFIG_FILE}: num_labels is {config.num_labels} "
            f"(labels {list(labels.values())}); a reward model needs one scalar label "
            "(num_labels=1), the score of the response"
        )
    return architecture


def _load_reward(model_dir: ModelDir, config, tokenizer) -> tuple[ScalarReward, Any, str, list[Patch], str]:
    """(model, tokenizer, format, patches, pad note) for either reward format."""
    from shared.models.reward.adapter import HF_FORMAT, load_sequence_classification_reward, set_missing_pad_token
    from shared.models.reward.format import load_reward_model, reward_format
    from shared.models.reward.head_config import REWARD_CONFIG_FILE, write_reward_config

    patches: list[Patch] = []
    pad_note = f"{tokenizer.pad_token!r} (the tokenizer's own)" if tokenizer.pad_token is not None else ""
    has_reward_config = (model_dir.path / REWARD_CONFIG_FILE).is_file()
    try:
        format_name = reward_format(model_dir.path)
        if format_name == HF_FORMAT:
            _check_sequence_classifier(model_dir, config)
            had_pad = tokenizer.pad_token is not None
            changed = set_missing_pad_token(tokenizer, config)
            if changed:
                pad_note = changed + " (for batched scoring)"
                if not had_pad:
                    patches.append(_pad_token_patch(tokenizer))
                patches.append(_config_pad_patch(tokenizer.pad_token_id))
            model, loaded_tokenizer = load_sequence_classification_reward(model_dir.path)
            if not has_reward_config:
                patches.append(lambda out: write_reward_config(out / REWARD_CONFIG_FILE, HF_FORMAT, model.head_config))
        else:
            model, loaded_tokenizer = load_reward_model(model_dir.path)
    except ModelImportError:
        raise
    except Exception as exc:  # noqa: BLE001 - the loaders' ValueErrors name the file and the problem
        raise ModelImportError(f"{model_dir.path} does not load as a reward model: {describe_error(exc)}") from exc
    return model, loaded_tokenizer, format_name, patches, pad_note


def _copy(src: Path, dst: Path) -> None:
    shutil.copyfile(src, dst)


def _inner_embedding_rows(model) -> int:
    """Rows of the token embedding inside either reward format."""
    from shared.models.reward.adapter import SequenceClassificationReward

    inner = model.model if isinstance(model, SequenceClassificationReward) else model.encoder
    return inner.get_input_embeddings().num_embeddings


def import_reward(
    store: ModelStore, src_dir: str | Path, *, set_current: bool = False, notes: dict[str, str] | None = None
) -> ImportResult:
    """Import a reward model directory as the next reward version (see the module docstring)."""
    import math

    from shared.models.reward.onnx_export import ONNX_FILE, export_verified_onnx
    from shared.models.reward.scoring import score_texts

    model_dir = inspect_model_dir(src_dir)
    config = load_config(model_dir)
    model, tokenizer, format_name, patches, pad_note = _load_reward(model_dir, config, load_tokenizer(model_dir))
    check_vocab_fits(model_dir, tokenizer, _inner_embedding_rows(model))
    scores = score_texts(model, tokenizer, [p for p, _ in _SMOKE_PAIRS], [r for _, r in _SMOKE_PAIRS])
    if not all(math.isfinite(s) for s in scores):
        raise ModelImportError(f"{model_dir.path}: the model's scores are not finite ({scores})")
    warnings = [f"not imported: {s}" for s in model_dir.skipped]
    with tempfile.TemporaryDirectory(prefix="rlhf-import-onnx-") as onnx_dir:
        onnx = export_verified_onnx(model, tokenizer, onnx_dir)
        if onnx.backend == "onnx":
            patches.append(lambda out: _copy(Path(onnx_dir) / ONNX_FILE, out / ONNX_FILE))
        else:
            warnings.append(f"scored with torch, not ONNX: {onnx.reason}")
        record = _base_notes(model_dir, format_name, model.architecture, notes)
        record.update(
            num_parameters=str(sum(p.numel() for p in model.parameters())),
            pad_token=pad_note,
            max_length=str(model.head_config.max_length),
            scoring_backend=onnx.backend,
            scoring_backend_reason=onnx.reason,
        )
        return _write(store, "reward", model_dir, patches, record, set_current, warnings)
