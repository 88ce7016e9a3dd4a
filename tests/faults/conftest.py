"""Model stores for the fault-injection tests: the session's tiny store
(tests/conftest.py), copied per test so a test may corrupt its own."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


@pytest.fixture()
def fault_store(tiny_store, tmp_path) -> Path:
    """This test's own copy of the store."""
    return Path(shutil.copytree(tiny_store, tmp_path / "store"))
