"""Shared test setup. The shared inputs themselves (genome factories, the tiny run) live in tests/factories.py."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
# `from factories import ...` must work in every test file under any pytest import mode (importlib mode does not
# put a test's folder on sys.path).
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

from factories import PLUGINS_DIR  # noqa: E402


@pytest.fixture()
def plugins_on_path(monkeypatch: pytest.MonkeyPatch) -> Path:
    """tests/plugins importable for this test (modules a config names by `_target_` or `imports:`)."""
    monkeypatch.syspath_prepend(str(PLUGINS_DIR))
    return PLUGINS_DIR
