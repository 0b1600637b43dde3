"""The set-up contract: the bootstrap is idempotent and the VM provisions with the same script."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.integration, pytest.mark.needs_root]


def test_second_bootstrap_run_changes_nothing() -> None:
    """A run after a successful one only checks: venv up to date, OVS running, nothing installed."""
    venv_python = ROOT / ".venv" / "bin" / "python"
    before = venv_python.stat().st_mtime if venv_python.exists() else None
    out = subprocess.run(
        ["bash", str(ROOT / "scripts" / "bootstrap.sh")],
        capture_output=True,
        text=True,
        timeout=600,
        stdin=subprocess.DEVNULL,
    )
    assert out.returncode == 0, out.stderr
    second = subprocess.run(
        ["bash", str(ROOT / "scripts" / "bootstrap.sh")],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert second.returncode == 0, second.stderr
    assert "Debian packages: all present" in second.stdout
    assert "venv: up to date" in second.stdout
    assert "Open vSwitch: running" in second.stdout
    assert "installing" not in second.stdout
    if before is not None:
        assert venv_python.stat().st_mtime == before


def test_bootstrap_refuses_non_root_with_a_clear_message() -> None:
    """Run as an unprivileged user, the bootstrap stops at once and says why."""
    out = subprocess.run(
        [
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "bash",
            str(ROOT / "scripts" / "bootstrap.sh"),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
    )
    assert out.returncode != 0
    assert "must run as root" in out.stderr


def test_vagrant_provisions_with_the_same_bootstrap() -> None:
    """The Vagrantfile's provisioning step runs scripts/bootstrap.sh, on Debian 12."""
    text = (ROOT / "Vagrantfile").read_text()
    assert re.search(r'config\.vm\.box\s*=\s*"debian/bookworm64"', text)
    provision = re.search(r'provision\s+"bootstrap".*?inline:\s*"([^"]+)"', text, re.S)
    assert provision is not None
    assert "bash scripts/bootstrap.sh" in provision.group(1)


def test_ci_runs_make_test() -> None:
    """CI runs the very command the README gives users."""
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    assert "make test" in (ROOT / "README.md").read_text()
