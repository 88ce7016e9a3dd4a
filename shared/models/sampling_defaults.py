"""Per-model sampling defaults: `rlhf import policy ... --sampling temperature=0.2,top_p=0.9`.

They are stored in the version's generation_config.json (transformers' own file,
under its own names); serving uses a model's generation_config for whatever a
request leaves out. A GGUF file's own defaults (general.sampling.*) land there too
(shared.models.gguf_import); --sampling overrides them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from shared.models.hf_dir import ModelImportError, describe_error

GENERATION_CONFIG = "generation_config.json"
# --sampling NAME=VALUE: generation_config.json's names, with the ranges the front door accepts.
SAMPLING_LIMITS: dict[str, tuple[type, float, float]] = {
    "temperature": (float, 0.0, 2.0),
    "top_p": (float, 1e-9, 1.0),
    "top_k": (int, 0, 1 << 31),
    "min_p": (float, 0.0, 1.0),
    "repetition_penalty": (float, 1e-9, 100.0),
    "max_new_tokens": (int, 1, 1 << 31),
}


def parse_sampling(text: str) -> dict[str, float | int]:
    """``temperature=0.2,top_p=0.9`` -> {"temperature": 0.2, "top_p": 0.9}; ModelImportError naming a bad one."""
    known = ", ".join(SAMPLING_LIMITS)
    values: dict[str, float | int] = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        name, sep, raw = (x.strip() for x in item.partition("="))
        if not sep or name not in SAMPLING_LIMITS:
            raise ModelImportError(f"--sampling {item!r}: expected NAME=VALUE with NAME one of {known}")
        kind, low, high = SAMPLING_LIMITS[name]
        try:
            value = kind(raw)
        except ValueError:
            what = "an integer" if kind is int else "a number"
            raise ModelImportError(f"--sampling {name}: {raw!r} is not {what}") from None
        if not low <= value <= high:
            raise ModelImportError(f"--sampling {name}: must be in [{low:g}, {high:g}], got {raw}")
        values[name] = value
    return values


def sampling_text(sampling: dict[str, float | int]) -> str:
    """The inverse of parse_sampling, for notes and messages ("" for none)."""
    return ",".join(f"{k}={v}" for k, v in sorted(sampling.items()))


def sampling_patch(sampling: dict[str, float | int]) -> Callable[[Path], None]:
    """Merge sampling defaults into generation_config.json (created if the model has none)."""
    from transformers import GenerationConfig

    def patch(out: Path) -> None:
        path = out / GENERATION_CONFIG
        data = json.loads(path.read_text()) if path.is_file() else {}
        data.update(sampling)
        if "temperature" in sampling:  # transformers samples only with do_sample; temperature 0 means greedy
            data["do_sample"] = float(sampling["temperature"]) > 0
        elif {"top_p", "top_k", "min_p"} & set(sampling):
            data["do_sample"] = True
        path.write_text(json.dumps(data, indent=2, sort_keys=True))
        try:
            GenerationConfig.from_pretrained(out, local_files_only=True)
        except Exception as exc:  # noqa: BLE001
            raise ModelImportError(f"--sampling {sampling_text(sampling)}: {describe_error(exc)}") from exc

    return patch
