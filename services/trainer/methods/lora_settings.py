"""``lora_target_modules`` parsed and checked without torch: TrainerConfig imports every
method's config (services.trainer.methods.base_config) before any model is loaded."""

from __future__ import annotations

import re

ALL_LINEAR = "all-linear"
_MODULE_NAME = re.compile(r"^[A-Za-z0-9_.]+\Z")


def target_modules(text: str) -> str | list[str]:
    """``lora_target_modules`` as PEFT takes it: "all-linear" (every linear layer but the
    output head) or a list of module names (suffixes, e.g. "q_proj,v_proj")."""
    text = text.strip()
    if text == ALL_LINEAR:
        return ALL_LINEAR
    return [name.strip() for name in text.split(",") if name.strip()]


def target_modules_problem(text: str) -> str | None:
    """Why ``text`` is not a valid ``lora_target_modules``, or None."""
    names = target_modules(text)
    if names == ALL_LINEAR:
        return None
    if not names:
        return f'must be "{ALL_LINEAR}" or a comma-separated list of module names, got {text!r}'
    bad = [n for n in names if not _MODULE_NAME.match(n)]
    if bad:
        return f"module names are letters, digits, _ and ., got {bad} (e.g. q_proj,v_proj or {ALL_LINEAR})"
    return None
