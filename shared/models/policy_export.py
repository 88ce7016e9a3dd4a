"""`rlhf export VERSION OUT_DIR [--merged]`: a stored policy version as a plain Hugging Face
directory, for use outside the platform.

- full weights: the version's files (its manifest left out);
- a LoRA adapter version, ``merged``: the adapter merged into its base
  (PEFT's ``merge_and_unload``), saved as safetensors with the base's tokenizer:
  any ``AutoModelForCausalLM.from_pretrained(OUT_DIR)`` loads it, no PEFT needed;
- a LoRA adapter version, not merged: the base's files, the adapter's beside
  them in ``adapter/``, and a README saying how to load the two.

The directory is assembled under a temporary name beside ``OUT_DIR`` and renamed
into place, so a failed export leaves nothing half-written. An existing,
non-empty ``OUT_DIR`` is refused: an export never overwrites.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from shared.models.adapters import ADAPTER_CONFIG, ADAPTER_WEIGHTS, resolve_policy_dir
from shared.models.store import MANIFEST, ModelStore, ModelStoreError

ADAPTER_SUBDIR = "adapter"
README = "README.md"


class ExportError(Exception):
    """The version cannot be exported to that directory (missing, corrupt, or the directory is taken)."""


@dataclass(frozen=True)
class ExportResult:
    version: str
    out_dir: Path
    layout: str  # "full weights", "merged" or "base + adapter"
    base_version: str  # "" for a full-weights version


def _copy_version_files(store: ModelStore, version: str, out: Path) -> None:
    """The files a version's manifest lists (checked against their sha256s), not the manifest."""
    vdir = store.open_version("policy", version)
    for rel in store.manifest("policy", version).files:
        dst = out / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(vdir / rel, dst)


def _write_merged(version_dir: Path, out: Path) -> None:
    from shared.models.policy_eval import load_policy

    model, tokenizer = load_policy(version_dir)
    merged = model.merge_and_unload()  # W + (alpha/r) B A, then the plain model without PEFT layers
    merged.save_pretrained(out, safe_serialization=True)
    tokenizer.padding_side = "right"  # load_policy sets left for batched generation; keep the base's default
    tokenizer.save_pretrained(out)


def _readme(version: str, base_version: str) -> str:
    return (
        f"# rlhf-loop policy {version}: a LoRA adapter on policy {base_version}\n\n"
        f"This directory is the base model (policy {base_version}, full weights) and, in `{ADAPTER_SUBDIR}/`, "
        f"the LoRA adapter of policy {version} (PEFT's files).\n"
        "Load them with transformers and PEFT:\n\n"
        "```python\n"
        "from peft import PeftModel\n"
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
        'base = AutoModelForCausalLM.from_pretrained("THIS_DIR")\n'
        f'model = PeftModel.from_pretrained(base, "THIS_DIR/{ADAPTER_SUBDIR}")\n'
        'tokenizer = AutoTokenizer.from_pretrained("THIS_DIR")\n'
        "```\n\n"
        "or export it again with `rlhf export --merged` for one model with the adapter merged in.\n"
    )


def export_policy(store: ModelStore, version: str, out_dir: str | Path, *, merged: bool = False) -> ExportResult:
    """Write policy ``version`` to ``out_dir`` as a Hugging Face directory (see the module doc)."""
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ExportError(f"{out} exists and is not an empty directory: choose a new one (an export never overwrites)")
    try:
        manifest = store.manifest("policy", version)
        version_dir = store.open_version("policy", version)
        dirs = resolve_policy_dir(version_dir)
        if dirs.is_adapter:
            store.open_version("policy", dirs.base_version)  # its sha256s too
    except ModelStoreError as exc:
        raise ExportError(str(exc)) from exc
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        if not manifest.is_adapter:
            _copy_version_files(store, version, tmp)
            layout = "full weights"
        elif merged:
            _write_merged(version_dir, tmp)
            layout = "merged"
        else:
            _copy_version_files(store, manifest.base_version, tmp)
            (tmp / ADAPTER_SUBDIR).mkdir()
            for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
                shutil.copyfile(version_dir / name, tmp / ADAPTER_SUBDIR / name)
            (tmp / README).write_text(_readme(version, manifest.base_version))
            layout = "base + adapter"
        (tmp / MANIFEST).unlink(missing_ok=True)  # not a store version any more
        if out.exists():
            out.rmdir()  # empty (checked above)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ExportResult(version, out, layout, manifest.base_version)
