"""Test tiers and the environment checks that decide whether a tier can run here.

Tiers are pytest markers: ``unit`` (pure, no root), ``integration`` (local processes, loopback;
some need root and Open vSwitch), ``mininet`` (namespaces and OVS). Where a tier cannot run, its
tests are skipped with the reason, except under CI (``CI=true``) or ``SLB_REQUIRE_ALL_TIERS=1``:
there a missing prerequisite is a failure, so no tier is ever silently skipped in CI.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

REQUIRE_ALL = os.environ.get("CI") == "true" or os.environ.get("SLB_REQUIRE_ALL_TIERS") == "1"


def _ovs_running() -> bool:
    if not shutil.which("ovs-vsctl"):
        return False
    return subprocess.run(["ovs-vsctl", "--timeout=5", "show"], capture_output=True).returncode == 0


def root_ovs_problem() -> str | None:
    """Why root+OVS tests cannot run here, or None when they can."""
    if os.geteuid() != 0:
        return "needs root (network namespaces and Open vSwitch)"
    try:
        import mininet.net  # noqa: F401
    except ImportError:
        return "Mininet is not importable (run 'make test', which bootstraps the venv)"
    if not _ovs_running():
        return "Open vSwitch is not running (run 'make test', which starts it)"
    return None


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Skip (or, under CI, fail) a root/OVS test when this machine cannot run it."""
    if not (item.get_closest_marker("mininet") or item.get_closest_marker("needs_root")):
        return
    problem = root_ovs_problem()
    if problem is None:
        return
    if REQUIRE_ALL:
        pytest.fail(f"every tier must run here (CI): {problem}", pytrace=False)
    pytest.skip(problem)


def _our_leftovers() -> list[str]:
    """Bridges, namespaces and state files a test run of ours could have left."""
    import json

    from nodes.net import STATE_DIR, pid_alive

    # Bridges and state of a testbed that another live process is running are not ours to judge.
    others: set[str] = set()
    live_state: list[str] = []
    if STATE_DIR.is_dir():
        for path in STATE_DIR.glob("net-*.json"):
            owner = int(path.name.split("-")[1])
            if owner != os.getpid() and pid_alive(owner):
                try:
                    others.update(json.loads(path.read_text()).get("bridges", []))
                except (OSError, ValueError):
                    pass
            else:
                live_state.append(f"state file {path.name}")
    found: list[str] = []
    if _ovs_running():
        out = subprocess.run(["ovs-vsctl", "--timeout=5", "list-br"], capture_output=True, text=True).stdout
        found += [f"bridge {b}" for b in out.split() if b not in others]
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    found += [f"netns {line.split()[0]}" for line in out.splitlines() if line.strip()]
    found += live_state
    return found


@pytest.fixture
def no_leftovers() -> object:
    """Fail the test if it leaves bridges, namespaces or testbed state behind."""
    before = set(_our_leftovers()) if os.geteuid() == 0 else set()
    yield
    if os.geteuid() == 0:
        after = set(_our_leftovers()) - before
        assert not after, f"left behind: {sorted(after)}"
