"""The platform never imports the demo: shared/, services/ and the `rlhf` command
(rlhf_cli/) work for any application, and the demo plugs in through the same
interfaces an app uses (flags such as --gate-judge, the gRPC API, the model
store, the public training API).

The rule, checked here:

- shared/ and services/ never import ``demo``, anywhere;
- rlhf_cli/ never imports ``demo`` at module level (`rlhf --help` builds every
  command's parser and must load no demo module). Only the demo's own commands
  (:data:`DEMO_COMMANDS`) import it, inside the command, when it runs;
- demo/ reaches the platform as an application would: ``shared`` (the client
  package: stubs, channels, config helpers, the model store and model formats)
  and ``services.trainer.supervised.api`` (training from data), never another
  ``services`` module and never ``rlhf_cli``.

The same rule holds for every application in :data:`APPS` (``assistant``, the
chat-model app, too): the platform never imports it, only its commands
(:data:`APP_COMMANDS`) load it inside the command, and it reaches the platform
only through ``shared`` and the public modules. Applications do not import
each other.

Static checks read every import statement; a fresh interpreter that imports
every platform and CLI module must load no application module (which would also
catch an import hidden behind a string)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PLATFORM = ("shared", "services")
# The `rlhf` commands that exist for the demo application and may import demo/
# inside the command: `rlhf demo` (the demo itself), `rlhf bootstrap` (builds the
# demo's toy models), `rlhf simulate` (the demo's simulated users), `rlhf eval`
# (scores a version on the demo world's held-out prompts with its judge).
DEMO_COMMANDS = frozenset({"demo_cmd", "bootstrap_cmd", "simulate_cmd", "eval_cmd"})
# Every application beside the platform, and the `rlhf` commands that may load it
# inside the command (`rlhf simulate --app assistant`, `rlhf demo --app assistant`,
# whose part is demo_assistant).
APPS = ("demo", "assistant")
APP_COMMANDS = {"demo": DEMO_COMMANDS, "assistant": frozenset({"simulate_cmd", "demo_cmd", "demo_assistant"})}
# What demo/ may import from the platform besides ``shared``.
PUBLIC_SERVICE_MODULES = frozenset({"services.trainer.supervised.api"})


def _files(*packages: str) -> list[Path]:
    return sorted(p for pkg in packages for p in (ROOT / pkg).rglob("*.py") if "proto" not in p.parts)


def _names(node: ast.AST) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        return [node.module]
    return []


def _imported_names(path: Path) -> list[str]:
    return [name for node in ast.walk(ast.parse(path.read_text(), filename=str(path))) for name in _names(node)]


def _module_level_imports(path: Path) -> list[str]:
    """Imports that run when the module is imported: everything outside function bodies."""
    names: list[str] = []
    pending: list[ast.AST] = [ast.parse(path.read_text(), filename=str(path))]
    while pending:
        node = pending.pop()
        names.extend(_names(node))
        pending.extend(
            child
            for child in ast.iter_child_nodes(node)
            if not isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
        )
    return names


def _is_demo(name: str) -> bool:
    return name == "demo" or name.startswith("demo.")


def _module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def test_no_platform_source_imports_the_demo():
    offenders = [
        f"{path.relative_to(ROOT)}: import {name}"
        for path in _files(*PLATFORM)
        for name in _imported_names(path)
        if _is_demo(name)
    ]
    assert offenders == [], "the platform must not import demo/:\n" + "\n".join(offenders)


def test_no_cli_module_imports_the_demo_at_module_level():
    offenders = [
        f"{path.relative_to(ROOT)}: import {name}"
        for path in _files("rlhf_cli")
        for name in _module_level_imports(path)
        if _is_demo(name)
    ]
    assert offenders == [], (
        "rlhf_cli/ must not import demo/ at module level (`rlhf --help` imports every command module); "
        "a demo command imports it inside the command:\n" + "\n".join(offenders)
    )


def test_only_the_demo_commands_import_the_demo():
    offenders = [
        f"{path.relative_to(ROOT)}: import {name}"
        for path in _files("rlhf_cli")
        if path.stem not in DEMO_COMMANDS
        for name in _imported_names(path)
        if _is_demo(name)
    ]
    assert offenders == [], (
        f"only the demo's own commands ({', '.join(sorted(DEMO_COMMANDS))}) may import demo/; the platform's "
        "commands (up, import, sft, ...) work on any model store:\n" + "\n".join(offenders)
    )


def test_the_demo_reaches_the_platform_only_through_its_public_interfaces():
    offenders = [
        f"{path.relative_to(ROOT)}: import {name}"
        for path in _files("demo")
        for name in _imported_names(path)
        if name.split(".")[0] == "rlhf_cli" or (name.split(".")[0] == "services" and name not in PUBLIC_SERVICE_MODULES)
    ]
    assert offenders == [], (
        f"demo/ is an application: it may import shared and {', '.join(sorted(PUBLIC_SERVICE_MODULES))}, "
        "not the trainer's or any service's internals, nor the CLI:\n" + "\n".join(offenders)
    )


def _is_app(name: str, app: str) -> bool:
    return name == app or name.startswith(app + ".")


@pytest.mark.parametrize("app", [a for a in APPS if a != "demo"])
def test_no_platform_source_imports_the_app(app):
    offenders = [
        f"{path.relative_to(ROOT)}: import {name}"
        for path in _files(*PLATFORM)
        for name in _imported_names(path)
        if _is_app(name, app)
    ]
    assert offenders == [], f"the platform must not import {app}/:\n" + "\n".join(offenders)


@pytest.mark.parametrize("app", [a for a in APPS if a != "demo"])
def test_only_the_app_commands_import_the_app_and_only_inside_the_command(app):
    offenders = [
        f"{path.relative_to(ROOT)}: import {name}"
        for path in _files("rlhf_cli")
        for name in _imported_names(path)
        if _is_app(name, app) and path.stem not in APP_COMMANDS[app]
    ]
    offenders += [
        f"{path.relative_to(ROOT)}: module-level import {name}"
        for path in _files("rlhf_cli")
        for name in _module_level_imports(path)
        if _is_app(name, app)
    ]
    assert offenders == [], f"only {sorted(APP_COMMANDS[app])} may import {app}/, inside the command:\n" + "\n".join(
        offenders
    )


@pytest.mark.parametrize("app", APPS)
def test_an_app_reaches_the_platform_only_through_its_public_interfaces_and_not_another_app(app):
    other_apps = [a for a in APPS if a != app]
    offenders = [
        f"{path.relative_to(ROOT)}: import {name}"
        for path in _files(app)
        for name in _imported_names(path)
        if name.split(".")[0] == "rlhf_cli"
        or (name.split(".")[0] == "services" and name not in PUBLIC_SERVICE_MODULES)
        or any(_is_app(name, other) for other in other_apps)
    ]
    assert offenders == [], (
        f"{app}/ is an application: it may import shared and {', '.join(sorted(PUBLIC_SERVICE_MODULES))}, "
        "not the trainer's or any service's internals, the CLI or another application:\n" + "\n".join(offenders)
    )


def test_importing_every_platform_and_cli_module_loads_no_app_module():
    modules = [_module_name(p) for p in _files(*PLATFORM, "rlhf_cli") if p.name != "__main__.py"]
    script = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n    importlib.import_module(name)\n"
        "importlib.import_module('rlhf_cli.main').build_parser()\n"
        f"apps = {APPS!r}\n"
        "print(','.join(sorted(m for m in sys.modules if m.split('.')[0] in apps)))"
    )
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    loaded = out.stdout.strip()
    assert loaded == "", f"importing the platform or the CLI loaded application modules: {loaded}"
