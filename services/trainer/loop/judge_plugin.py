"""The gate's optional judge: a plug-in the application names, never imported by default.

``--gate-judge package.module:function`` names a callable
``(prompts: Sequence[str], responses: Sequence[str]) -> Sequence[float]``:
higher is better, NaN means "no opinion on this one" (a prompt the judge
does not know). An application with a rubric, a classifier or an LLM judge
plugs it in here; the demo passes its world judge
(``demo.evaluation:gate_judge``). The platform imports nothing of the
application's until this setting names it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence

JudgeFn = Callable[[Sequence[str], Sequence[str]], Sequence[float]]


class JudgePluginError(ValueError):
    """The --gate-judge setting does not name a usable callable."""


def load_judge(spec: str) -> JudgeFn:
    """The callable named by ``module:function``; a clear error if it is not there."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise JudgePluginError(f"--gate-judge {spec!r}: expected module:function, e.g. myapp.judges:rubric")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise JudgePluginError(f"--gate-judge {spec!r}: cannot import {module_name!r}: {exc}") from exc
    judge = getattr(module, attr, None)
    if not callable(judge):
        raise JudgePluginError(f"--gate-judge {spec!r}: {module_name} has no callable {attr!r}")
    return judge
