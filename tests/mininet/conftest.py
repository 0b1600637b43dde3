"""Fixtures of the mininet tier: a running testbed per module, checked in teardown like the best suites.

After the tests of a module, the fixture asserts that no daemon logged an exception, that the
switch reported no OpenFlow error, and that nothing of the testbed is left on the machine. When a
test fails, every daemon's log is attached to the report.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from topo.lab import Lab
from topo.spec import load_spec

CONFIGS = Path(__file__).resolve().parent / "configs"
TOPO_CONFIGS = Path(__file__).resolve().parents[2] / "topo" / "configs"


def start_lab(path: Path, tmp_dir: Path) -> Lab:
    """Bring a testbed up (the caller stops it)."""
    lab = Lab(load_spec(path), run_dir=tmp_dir)
    lab.__enter__()
    return lab


@pytest.fixture(scope="module")
def module_lab(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """The testbed named by the module's ``TESTBED`` (a path), up for the whole module."""
    from tests.conftest import root_ovs_problem

    if root_ovs_problem():
        pytest.skip(root_ovs_problem() or "")
    path = Path(request.module.TESTBED)
    lab = start_lab(path, tmp_path_factory.mktemp(path.stem))
    request.node.lab = lab  # for the log hook below
    try:
        yield lab
        problems = lab.log_problems()
    finally:
        lab.stop()
    leftovers = lab.testbed.leftovers()
    assert not problems, "daemon logs show problems:\n" + "\n".join(problems) + "\n" + lab.logs()[-8000:]
    assert not leftovers, f"left behind: {leftovers}"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> object:
    """Attach every daemon log of the module's testbed to a failing test's report."""
    report = yield
    if report.failed and call.when == "call":
        lab = getattr(item.module, "__lab__", None) or getattr(getattr(item, "parent", None), "lab", None)
        if lab is not None and lab.net is not None:
            report.sections.append(("daemon logs", lab.logs()[-20000:]))
    return report
