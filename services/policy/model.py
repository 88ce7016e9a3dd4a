"""Loading a Hugging Face causal LM (from a directory or the model store) into
a ModelBundle: the weights, tokenizer and facts about one version.

A bundle is immutable once built; a hot swap replaces the engine's reference
to it, so a batch that started on one bundle finishes on it.

A LoRA adapter version (shared.models.adapters) is loaded onto its base as the
replica already holds it (services.policy.resident): the base is read once, a
bundle of an adapter version shares the base module and names its adapter,
and each forward runs inside :meth:`ModelBundle.step`, which applies that
adapter to the bundle's rows. A full-weights version (or an adapter on a base
not resident) loads normally.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from services.policy import metrics as pm
from services.policy.packed_linear import pack_linears
from services.policy.resident import (
    BASE_ROWS,
    ResidentBase,
    adapter_name,
    collect_unused,
    find_resident,
    register_resident,
)
from services.policy.sampling import SamplingDefaults, model_sampling_defaults
from shared.models.adapters import resolve_policy_dir
from shared.models.prompting import ChatMessage, encode_prompt, has_chat_template, render_chat
from shared.models.store import ModelStore, ModelStoreError

log = logging.getLogger(__name__)

POLICY_KIND = "policy"


class ModelLoadError(RuntimeError):
    """The model directory cannot be served (missing, corrupt, not a causal LM)."""


@dataclass(frozen=True)
class ModelBundle:
    model: torch.nn.Module
    tokenizer: object
    version: str
    path: str
    architecture: str
    num_parameters: int
    context_window: int
    eos_token_ids: frozenset[int]
    pad_token_id: int
    parent_version: str = ""
    created_at: float = 0.0
    eval_metrics: dict[str, float] = field(default_factory=dict)
    device: str = "cpu"
    # An adapter version: its PEFT adapter name on the resident base ("policy-v7"); "" = the base's own weights.
    adapter: str = ""
    base_version: str = ""
    resident: ResidentBase | None = field(default=None, repr=False, compare=False)
    # Sampling defaults from the version's generation_config.json (sampling.model_sampling_defaults).
    model_sampling: dict[str, float | int] = field(default_factory=dict)
    # Handler threads tokenize concurrently; a fast tokenizer's Rust object
    # can refuse concurrent mutable use ("Already borrowed"), so serialise it.
    _encode_lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def encode(self, text: str) -> list[int]:
        """The prompt's ids, as the trainer encodes it too (shared.models.prompting.encode_prompt)."""
        with self._encode_lock:
            return encode_prompt(self.tokenizer, text)

    def render(self, messages: Sequence[ChatMessage], max_messages: int | None = None) -> str:
        """A chat rendered with this version's chat template; raises PromptError."""
        return render_chat(self.tokenizer, messages, max_messages=max_messages)

    def step(self) -> contextlib.AbstractContextManager:
        """Context for one forward of this bundle's rows (its adapter applied to them)."""
        if self.resident is None:
            return contextlib.nullcontext()
        return self.resident.step(self.adapter or BASE_ROWS)

    def sampling_defaults(self, server: SamplingDefaults) -> SamplingDefaults:
        """What an unset sampling field means for this version: its model's default, else the server's."""
        return server.with_model(self.model_sampling)

    @property
    def has_chat_template(self) -> bool:
        return has_chat_template(self.tokenizer)

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)


def _context_window(model, tokenizer) -> int:
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(model.config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    limit = getattr(tokenizer, "model_max_length", 0)
    if isinstance(limit, int) and 0 < limit < 10**7:
        return limit
    raise ModelLoadError("cannot tell the model's context window from its config")


def load_bundle(
    path: str | os.PathLike[str],
    version: str,
    *,
    device: str = "cpu",
    parent_version: str = "",
    created_at: float = 0.0,
    eval_metrics: dict[str, float] | None = None,
) -> ModelBundle:
    """Load a causal LM directory, or a store adapter version onto its base; never reaches a model hub.

    A base this process already holds (same directory and device) is reused, not read again."""
    path = Path(path)
    if not path.is_dir():
        raise ModelLoadError(f"model directory {path} does not exist")
    collect_unused()  # adapters no bundle uses any more go before another comes
    start = time.perf_counter()
    try:
        dirs = resolve_policy_dir(path)
    except ModelStoreError as exc:
        raise ModelLoadError(str(exc)) from exc
    base, base_read = _resident_base(dirs.base_dir, dirs.base_version or version, device)
    name, adapter_read = "", False
    if dirs.adapter_dir is not None:
        name = adapter_name(version)
        try:
            adapter_read = base.acquire(name, dirs.adapter_dir)
        except Exception as exc:  # noqa: BLE001 - safetensors, PEFT and torch raise their own types
            raise ModelLoadError(f"cannot load the LoRA adapter {path} onto {dirs.base_dir}: {exc}") from exc
    model, tokenizer = base.model, base.tokenizer
    gen = model.generation_config
    eos = gen.eos_token_id if gen.eos_token_id is not None else tokenizer.eos_token_id
    eos_ids = frozenset([eos] if isinstance(eos, int) else (eos or []))
    pad = tokenizer.pad_token_id
    if pad is None:
        pad = gen.pad_token_id if gen.pad_token_id is not None else (min(eos_ids) if eos_ids else 0)
    bundle = ModelBundle(
        model=model,
        tokenizer=tokenizer,
        version=version,
        path=str(path),
        architecture=(model.config.architectures or [type(model).__name__])[0],
        num_parameters=base.num_parameters,
        context_window=_context_window(model, tokenizer),
        eos_token_ids=eos_ids,
        pad_token_id=int(pad),
        parent_version=parent_version,
        created_at=created_at,
        eval_metrics=dict(eval_metrics or {}),
        device=device,
        adapter=name,
        base_version=dirs.base_version,
        resident=base,
        model_sampling=model_sampling_defaults(*[d for d in (dirs.adapter_dir, dirs.base_dir) if d is not None]),
        _encode_lock=base.encode_lock,
    )
    if name:
        weakref.finalize(bundle, base.release, name)  # the adapter is unloaded once no bundle names it
    kind = "full" if base_read else "adapter" if adapter_read else "resident"
    load_s = time.perf_counter() - start
    pm.MODEL_LOAD_SECONDS.labels(kind).observe(load_s)
    log.info(
        "model loaded",
        extra={
            "version": version,
            "path": str(path),
            "parameters": bundle.num_parameters,
            "load_s": round(load_s, 3),
            "loaded": kind,
            "base_version": dirs.base_version,
            "adapter": name,
        },
    )
    return bundle


def _resident_base(path: Path, version: str, device: str) -> tuple[ResidentBase, bool]:
    """The base this process holds for ``path`` on ``device``, or a fresh load of it; (base, whether read now)."""
    base = find_resident(path, device)
    if base is not None:
        return base, False
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a tqdm bar per load would break the one-JSON-object-per-line logs
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, use_safetensors=True)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot load a causal LM from {path}: {exc}") from exc
    model.to(device).eval()
    if device == "cpu":
        packed = pack_linears(model)  # the GEMMs of a CPU replica, ~2x faster (services.policy.packed_linear)
        log.info("linear layers prepacked", extra={"path": str(path), "layers": packed})
    pm.BASE_LOADS.inc()
    loaded = ResidentBase(path, version, model, tokenizer, device)
    base = register_resident(loaded)
    return base, base is loaded


def load_from_store(
    store_root: str | os.PathLike[str],
    version: str | None = None,
    *,
    device: str = "cpu",
    expected_manifest_sha256: str = "",
) -> ModelBundle:
    """Load policy ``version`` (default: the store's current) after checking every file's sha256
    (an adapter's base too, unless this process already holds it)."""
    store = ModelStore(store_root)
    version = version or store.current(POLICY_KIND)
    if not version:
        raise ModelLoadError(
            f"the model store at {store_root} has no policy version yet (run `rlhf bootstrap`, or pass --model-dir)"
        )
    if expected_manifest_sha256 and store.manifest_sha256(POLICY_KIND, version) != expected_manifest_sha256:
        raise ModelLoadError(f"policy {version}: manifest sha256 differs from the one announced")
    vdir = store.open_version(POLICY_KIND, version)
    manifest = store.manifest(POLICY_KIND, version)
    if manifest.is_adapter:
        base_dir = store.version_dir(POLICY_KIND, manifest.base_version)
        if find_resident(base_dir, device) is None:
            store.open_version(POLICY_KIND, manifest.base_version)
    return load_bundle(
        vdir,
        version,
        device=device,
        parent_version=manifest.parent_version,
        created_at=manifest.created_at,
        eval_metrics=manifest.eval_metrics,
    )
