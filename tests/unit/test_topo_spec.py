"""Testbed files: every shipped config parses and builds; bad files are refused with file, key and problem."""

from __future__ import annotations

import copy
import tomllib
from pathlib import Path
from typing import Any

import pytest

from topo.build import SpecTopo
from topo.spec import SpecError, load_spec, parse_spec
from topo.tomlout import dumps

pytestmark = pytest.mark.unit
CONFIGS = sorted((Path(__file__).resolve().parents[2] / "topo" / "configs").glob("*.toml"))
TESTBEDS = [p for p in CONFIGS if "testbed" in tomllib.loads(p.read_text())]


def default_doc() -> dict[str, Any]:
    return tomllib.loads((Path(__file__).resolve().parents[2] / "topo/configs/default.toml").read_text())


@pytest.mark.parametrize("path", TESTBEDS, ids=lambda p: p.name)
def test_shipped_testbeds_parse_and_build(path: Path) -> None:
    """Each testbed file shipped in topo/configs is valid and yields a Mininet topology."""
    spec = load_spec(path)
    topo = SpecTopo(spec=spec)
    assert set(topo.hosts()) >= {c.name for c in spec.clients} | {b.name for b in spec.backends}
    for dfs in spec.dfs:
        assert dfs.switch in topo.switches()
        # generated daemon configs survive a TOML round trip unchanged
        assert tomllib.loads(dumps(spec.dfs_config(dfs))) == spec.dfs_config(dfs)
    assert tomllib.loads(dumps(spec.cs_config(spec.cs[0]))) == spec.cs_config(spec.cs[0])


def test_two_cs_nodes_are_an_active_standby_pair() -> None:
    """pair.toml: cs1 starts active, cs2 standby, each names the other; the DFS is told both."""
    from slbcore.cs.config import parse_config_text
    from slbcore.dfs.config import parse_config

    spec = load_spec(TESTBEDS[[p.name for p in TESTBEDS].index("pair.toml")])
    cs1, cs2 = spec.cs
    one, two = spec.cs_config(cs1)["cs"], spec.cs_config(cs2)["cs"]
    assert (one["role"], one["standby"]) == ("active", cs2.mgmt_ipaddr)
    assert (two["role"], two["standby"]) == ("standby", cs1.mgmt_ipaddr)
    dfs = spec.dfs_config(spec.dfs[0])["cs"]
    assert (dfs["ipaddr"], dfs["standby_ipaddr"]) == (cs1.mgmt_ipaddr, cs2.mgmt_ipaddr)
    # ... and the daemons accept what the testbed generates.
    assert parse_config_text(dumps(spec.cs_config(cs2)), "cs2.toml").settings.role == "standby"
    dfs_cfg = parse_config(tomllib.loads(dumps(spec.dfs_config(spec.dfs[0]))))
    assert dfs_cfg.cs_standby_ipaddr == cs2.mgmt_ipaddr
    # One CS: neither key.
    single = load_spec(TESTBEDS[[p.name for p in TESTBEDS].index("default.toml")])
    assert "role" not in single.cs_config(single.cs[0])["cs"]
    assert "standby_ipaddr" not in single.dfs_config(single.dfs[0])["cs"]


def test_default_testbed_wiring() -> None:
    """The default testbed: DFS ports in segment order, gateways owned by the DFS, mgmt addresses apart."""
    spec = load_spec(TESTBEDS[[p.name for p in TESTBEDS].index("default.toml")])
    dfs = spec.dfs[0]
    assert [(p.port, p.segment, p.ipaddr) for p in dfs.ports] == [
        (1, "clients", "10.0.0.1"),
        (2, "servers", "10.0.1.1"),
    ]
    assert all(b.gateway == "10.0.1.1" for b in spec.backends)
    assert all(c.gateway == "10.0.0.1" for c in spec.clients)
    assert spec.cs[0].mgmt_ipaddr != dfs.mgmt_ipaddr
    cfg = spec.dfs_config(dfs)
    assert cfg["cs"]["ipaddr"] == spec.cs[0].mgmt_ipaddr
    assert cfg["interface"][0] == {
        "port": 1,
        "ipaddr": "10.0.0.1/24",
        "mac": dfs.ports[0].mac,
        "name": "clients",
    }
    links = {(a, b) for a, b in SpecTopo(spec=spec).links()}
    assert ("dfs1sw", "clients") in links or ("clients", "dfs1sw") in links


def mutate(path: list[Any], value: Any) -> dict[str, Any]:
    doc = copy.deepcopy(default_doc())
    target = doc
    for key in path[:-1]:
        target = target[key]
    if value is KeyError:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return doc


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        (["segment", 0, "subnet"], "10.0.0.0/33", "segment[0].subnet: not an IPv4 network"),
        (
            ["segment", 1, "subnet"],
            "10.0.0.0/16",
            "segment[1].subnet: 10.0.0.0/16 overlaps segment 'clients'",
        ),
        (["backend", 0, "ipaddr"], "10.0.0.50", "backend[0].ipaddr: 10.0.0.50 is not in segment 'servers'"),
        (["backend", 1, "ipaddr"], "10.0.1.11", "backend[1].ipaddr: address 10.0.1.11 is already used"),
        (["backend", 0, "segment"], "nowhere", "backend[0].segment: no segment named 'nowhere'"),
        (["backend", 0, "port"], 70000, "backend[0].port: expected an integer in 1..65535"),
        (["client", 0, "name"], "Client-1", "client[0].name: expected 1-8 lower-case"),
        (["client", 1, "name"], "client1", "client[1].name: the name 'client1' is used twice"),
        (["dfs", 0, "interfaces"], [], "dfs[0].interfaces: expected a non-empty array"),
        (["dfs", 0, "colour"], "red", "dfs[0]: unknown key(s) colour"),
        (["virtual_server"], KeyError, "virtual_server: at least one [[virtual_server]] is required"),
        (
            ["testbed", "mgmt_subnet"],
            "10.0.1.0/24",
            "segment[1].subnet: 10.0.1.0/24 overlaps the management subnet",
        ),
        (["testbed", "ovs_other_config"], 300, "testbed.ovs_other_config: expected a table"),
        (
            ["testbed", "ovs_other_config"],
            {"Max Idle": 300},
            "testbed.ovs_other_config.Max Idle: not an OVS other_config key",
        ),
        (
            ["testbed", "ovs_other_config"],
            {"max-idle": -1},
            "testbed.ovs_other_config.max-idle: expected an integer >= 0, boolean or word, got -1",
        ),
        (
            ["testbed", "ovs_other_config"],
            {"max-idle": "300; rm"},
            "testbed.ovs_other_config.max-idle: expected an integer >= 0",
        ),
    ],
)
def test_bad_testbed_names_file_key_and_problem(path: list[Any], value: Any, expected: str) -> None:
    """Each mistake is refused with the source, the key path and what is wrong."""
    with pytest.raises(SpecError) as info:
        parse_spec(mutate(path, value), "my.toml")
    assert str(info.value).startswith("my.toml: ")
    assert expected in str(info.value)


def test_ovs_tuning_is_read_as_strings_for_ovs_vsctl() -> None:
    """Integers, booleans and words become the strings ovs-vsctl sets; none given means none."""
    assert parse_spec(default_doc()).ovs_other_config == ()
    doc = mutate(["testbed", "ovs_other_config"], {"max-idle": 300, "n-handler-threads": 1, "x-y": True})
    expected = (("max-idle", "300"), ("n-handler-threads", "1"), ("x-y", "true"))
    assert parse_spec(doc).ovs_other_config == expected


def test_unreadable_and_invalid_toml(tmp_path: Path) -> None:
    """A missing file and a syntax error are reported as SpecError, not a traceback."""
    with pytest.raises(SpecError, match="cannot read"):
        load_spec(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[testbed\nname=")
    with pytest.raises(SpecError, match="not valid TOML"):
        load_spec(bad)


def test_toml_writer_quotes_and_nests() -> None:
    """The writer escapes strings and keeps arrays of tables nested under their parent."""
    doc = {
        "a": {"s": 'x"y\\z', "n": 1, "f": 0.5, "b": True, "l": ["p", "q"]},
        "t": [{"name": "v", "sub": [{"k": 1}, {"k": 2}], "inline": {"x": 1}}],
    }
    assert tomllib.loads(dumps(doc)) == doc
    with pytest.raises(ValueError):
        dumps({"x": float("nan")})


def test_readme_testbed_example_is_valid() -> None:
    """The testbed shown in the README parses and builds, so a user can start from it."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = readme.split("```toml\n", 1)[1].split("```", 1)[0]
    spec = parse_spec(tomllib.loads(block), "README.md")
    assert SpecTopo(spec=spec).hosts()
