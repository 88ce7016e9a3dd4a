"""Checks on a local Hugging Face model directory, before anything is imported.

:func:`inspect_model_dir` looks at the files only (no torch): the directory
exists, config.json is there, the weights are safetensors (one file or a
sharded index with every shard present), pickle-only weights are refused
with how to convert them, a tokenizer is there. It also decides which files
an import copies. :func:`load_config` and :func:`load_tokenizer` then load
them with transformers, local files only, turning every failure into a
:class:`ModelImportError` that names the file and what to do.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from shared.models.store import MANIFEST, PICKLE_SUFFIXES

CONFIG_FILE = "config.json"
SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
# Weights of other frameworks or runtimes: not pickle, but not what the
# platform loads either (an ONNX file is re-exported from the weights).
FOREIGN_WEIGHT_SUFFIXES = (".h5", ".msgpack", ".gguf", ".onnx", ".ot", ".tflite", ".mlmodel")
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "vocab.txt",
    "vocab.json",
    "spiece.model",
    "sentencepiece.bpe.model",
)
GGUF_HINT = "`rlhf import policy FILE.gguf` converts it to safetensors"
CONVERT_HINT = "load it and save it again as safetensors: model.save_pretrained(dir, safe_serialization=True)"


class ModelImportError(ValueError):
    """A model directory cannot be imported; the message says what is missing or unsupported."""


@dataclass(frozen=True)
class ModelDir:
    """A checked source directory and what an import takes from it."""

    path: Path
    weights: tuple[str, ...]  # safetensors files (one, or the shards)
    files: tuple[str, ...]  # top-level files to copy, weights included
    skipped: tuple[str, ...]  # "name: why", for the import's warnings


def _weights(path: Path, names: set[str]) -> tuple[str, ...]:
    """The safetensors weight files, or ModelImportError saying what is wrong."""
    if SAFETENSORS_INDEX in names:
        try:
            weight_map = json.loads((path / SAFETENSORS_INDEX).read_text())["weight_map"]
        except (ValueError, KeyError, TypeError) as exc:
            raise ModelImportError(
                f"{path / SAFETENSORS_INDEX} is not a valid shard index (needs a weight_map): {exc}"
            ) from exc
        shards = sorted(set(weight_map.values()))
        missing = [s for s in shards if s not in names]
        if missing:
            raise ModelImportError(
                f"{path / SAFETENSORS_INDEX} lists shards that are not in the directory: {', '.join(missing)}"
            )
        return tuple(shards)
    if SAFETENSORS_FILE in names:
        return (SAFETENSORS_FILE,)
    pickled = sorted(n for n in names if Path(n).suffix in PICKLE_SUFFIXES)
    if pickled:
        raise ModelImportError(
            f"{path} has only pickle-based weights ({', '.join(pickled)}); they are refused "
            f"because loading them can run arbitrary code. To convert, {CONVERT_HINT}"
        )
    other = sorted(n for n in names if n.endswith(".safetensors") or Path(n).suffix in FOREIGN_WEIGHT_SUFFIXES)
    found = f" (found {', '.join(other)})" if other else ""
    raise ModelImportError(
        f"{path} has no weights: expected {SAFETENSORS_FILE} or {SAFETENSORS_INDEX} with its shards{found}"
    )


def inspect_model_dir(src: str | Path) -> ModelDir:
    """Check the files of a Hugging Face model dir; raise ModelImportError on the first problem."""
    path = Path(src).expanduser()
    if not path.exists():
        raise ModelImportError(f"{path} does not exist")
    if not path.is_dir():
        if path.suffix.lower() == ".gguf":
            raise ModelImportError(f"{path} is a GGUF file: only a policy is imported from one ({GGUF_HINT})")
        raise ModelImportError(f"{path} is not a directory; pass the directory save_pretrained wrote")
    path = path.resolve()
    names = {p.name for p in path.iterdir() if p.is_file()}
    if CONFIG_FILE not in names:
        if "adapter_config.json" in names:
            raise ModelImportError(
                f"{path} is a PEFT/LoRA adapter, not a full model: merge it into its base "
                "first (model.merge_and_unload().save_pretrained(dir)) and import that"
            )
        ggufs = sorted(n for n in names if n.lower().endswith(".gguf"))
        if ggufs:
            raise ModelImportError(
                f"{path} has no {CONFIG_FILE} but GGUF weights ({', '.join(ggufs)}): import the file "
                f"as a policy ({GGUF_HINT})"
            )
        raise ModelImportError(f"{path} has no {CONFIG_FILE}; it is not a Hugging Face model directory")
    weights = _weights(path, names)
    if not names & set(TOKENIZER_FILES):
        raise ModelImportError(
            f"{path} has no tokenizer (none of {', '.join(TOKENIZER_FILES)}); save it next "
            "to the model: tokenizer.save_pretrained(dir)"
        )
    files, skipped = [], []
    for name in sorted(names):
        suffix = Path(name).suffix
        if name.startswith("."):
            skipped.append(f"{name}: hidden file")
        elif name == MANIFEST:
            skipped.append(f"{name}: the model store writes its own")
        elif suffix in PICKLE_SUFFIXES:
            skipped.append(f"{name}: pickle-based, never stored")
        elif suffix in FOREIGN_WEIGHT_SUFFIXES:
            skipped.append(f"{name}: not used by the platform")
        elif name.endswith(".safetensors") and name not in weights:
            skipped.append(f"{name}: not one of the model's weight files")
        else:
            files.append(name)
    skipped += [f"{p.name}/: subdirectories are not imported" for p in sorted(path.iterdir()) if p.is_dir()]
    return ModelDir(path, weights, tuple(files), tuple(skipped))


def load_config(model_dir: ModelDir):
    """The model's AutoConfig (local files only)."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(model_dir.path, local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - transformers raises many kinds; all mean the same here
        raise ModelImportError(
            f"{model_dir.path / CONFIG_FILE} cannot be loaded by AutoConfig: {describe_error(exc)} "
            "(a model_type this transformers version does not know, or one that needs "
            "trust_remote_code, which is not supported)"
        ) from exc


def load_tokenizer(model_dir: ModelDir):
    """The model's AutoTokenizer (local files only); refuses one without a vocabulary."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir.path, local_files_only=True)
    except Exception as exc:  # noqa: BLE001
        raise ModelImportError(
            f"the tokenizer in {model_dir.path} cannot be loaded by AutoTokenizer: "
            f"{describe_error(exc)} (are its files complete? save it again with "
            "tokenizer.save_pretrained(dir))"
        ) from exc
    if len(tokenizer) <= len(set(tokenizer.all_special_ids)):
        raise ModelImportError(
            f"the tokenizer in {model_dir.path} has no vocabulary beyond its special tokens; "
            "its files are incomplete (save it again with tokenizer.save_pretrained(dir))"
        )
    return tokenizer


def check_vocab_fits(model_dir: ModelDir, tokenizer, embedding_rows: int) -> None:
    """Every token id the tokenizer can produce must have an embedding row."""
    if len(tokenizer) > embedding_rows:
        raise ModelImportError(
            f"the tokenizer in {model_dir.path} has {len(tokenizer)} tokens but the model's "
            f"embedding has {embedding_rows} rows: they do not belong together"
        )


def describe_error(exc: BaseException) -> str:
    """``Type: first line of the message`` (transformers errors can run to pages)."""
    return f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:300]}"
