"""One resident base model per replica, with LoRA adapters swapped onto it.

A policy version is full weights or a LoRA adapter on a named base version
(shared.models.adapters). A replica keeps each base it has loaded in one
:class:`ResidentBase` (found by directory and device, so a second load of the
same base reads nothing); every adapter version on that base is loaded into a
PEFT ``PeftModel`` over it, under its own name (``policy-v7``). Bundles of the
base and of its adapters share the base module; a bundle says which adapter
its rows use.

How a forward picks its adapter: the decoder names the adapter of the step's
rows in a thread-local around each forward (:meth:`ResidentBase.step`), and
every PEFT layer reads it there, so concurrent engines on one base (stable +
canary) never see each other's adapter:

- all rows on one adapter (a bundle's batch): each LoRA layer's active adapter
  is an object that yields the calling thread's adapter (none for the base),
  so PEFT's ordinary forward runs, with every LoRA variant (DoRA too);
- rows of different adapters (a list, one name per row; ``"__base__"`` for
  the base): a pre-forward hook passes PEFT's mixed-batch ``adapter_names``
  (vanilla LoRA only, as PEFT allows).

Around PEFT's own loading and deleting, the layers get a real active adapter
back. An adapter with ``modules_to_save`` or trainable tokens (whole modules
of its own, not low-rank deltas) is refused: it cannot share the base.

Until the first adapter arrives the base is not wrapped at all: the
full-weights path runs the plain transformers module.

Loading or unloading an adapter changes the module tree, so it waits for the
steps running on the base to finish and holds new ones back until it is done
(a reader/writer gate; a step costs two uncontended lock round trips).
An adapter is unloaded (``delete_adapter``; the PEFT wrapper is removed with
the last one) once no bundle naming it is alive: a bundle's finalizer only
marks it, and :func:`collect_unused` unloads at a safe point (after a batch,
after a swap, before a load), never inside a step.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import warnings
import weakref
from pathlib import Path
from typing import Any

import torch

from shared.models.adapters import adapter_settings

log = logging.getLogger(__name__)

BASE_ROWS = "__base__"  # PEFT's name for "no adapter" in a mixed batch
_ROWS = threading.local()  # .names: the adapter of every row of this thread's step (str: all rows)
_RESIDENT: weakref.WeakValueDictionary[tuple[str, str], ResidentBase] = weakref.WeakValueDictionary()
_REGISTRY_LOCK = threading.Lock()


def adapter_name(version: str, kind: str = "policy") -> str:
    return f"{kind}-{version}"


class _Gate:
    """Many steps at once, or one change of the module tree (which waits for steps to finish)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writing = False

    def enter_read(self) -> None:
        with self._cond:
            while self._writing:
                self._cond.wait()
            self._readers += 1

    def exit_read(self) -> None:
        with self._cond:
            self._readers -= 1
            if not self._readers:
                self._cond.notify_all()

    def enter_write(self) -> None:
        with self._cond:
            while self._writing:
                self._cond.wait()
            self._writing = True
            while self._readers:
                self._cond.wait()

    def exit_write(self) -> None:
        with self._cond:
            self._writing = False
            self._cond.notify_all()


class _Step:
    """``with``: one forward on a resident base, its rows using ``names``."""

    __slots__ = ("gate", "names", "saved")

    def __init__(self, gate: _Gate, names: str | list[str]):
        self.gate, self.names, self.saved = gate, names, None

    def __enter__(self) -> None:
        self.gate.enter_read()
        self.saved = getattr(_ROWS, "names", None)
        _ROWS.names = self.names

    def __exit__(self, *exc) -> None:
        _ROWS.names = self.saved
        self.gate.exit_read()


class _ThreadAdapter:
    """Set as a PEFT layer's active adapter: the adapter of the calling thread's step, if
    all its rows use one (PEFT iterates a layer's active adapters when no names are passed)."""

    __slots__ = ()

    def __iter__(self):
        names = getattr(_ROWS, "names", None)
        return iter((names,) if isinstance(names, str) and names != BASE_ROWS else ())

    def __repr__(self) -> str:
        return "<the adapter of this thread's step>"


_THREAD_ADAPTER = _ThreadAdapter()


def _mixed_rows_hook(module, args, kwargs):
    """LoRA layers: pass the per-row names of a step whose rows use different adapters."""
    names = getattr(_ROWS, "names", None)
    if isinstance(names, list):
        kwargs["adapter_names"] = names
    return args, kwargs


class ResidentBase:
    """A loaded full-weights model (and tokenizer), with the adapters loaded onto it."""

    def __init__(self, path: Path, version: str, model: Any, tokenizer: Any, device: str):
        self.path, self.version, self.model, self.tokenizer, self.device = path, version, model, tokenizer, device
        self.encode_lock = threading.Lock()  # bundles share the tokenizer, so they share its lock
        self.peft: Any = None  # peft.PeftModel over ``model`` once an adapter is loaded
        self._gate = _Gate()
        self._lock = threading.Lock()  # guards the reference counts below (never held in a step)
        self._released: collections.deque[str] = collections.deque()  # from finalizers: appended, no lock
        self._load_lock = threading.Lock()  # loads and unloads, one at a time
        self._refs: collections.Counter[str] = collections.Counter()  # adapter name -> live bundles naming it
        self._unused: set[str] = set()  # loaded, no live bundle: unload at the next collect
        self._hooks: dict[int, torch.utils.hooks.RemovableHandle] = {}
        self.adapter_loads = 0
        self.num_parameters = sum(p.numel() for p in model.parameters())

    @property
    def adapters(self) -> set[str]:
        return set(self.peft.peft_config) if self.peft is not None else set()

    def step(self, names: str | list[str]) -> _Step:
        """Context for one forward: ``names`` is the adapter of every row (one str: all of them)."""
        return _Step(self._gate, names)

    def acquire(self, name: str, adapter_dir: Path) -> bool:
        """Reference adapter ``name`` (loading it from ``adapter_dir`` unless it is loaded);
        returns whether it was loaded now."""
        with self._load_lock:  # not while a collect may be unloading it, nor two loads at once
            with self._lock:
                self._drain()
                self._refs[name] += 1
                self._unused.discard(name)
            if name in self.adapters:
                return False
            try:
                self._load(name, adapter_dir)
            except BaseException:
                self.release(name)
                raise
            return True

    def release(self, name: str) -> None:
        """A bundle naming ``name`` is gone. A finalizer: it may run in any thread at any
        allocation (a garbage collection), even one holding ``_lock``, so it takes no lock."""
        self._released.append(name)

    def _drain(self) -> None:
        """Count the releases (caller holds ``_lock``)."""
        while self._released:
            name = self._released.popleft()
            self._refs[name] -= 1
            if self._refs[name] <= 0:
                del self._refs[name]
                self._unused.add(name)

    def collect(self) -> list[str]:
        """Unload the adapters no live bundle names; the PEFT wrapper goes with the last one."""
        with self._load_lock:
            with self._lock:
                self._drain()
                names = sorted(n for n in self._unused if n not in self._refs and n in self.adapters)
                self._unused.clear()
            if not names:
                return []
            self._gate.enter_write()
            try:
                self._unhook_active()
                for name in names:
                    if len(self.adapters) > 1:
                        with warnings.catch_warnings():  # "was active ... now deleted": none is, between steps
                            warnings.simplefilter("ignore", UserWarning)
                            self.peft.delete_adapter(name)
                    else:
                        self._unwrap()
            finally:
                if self.peft is not None:
                    self._hook_new_layers()
                self._gate.exit_write()
        log.info("adapters unloaded", extra={"base_version": self.version, "adapters": names})
        return names

    def _load(self, name: str, adapter_dir: Path) -> None:
        from peft import PeftConfig, PeftModel
        from peft.utils import load_peft_weights, set_peft_model_state_dict

        settings = adapter_settings(adapter_dir)
        own = [k for k in ("modules_to_save", "trainable_token_indices") if settings.get(k)]
        if own:
            raise ValueError(f"the adapter sets {', '.join(own)}: only low-rank deltas can share a resident base")
        self._gate.enter_write()
        try:
            self._unhook_active()
            try:
                if self.peft is None:
                    config = PeftConfig.from_pretrained(str(adapter_dir))
                    config.inference_mode = True
                    self.peft = PeftModel(self.model, config, adapter_name=name)
                    weights = load_peft_weights(str(adapter_dir), device=self.device)
                    result = set_peft_model_state_dict(self.peft, weights, adapter_name=name)
                    missing = [k for k in getattr(result, "missing_keys", []) if "lora_" in k and name in k]
                    if missing:
                        raise ValueError(f"adapter weights missing: {missing[:3]}")
                else:
                    self.peft.load_adapter(
                        str(adapter_dir), adapter_name=name, is_trainable=False, torch_device=self.device
                    )
            except BaseException:
                self._drop_failed(name)
                raise
            self.model.eval()
            self.adapter_loads += 1
        finally:
            if self.peft is not None:
                self._hook_new_layers()
            self._gate.exit_write()

    def _drop_failed(self, name: str) -> None:
        """Undo a load that failed half way: no layer may keep a half-loaded adapter."""
        if self.peft is None:
            return
        if name in self.adapters and len(self.adapters) > 1:
            self.peft.delete_adapter(name)
        elif self.adapters <= {name}:
            self._unwrap()

    def _hook_new_layers(self) -> None:
        """Point every PEFT layer's active adapter at the thread's step, and hook the new ones."""
        from peft.tuners.lora import LoraLayer

        module: torch.nn.Module
        for module in self.model.modules():
            if isinstance(module, LoraLayer):
                setattr(module, "_active_adapter", _THREAD_ADAPTER)  # noqa: B010 - PEFT's attribute, read in forward
                if id(module) not in self._hooks:
                    self._hooks[id(module)] = module.register_forward_pre_hook(_mixed_rows_hook, with_kwargs=True)

    def _unhook_active(self) -> None:
        """Give PEFT's layers a real active adapter again (its loading and deleting index it)."""
        from peft.tuners.lora import LoraLayer

        if self.peft is None:
            return
        active = self.peft.active_adapter
        for module in self.model.modules():
            if isinstance(module, LoraLayer):
                setattr(module, "_active_adapter", active)  # noqa: B010

    def _unwrap(self) -> None:
        """Back to the plain base module (PEFT layers replaced by the layers they wrapped)."""
        assert self.peft is not None
        for handle in self._hooks.values():
            handle.remove()
        self._hooks.clear()
        self.peft.unload()
        for attr in ("peft_config", "_hf_peft_config_loaded"):
            if attr in vars(self.model):
                delattr(self.model, attr)
        self.peft = None


def find_resident(path: str | os.PathLike[str], device: str) -> ResidentBase | None:
    with _REGISTRY_LOCK:
        return _RESIDENT.get((os.path.realpath(path), device))


def register_resident(base: ResidentBase) -> ResidentBase:
    """Keep ``base`` findable while bundles use it; a base registered first (a concurrent load) wins."""
    with _REGISTRY_LOCK:
        return _RESIDENT.setdefault((os.path.realpath(base.path), base.device), base)


def collect_unused() -> list[str]:
    """Unload every resident base's unused adapters (call where no step runs on this thread)."""
    with _REGISTRY_LOCK:
        bases = list(_RESIDENT.values())
    return [name for base in bases for name in base.collect()]
