"""The tooling in pyproject.toml holds for the whole tree, so `make test` (and CI) enforce it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.unit


def run(*args: str) -> subprocess.CompletedProcess[str]:
    """Run a tool of the venv from the repository root."""
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=300
    )


def test_ruff_lint_is_clean() -> None:
    """ruff check finds nothing."""
    out = run("ruff", "check", "--no-cache", ".")
    assert out.returncode == 0, out.stdout + out.stderr


def test_ruff_format_is_clean() -> None:
    """Every file is formatted as ruff format would."""
    out = run("ruff", "format", "--check", "--no-cache", ".")
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.slow
def test_mypy_strict_on_the_pure_packages() -> None:
    """mypy --strict passes on slbproto, slbcore and slbtools."""
    out = run("mypy", "--cache-dir", "/tmp/slb-mypy-cache")
    assert out.returncode == 0, out.stdout + out.stderr
