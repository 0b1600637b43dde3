"""Health rise/fall state machine, token bucket and persistence records."""

from __future__ import annotations

import pytest

from slbcore.cs.health import HealthMachine, HealthState
from slbcore.cs.persistence import PersistenceTable
from slbcore.cs.ratelimit import TokenBucket

pytestmark = pytest.mark.unit


def test_fall_needs_consecutive_failures() -> None:
    hm = HealthMachine(rise=2, fall=3)
    assert hm.state is HealthState.UP
    assert not hm.record(False, 1.0)
    assert not hm.record(False, 2.0)
    assert not hm.record(True, 3.0)  # resets the failure streak
    assert not hm.record(False, 4.0)
    assert not hm.record(False, 5.0)
    assert hm.record(False, 6.0, "refused")
    assert hm.state is HealthState.DOWN and hm.last_change == 6.0 and hm.last_detail == "refused"
    assert not hm.record(False, 7.0), "already down: no new transition"


def test_rise_needs_consecutive_successes() -> None:
    hm = HealthMachine(rise=2, fall=1, state=HealthState.DOWN)
    assert not hm.record(True, 1.0)
    assert not hm.record(False, 2.0)
    assert not hm.record(True, 3.0)
    assert hm.record(True, 4.0)
    assert hm.up and hm.transitions == 1 and hm.checks == 4


def test_token_bucket_burst_then_rate() -> None:
    tb = TokenBucket(rate=10.0, burst=5)
    assert all(tb.take(0.0) for _ in range(5))
    assert not tb.take(0.0)
    assert tb.take(0.1)  # one token refilled
    assert not tb.take(0.1)
    assert tb.take(10.0)
    assert tb.dropped == 2 and tb.allowed == 7


def test_token_bucket_clock_step_back() -> None:
    tb = TokenBucket(rate=1.0, burst=1)
    assert tb.take(100.0)
    assert not tb.take(50.0)
    assert tb.take(51.0)


def test_token_bucket_zero_rate_is_unlimited() -> None:
    tb = TokenBucket(rate=0.0, burst=1)
    assert all(tb.take(0.0) for _ in range(1000))


def test_persistence_lives_while_active_then_times_out() -> None:
    pt = PersistenceTable(max_records=10)
    rec = pt.bind("web", "192.0.2.1", "s1", timeout=10.0, now=0.0)
    assert rec is not None
    assert pt.get("web", "192.0.2.1", 1000.0) is rec, "active flows keep the record"
    pt.release("web", "192.0.2.1", 1000.0)
    assert pt.get("web", "192.0.2.1", 1009.9) is rec
    assert pt.expire(1010.0) == 1
    assert pt.get("web", "192.0.2.1", 1010.0) is None


def test_persistence_bounded() -> None:
    pt = PersistenceTable(max_records=2)
    assert pt.bind("v", "a", "s", 1.0, 0.0) is not None
    assert pt.bind("v", "b", "s", 1.0, 0.0) is not None
    assert pt.bind("v", "c", "s", 1.0, 0.0) is None
    assert pt.refused_full == 1 and len(pt) == 2
