"""The foundation works: a real HTTP GET crosses a userspace OVS switch, and nothing is left."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from mininet.topo import Topo

from nodes.daemon import Daemon
from nodes.net import (
    Testbed,
    clean_state_file,
    ovs_other_config_get,
    restore_ovs_other_config,
)

pytestmark = pytest.mark.mininet


class OneSwitch(Topo):
    """A client and an HTTP server on one switch."""

    def build(self) -> None:  # type: ignore[override]
        """h1 (client) -- s1 -- h2 (server)."""
        s1 = self.addSwitch("s1")
        self.addLink(self.addHost("h1", ip="10.0.0.1/24"), s1)
        self.addLink(self.addHost("h2", ip="10.0.0.2/24"), s1)


def test_http_get_through_userspace_switch(tmp_path: Path, no_leftovers: None) -> None:
    """curl on h1 gets h2's name from a real HTTP server behind a netdev-datapath OVS bridge."""
    bed = Testbed(OneSwitch())
    with bed as net:
        h1, h2 = net["h1"], net["h2"]
        dp = subprocess.run(
            ["ovs-vsctl", "get", "bridge", "s1", "datapath_type"], capture_output=True, text=True
        ).stdout.strip()
        assert dp == "netdev"
        server = Daemon(
            "backend-h2",
            [sys.executable, "-m", "nodes.backend", "--name", "h2", "--port", "80"],
            tmp_path / "h2.log",
            node=h2,
            on_start=bed.remember_pid,
        )
        server.start(timeout=15)
        try:
            out = h1.cmd("curl -sS --max-time 5 http://10.0.0.2/")
            assert out.strip() == "h2", out
            big = h1.cmd(
                "curl -sS --max-time 10 -o /dev/null -w '%{size_download}' http://10.0.0.2/bytes/2000000"
            )
            assert big.strip() == "2000000", big
        finally:
            server.stop()
    assert bed.leftovers() == []


def test_ovs_tuning_applies_during_the_run_and_is_restored(tmp_path: Path, no_leftovers: None) -> None:
    """A testbed's OVS other_config is set during the run and put back after, also by `make clean`."""
    before = ovs_other_config_get("max-idle")
    bed = Testbed(OneSwitch(), ovs_other_config={"max-idle": "4321"})
    with bed:
        assert ovs_other_config_get("max-idle") == "4321"
    assert ovs_other_config_get("max-idle") == before
    assert bed.leftovers() == []

    # A run killed before its teardown leaves its state file; `make clean` puts the value back.
    state = tmp_path / "net-killed-run.json"
    state.write_text(json.dumps({"bridges": [], "pids": [], "ovs_other_config": {"max-idle": before}}))
    try:
        subprocess.run(["ovs-vsctl", "set", "Open_vSwitch", ".", "other_config:max-idle=4321"], check=True)
        assert "OVS other_config:max-idle restored" in clean_state_file(state)
        assert ovs_other_config_get("max-idle") == before
        assert not state.exists()
    finally:
        state.unlink(missing_ok=True)
        restore_ovs_other_config({"max-idle": before})
