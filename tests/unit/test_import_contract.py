"""The platform never imports the demo: shared/ and services/ work for any
application, and the demo plugs in through the same interfaces an app uses
(flags such as --gate-judge, the gRPC API, the model store).

Two checks: no import statement in the platform's source names ``demo``, and
importing every platform module in a fresh interpreter loads no ``demo``
module (which would also catch an import hidden behind a string)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PLATFORM = ("shared", "services")


def _platform_files() -> list[Path]:
    return sorted(p for pkg in PLATFORM for p in (ROOT / pkg).rglob("*.py") if "proto" not in p.parts)


def _imported_names(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


def test_no_platform_source_imports_the_demo():
    offenders = [
        f"{path.relative_to(ROOT)}: import {name}"
        for path in _platform_files()
        for name in _imported_names(path)
        if name == "demo" or name.startswith("demo.")
    ]
    assert offenders == [], "the platform must not import demo/:\n" + "\n".join(offenders)


def test_importing_every_platform_module_loads_no_demo_module():
    modules = [
        ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        for p in _platform_files()
        if p.name != "__main__.py"
    ]
    script = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n    importlib.import_module(name)\n"
        "print(','.join(sorted(m for m in sys.modules if m == 'demo' or m.startswith('demo.'))))"
    )
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "", f"importing the platform loaded demo modules: {out.stdout.strip()}"
