"""Daemon-level reload without sockets: a bad file is refused and the running configuration stays."""

from __future__ import annotations

from pathlib import Path

import pytest

from nodes.csd import CsDaemon
from slbcore.cs.config import ConfigError, load_config

pytestmark = pytest.mark.unit

GOOD = """
[[virtual_server]]
name = "web"
vip = "10.0.0.100"
port = 80
[[virtual_server.real_server]]
name = "a"
address = "10.0.1.1"
"""


def test_failed_reload_keeps_running_config(tmp_path: Path) -> None:
    path = tmp_path / "cs.toml"
    path.write_text(GOOD)
    daemon = CsDaemon(path, load_config(path))
    before = daemon.cs.config
    path.write_text(GOOD.replace('address = "10.0.1.1"', "address = 5"))
    with pytest.raises(ConfigError) as info:
        daemon.reload()
    assert f"{path}: virtual_server[0].real_server[0].address: expected a string" in str(info.value)
    assert daemon.cs.config is before
    assert daemon.cs.counters["reload_failed"] == 1
    status, body = daemon.route("POST", "/reload")
    assert status == 422 and body["problems"] and daemon.cs.config is before


def test_status_routes_without_sockets(tmp_path: Path) -> None:
    path = tmp_path / "cs.toml"
    path.write_text(GOOD)
    daemon = CsDaemon(path, load_config(path))
    assert daemon.route("GET", "/status")[0] == 200
    assert daemon.route("GET", "/vs")[1][0]["name"] == "web"
    assert daemon.route("GET", "/servers")[1][0]["server"] == "a"
    assert daemon.route("GET", "/flows?limit=x")[0] == 400
    assert daemon.route("GET", "/nope")[0] == 404
    assert daemon.route("DELETE", "/status")[0] == 405
    assert daemon.route("GET", "/drain/a")[0] == 405
    assert daemon.route("POST", "/drain/a") == (200, {"servers": ["web/a"]})
    assert daemon.cs.vs["web"].servers["a"].draining
    assert daemon.route("POST", "/undrain/web%2Fa") == (200, {"servers": ["web/a"]})
    assert daemon.route("POST", "/drain/zz")[0] == 404
