"""dfsd's worker threads survive a bug in their loop: it is logged, counted, and the loop runs again."""

from __future__ import annotations

import threading

import pytest

from nodes.dfsd import _supervised

pytestmark = pytest.mark.integration


def test_a_failing_loop_is_logged_and_restarted(caplog: pytest.LogCaptureFixture) -> None:
    """The first two runs raise; the third returns normally and ends the thread."""
    runs: list[int] = []

    def loop(tag: str) -> None:
        runs.append(len(runs))
        if len(runs) < 3:
            raise KeyError(tag)

    stop, counters = threading.Event(), {}
    t = _supervised("csmb", stop, counters, loop, "x")
    with caplog.at_level("ERROR", logger="dfsd"):
        t.start()
        t.join(timeout=10)
    assert not t.is_alive() and runs == [0, 1, 2]
    assert counters == {"csmb_loop_restarts": 2}
    assert caplog.text.count("the csmb loop failed; restarting it") == 2


def test_stop_ends_a_loop_that_keeps_failing() -> None:
    """Once stop is set, a loop that always fails is not started again."""
    stop, counters = threading.Event(), {}

    def loop() -> None:
        stop.set()
        raise RuntimeError("always")

    t = _supervised("timer", stop, counters, loop)
    t.start()
    t.join(timeout=5)
    assert not t.is_alive() and counters == {"timer_loop_restarts": 1}
