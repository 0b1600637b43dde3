"""Configuration loading: valid files parse, every kind of bad key is refused with file and key path."""

from __future__ import annotations

from pathlib import Path

import pytest

from slbcore.cs.config import (
    FLAG_ROUTE_BY_DST_IP,
    FLAG_TRANSLATE_ADDR,
    FLAG_TRANSLATE_PORT,
    FLAG_WILDCARD_PORT,
    ConfigError,
    Method,
    load_config,
    parse_config_text,
)

pytestmark = pytest.mark.unit

GOOD = """
[cs]
csmb_port = 17701
ssmb_port = 17700
flow_idle_timeout = 30
standby = "10.0.0.2"

[[virtual_server]]
name = "web"
vip = "10.0.0.100"
port = 80
protocol = "tcp"
flags = ["translate_addr", "translate_port", "route_by_dst_ip"]
method = "weighted_round_robin"
connection_limit = 100
persistence = { timeout = 60 }

[virtual_server.health_check]
type = "http"
path = "/health"
expect_status = 204
interval = 1
timeout = 0.5
rise = 2
fall = 2

[[virtual_server.real_server]]
name = "web1"
address = "10.0.1.1"
port = 8080
weight = 3
next_hop = "10.0.1.254"

[[virtual_server.real_server]]
name = "web2"
address = "10.0.1.2"
drain = true

[[virtual_server]]
name = "dns"
vip = "10.0.0.53"
protocol = "udp"
vs_class = "dfs_assist"
flags = ["wildcard_port"]
method = "maglev"
maglev_table_size = 251

[[virtual_server.real_server]]
name = "dns1"
address = "10.0.2.1"
"""


def test_good_config_parses(tmp_path: Path) -> None:
    path = tmp_path / "cs.toml"
    path.write_text(GOOD)
    cfg = load_config(path)
    assert cfg.source == str(path)
    assert cfg.settings.csmb_port == 17701
    assert cfg.settings.flow_idle_timeout == 30.0
    assert cfg.settings.standby == "10.0.0.2"
    web, dns = cfg.virtual_servers
    assert web.flags == FLAG_TRANSLATE_ADDR | FLAG_TRANSLATE_PORT | FLAG_ROUTE_BY_DST_IP
    assert web.method is Method.WEIGHTED_ROUND_ROBIN
    assert web.key == ("10.0.0.100", 80, 6)
    assert web.persistence is not None and web.persistence.timeout == 60.0
    assert web.health_check is not None and web.health_check.kind == "http"
    assert web.health_check.expect_status == 204
    assert [rs.name for rs in web.real_servers] == ["web1", "web2"]
    assert web.real_servers[0].weight == 3 and web.real_servers[0].next_hop == "10.0.1.254"
    assert web.real_servers[1].drain and web.real_servers[1].port == 0
    assert dns.proto == 17 and dns.vs_class == 2 and dns.port == 0
    assert dns.flags == FLAG_WILDCARD_PORT
    assert cfg.vs_by_name("dns") is dns


def test_example_config_is_valid() -> None:
    example = Path(__file__).resolve().parents[2] / "topo" / "configs" / "example-cs.toml"
    cfg = load_config(example)
    assert cfg.virtual_servers


def _problems(text: str, tmp_path: Path) -> str:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    for problem in info.value.problems:
        assert problem.source == str(path)
        assert str(path) in str(problem)
    return message


@pytest.mark.parametrize(
    ("old", "new", "key", "words"),
    [
        ("weight = 3", "weight = -1", "virtual_server[0].real_server[0].weight", "out of range"),
        ("weight = 3", "weight = 70000", "virtual_server[0].real_server[0].weight", "out of range"),
        ("weight = 3", 'weight = "3"', "virtual_server[0].real_server[0].weight", "expected an integer"),
        ("weight = 3", "weight = true", "virtual_server[0].real_server[0].weight", "boolean"),
        (
            'address = "10.0.1.1"',
            'address = "10.0.1.300"',
            "virtual_server[0].real_server[0].address",
            "IPv4",
        ),
        ('address = "10.0.1.2"', "", "virtual_server[0].real_server[1].address", "missing"),
        ('next_hop = "10.0.1.254"', 'next_hop = "gw"', "virtual_server[0].real_server[0].next_hop", "IPv4"),
        ('name = "web2"', 'name = "web1"', "virtual_server[0].real_server[1].name", "duplicate"),
        ("port = 8080", "port = 65536", "virtual_server[0].real_server[0].port", "out of range"),
        ("port = 80", "port = 0", "virtual_server[0].port", "out of range"),
        ("port = 80\n", "", "virtual_server[0].port", "missing"),
        ('vip = "10.0.0.100"', 'vip = "x"', "virtual_server[0].vip", "IPv4"),
        ('protocol = "tcp"', 'protocol = "sctp"', "virtual_server[0].protocol", "not one of"),
        ('method = "maglev"', 'method = "random"', "virtual_server[1].method", "not one of"),
        ('vs_class = "dfs_assist"', 'vs_class = "proxy"', "virtual_server[1].vs_class", "not one of"),
        ('"route_by_dst_ip"]', '"bogus"]', "virtual_server[0].flags[2]", "not one of"),
        (
            "maglev_table_size = 251",
            "maglev_table_size = 250",
            "virtual_server[1].maglev_table_size",
            "prime",
        ),
        (
            "connection_limit = 100",
            "connection_limit = -5",
            "virtual_server[0].connection_limit",
            "out of range",
        ),
        ("rise = 2\n", "rise = 0\n", "virtual_server[0].health_check.rise", "out of range"),
        ('type = "http"', 'type = "icmp"', "virtual_server[0].health_check.type", "not one of"),
        ('path = "/health"', 'path = "health"', "virtual_server[0].health_check.path", "start with"),
        ("timeout = 0.5\n", "timeout = 5\n", "virtual_server[0].health_check.timeout", "exceed"),
        (
            "persistence = { timeout = 60 }",
            "persistence = { timeout = 0 }",
            "virtual_server[0].persistence.timeout",
            "range",
        ),
        (
            "persistence = { timeout = 60 }",
            "persistence = { kind = 1 }",
            "virtual_server[0].persistence.kind",
            "unknown key",
        ),
        ("csmb_port = 17701", "csmb_port = 99999", "cs.csmb_port", "out of range"),
        ("csmb_port = 17701", "csmb_prot = 17701", "cs.csmb_prot", "unknown key"),
        ('standby = "10.0.0.2"', "standby = 7", "cs.standby", "expected a string"),
        ("flow_idle_timeout = 30", 'role = "backup"', "cs.role", "not one of: active, standby"),
        ('standby = "10.0.0.2"', 'role = "standby"', "cs.standby", "needs the address of the active CS"),
        ("flow_idle_timeout = 30", "flow_idle_timeout = 0", "cs.flow_idle_timeout", "out of range"),
        ('name = "dns"', 'name = "web"', "virtual_server[1].name", "duplicate virtual server name"),
        ("drain = true", 'drain = "yes"', "virtual_server[0].real_server[1].drain", "boolean"),
        ('name = "dns1"', 'name = "a/b"', "virtual_server[1].real_server[0].name", "must not contain"),
    ],
)
def test_each_bad_key_is_named(tmp_path: Path, old: str, new: str, key: str, words: str) -> None:
    assert old in GOOD, old
    message = _problems(GOOD.replace(old, new, 1), tmp_path)
    line = next((ln for ln in message.splitlines() if f": {key}: " in ln), None)
    assert line is not None, message
    assert words in line, line


def test_duplicate_vs_address_refused(tmp_path: Path) -> None:
    text = GOOD.replace('vip = "10.0.0.53"', 'vip = "10.0.0.100"').replace(
        'flags = ["wildcard_port"]', "port = 80"
    )
    text = text.replace('protocol = "udp"', 'protocol = "tcp"')
    message = _problems(text, tmp_path)
    assert "virtual_server[1]: tcp 10.0.0.100:80 is already defined by virtual_server[0]" in message


def test_all_problems_reported_at_once(tmp_path: Path) -> None:
    text = GOOD.replace("weight = 3", "weight = -1").replace('protocol = "udp"', 'protocol = "x"')
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    keys = {p.key for p in info.value.problems}
    assert {"virtual_server[0].real_server[0].weight", "virtual_server[1].protocol"} <= keys


def test_syntax_error_names_file(tmp_path: Path) -> None:
    message = _problems("[cs\nport = ", tmp_path)
    assert "(syntax)" in message


def test_missing_file_names_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "nope.toml")
    assert "nope.toml" in str(info.value) and "cannot read" in str(info.value)


def test_wildcard_addr_needs_no_vip() -> None:
    cfg = parse_config_text(
        '[[virtual_server]]\nname="any"\nport=80\nflags=["wildcard_addr"]\n'
        '[[virtual_server.real_server]]\nname="a"\naddress="10.0.0.1"\n'
    )
    assert cfg.virtual_servers[0].vip == "0.0.0.0"


def test_empty_config_is_valid() -> None:
    cfg = parse_config_text("", "empty.toml")
    assert cfg.virtual_servers == () and cfg.settings.ssmb_port == 7700
