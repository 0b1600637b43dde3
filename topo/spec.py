"""A testbed file, read and checked: what nodes exist, how they are wired, what they run.

A testbed is described in TOML so that a user can write a new one without touching Python
(``topo/configs/default.toml`` is the annotated example). This module is pure: it reads and
checks the file and derives, from the one description, the Mininet topology
(:mod:`topo.build`), the CS configuration and each DFS's configuration. Nothing here needs root.

Model:

* a **management network** carries the two buses (CSMB, SSMB) between CS and DFS nodes; it is
  a separate L2 switch with its own subnet, as in a real deployment;
* **segments** are the data networks (an L2 switch each: clients, servers, ...);
* each **DFS** is a node running the DFS daemon plus its own switch; the switch has one port per
  segment it routes for, and the DFS owns an address (gateway) on each;
* **clients** and **backends** sit on segments and route through the DFS that serves their
  segment; **routers** (optional) are Linux namespaces with forwarding on, e.g. for ECMP;
* ``[[virtual_server]]`` tables are handed to the CS unchanged (see ``example-cs.toml``).
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

NAME_RE = re.compile(r"^[a-z][a-z0-9]{0,7}$")
OVS_KEY_RE = re.compile(r"^[a-z][a-z0-9-]{0,63}$")
OVS_VALUE_RE = re.compile(r"^[A-Za-z0-9._:,/-]{1,128}$")


class SpecError(ValueError):
    """The testbed file is wrong; the message names the file, the key and the problem."""


@dataclass(frozen=True)
class Segment:
    """A data L2 network."""

    name: str
    subnet: ipaddress.IPv4Network


@dataclass(frozen=True)
class DfsPort:
    """One routed port of a DFS switch: its segment, the address the DFS owns there, its MAC."""

    port: int
    segment: str
    ipaddr: str
    mac: str


@dataclass(frozen=True)
class DfsNode:
    """A DFS: the daemon's node, its switch, and the ports it routes."""

    name: str
    index: int
    mgmt_ipaddr: str
    ports: tuple[DfsPort, ...]
    routes: tuple[tuple[str, str], ...] = ()
    timeouts: dict[str, Any] = field(default_factory=dict)
    limits: dict[str, Any] = field(default_factory=dict)

    @property
    def switch(self) -> str:
        """The name of this DFS's OVS bridge."""
        return f"{self.name}sw"


@dataclass(frozen=True)
class CsNode:
    """A CS: its management address and its addresses on data segments (for health checks)."""

    name: str
    mgmt_ipaddr: str
    data: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class EndHost:
    """A client or a backend on one segment, routed through ``gateway``."""

    name: str
    segment: str
    ipaddr: str
    gateway: str | None
    port: int = 0
    # (mac, ipaddr) of every DFS on this host's segment when there are several: replies then
    # go back through the DFS that delivered the connection (see nodes.types.return_routing).
    return_gateways: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Router:
    """A Linux router namespace: one address per segment, static (optionally multipath) routes."""

    name: str
    addresses: tuple[tuple[str, str], ...]
    routes: tuple[tuple[str, tuple[str, ...]], ...]
    l4_hash: bool = True


@dataclass(frozen=True)
class Spec:
    """A whole testbed."""

    name: str
    description: str
    source: str
    mgmt_subnet: ipaddress.IPv4Network
    segments: tuple[Segment, ...]
    cs: tuple[CsNode, ...]
    dfs: tuple[DfsNode, ...]
    backends: tuple[EndHost, ...]
    clients: tuple[EndHost, ...]
    routers: tuple[Router, ...]
    cs_settings: dict[str, Any]
    virtual_servers: tuple[dict[str, Any], ...]
    #: Open vSwitch tuning (``Open_vSwitch . other_config``) set while the testbed runs, restored after.
    ovs_other_config: tuple[tuple[str, str], ...] = ()

    def segment(self, name: str) -> Segment:
        """The segment called ``name``."""
        return next(s for s in self.segments if s.name == name)

    def cs_config(self, cs: CsNode) -> dict[str, Any]:
        """The CS daemon's configuration document (TOML-shaped) for ``cs``."""
        settings = {
            "csmb_listen": cs.mgmt_ipaddr,
            "ssmb_listen": cs.mgmt_ipaddr,
            "status_listen": "127.0.0.1",
            **self.cs_settings,
        }
        if len(self.cs) == 2:
            # An active/standby pair: the first [[cs]] starts active, the second standby; each names
            # the other, for state-shared copies and for the DFS to turn to.
            other = self.cs[1] if cs == self.cs[0] else self.cs[0]
            settings["standby"] = other.mgmt_ipaddr
            settings["role"] = "active" if cs == self.cs[0] else "standby"
        return {"cs": settings, "virtual_server": [dict(vs) for vs in self.virtual_servers]}

    def dfs_config(self, dfs: DfsNode) -> dict[str, Any]:
        """The DFS daemon's configuration document (TOML-shaped) for ``dfs``."""
        primary = self.cs[0]
        ssmb_port = int(self.cs_settings.get("ssmb_port", 7700))
        csmb_port = int(self.cs_settings.get("csmb_port", 7701))
        doc: dict[str, Any] = {
            "dfs": {
                "name": dfs.name,
                "switch": dfs.switch,
                "mgmt_ipaddr": dfs.mgmt_ipaddr,
                "ssmb_port": 7700,
            },
            "cs": {
                "ipaddr": primary.mgmt_ipaddr,
                "csmb_port": csmb_port,
                "ssmb_port": ssmb_port,
                **({"standby_ipaddr": self.cs[1].mgmt_ipaddr} if len(self.cs) == 2 else {}),
            },
            "openflow": {"listen_port": 6653, "unix_socket": f"/var/run/openvswitch/{dfs.name}.sock"},
            "status": {"port": 7790},
            "interface": [
                {
                    "port": p.port,
                    "ipaddr": f"{p.ipaddr}/{self.segment(p.segment).subnet.prefixlen}",
                    "mac": p.mac,
                    "name": p.segment,
                }
                for p in dfs.ports
            ],
            "route": [{"prefix": prefix, "via": via} for prefix, via in dfs.routes],
        }
        if dfs.timeouts:
            doc["timeouts"] = dict(dfs.timeouts)
        if dfs.limits:
            doc["limits"] = dict(dfs.limits)
        return doc


class _Reader:
    """Walks the TOML document, collecting problems with their key paths."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, key: str, problem: str) -> SpecError:
        return SpecError(f"{self.source}: {key}: {problem}")

    def table(self, doc: Any, key: str) -> dict[str, Any]:
        if not isinstance(doc, dict):
            raise self.fail(key, "expected a table")
        return doc

    def tables(self, doc: dict[str, Any], key: str, required: bool = False) -> list[dict[str, Any]]:
        value = doc.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise self.fail(key, f"expected an array of tables ([[{key}]])")
        if required and not value:
            raise self.fail(key, f"at least one [[{key}]] is required")
        return value

    def keys(self, table: dict[str, Any], allowed: set[str], path: str) -> None:
        unknown = sorted(set(table) - allowed)
        if unknown:
            raise self.fail(
                path, f"unknown key(s) {', '.join(unknown)} (allowed: {', '.join(sorted(allowed))})"
            )

    def name(self, table: dict[str, Any], path: str, seen: set[str]) -> str:
        value = table.get("name")
        if not isinstance(value, str) or not NAME_RE.match(value):
            raise self.fail(
                f"{path}.name",
                f"expected 1-8 lower-case letters/digits starting with a letter, got {value!r}",
            )
        if value in seen:
            raise self.fail(f"{path}.name", f"the name {value!r} is used twice")
        seen.add(value)
        return value

    def ipv4(self, value: Any, path: str) -> str:
        try:
            return str(ipaddress.IPv4Address(value))
        except (ValueError, TypeError):
            raise self.fail(path, f"not an IPv4 address: {value!r}") from None

    def network(self, value: Any, path: str) -> ipaddress.IPv4Network:
        try:
            return ipaddress.IPv4Network(value)
        except (ValueError, TypeError) as exc:
            raise self.fail(path, f"not an IPv4 network ({exc}): {value!r}") from None

    def ovs_other_config(self, value: Any, path: str) -> tuple[tuple[str, str], ...]:
        """``{ max-idle = 300 }``: OVS other_config keys with integer, boolean or word values."""
        table = self.table(value, path)
        items = []
        for key, val in sorted(table.items()):
            if not OVS_KEY_RE.match(key):
                raise self.fail(f"{path}.{key}", "not an OVS other_config key (lower-case words and '-')")
            if isinstance(val, bool):
                text = "true" if val else "false"
            elif isinstance(val, int) and val >= 0:
                text = str(val)
            elif isinstance(val, str) and OVS_VALUE_RE.match(val):
                text = val
            else:
                raise self.fail(f"{path}.{key}", f"expected an integer >= 0, boolean or word, got {val!r}")
            items.append((key, text))
        return tuple(items)

    def int(self, value: Any, path: str, lo: int, hi: int) -> int:
        if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
            raise self.fail(path, f"expected an integer in {lo}..{hi}, got {value!r}")
        return value


def load_spec(path: str | Path) -> Spec:
    """Read and check a testbed file."""
    try:
        with open(path, "rb") as fh:
            doc = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"{path}: not valid TOML: {exc}") from None
    except OSError as exc:
        raise SpecError(f"{path}: cannot read: {exc.strerror}") from None
    return parse_spec(doc, str(path))


def parse_spec(doc: dict[str, Any], source: str = "<testbed>") -> Spec:
    """Check a parsed testbed document and build the :class:`Spec`."""
    r = _Reader(source)
    r.keys(
        doc,
        {"testbed", "segment", "cs", "dfs", "backend", "client", "router", "cs_settings", "virtual_server"},
        "top level",
    )
    tb = r.table(doc.get("testbed", {}), "testbed")
    r.keys(tb, {"name", "description", "mgmt_subnet", "ovs_other_config"}, "testbed")
    mgmt = r.network(tb.get("mgmt_subnet", "10.255.0.0/24"), "testbed.mgmt_subnet")
    ovs_tuning = r.ovs_other_config(tb.get("ovs_other_config", {}), "testbed.ovs_other_config")
    mgmt_hosts = iter(mgmt.hosts())
    names: set[str] = {"mgmt"}

    segments: list[Segment] = []
    for i, raw in enumerate(r.tables(doc, "segment", required=True)):
        path = f"segment[{i}]"
        r.keys(raw, {"name", "subnet"}, path)
        subnet = r.network(raw.get("subnet"), f"{path}.subnet")
        if subnet.overlaps(mgmt):
            raise r.fail(f"{path}.subnet", f"{subnet} overlaps the management subnet {mgmt}")
        for other in segments:
            if subnet.overlaps(other.subnet):
                raise r.fail(f"{path}.subnet", f"{subnet} overlaps segment {other.name!r} ({other.subnet})")
        segments.append(Segment(r.name(raw, path, names), subnet))
    by_segment = {s.name: s for s in segments}

    def on_segment(value: Any, addr: Any, path: str) -> tuple[str, str]:
        if value not in by_segment:
            raise r.fail(f"{path}.segment", f"no segment named {value!r} (have: {', '.join(by_segment)})")
        ip = r.ipv4(addr, f"{path}.ipaddr")
        if ipaddress.IPv4Address(ip) not in by_segment[value].subnet:
            raise r.fail(f"{path}.ipaddr", f"{ip} is not in segment {value!r} ({by_segment[value].subnet})")
        return value, ip

    used_ips: dict[str, str] = {}

    def claim(ip: str, path: str) -> None:
        if ip in used_ips:
            raise r.fail(path, f"address {ip} is already used by {used_ips[ip]}")
        used_ips[ip] = path

    cs_nodes: list[CsNode] = []
    for i, raw in enumerate(r.tables(doc, "cs", required=True)):
        path = f"cs[{i}]"
        r.keys(raw, {"name", "data"}, path)
        name = r.name(raw, path, names)
        data = r.table(raw.get("data", {}), f"{path}.data")
        pairs = []
        for seg, addr in data.items():
            seg, ip = on_segment(seg, addr, f"{path}.data.{seg}")
            claim(ip, f"{path}.data.{seg}")
            pairs.append((seg, ip))
        cs_nodes.append(CsNode(name, str(next(mgmt_hosts)), tuple(pairs)))
    if len(cs_nodes) > 2:
        raise r.fail("cs", "at most two CS nodes (an active/standby pair)")

    gateways: dict[str, str] = {}
    dfs_on_segment: dict[str, list[tuple[str, str]]] = {}
    dfs_nodes: list[DfsNode] = []
    for i, raw in enumerate(r.tables(doc, "dfs", required=True)):
        path = f"dfs[{i}]"
        r.keys(raw, {"name", "interfaces", "routes", "timeouts", "limits"}, path)
        name = r.name(raw, path, names)
        intfs = raw.get("interfaces")
        if not isinstance(intfs, list) or not intfs:
            raise r.fail(f"{path}.interfaces", "expected a non-empty array of {segment, ipaddr} tables")
        ports = []
        for j, intf in enumerate(intfs):
            ipath = f"{path}.interfaces[{j}]"
            r.keys(r.table(intf, ipath), {"segment", "ipaddr"}, ipath)
            seg, ip = on_segment(intf.get("segment"), intf.get("ipaddr"), ipath)
            if any(p.segment == seg for p in ports):
                raise r.fail(ipath, f"{name} already has an interface on segment {seg!r}")
            claim(ip, ipath)
            gateways.setdefault(seg, ip)
            mac = f"02:5e:00:{i + 1:02x}:00:{j + 1:02x}"
            dfs_on_segment.setdefault(seg, []).append((mac, ip))
            ports.append(DfsPort(j + 1, seg, ip, mac))
        routes = []
        for j, rt in enumerate(r.tables(raw, "routes")):
            rpath = f"{path}.routes[{j}]"
            r.keys(rt, {"prefix", "via"}, rpath)
            routes.append(
                (str(r.network(rt.get("prefix"), f"{rpath}.prefix")), r.ipv4(rt.get("via"), f"{rpath}.via"))
            )
        dfs_nodes.append(
            DfsNode(
                name,
                i + 1,
                str(next(mgmt_hosts)),
                tuple(ports),
                tuple(routes),
                r.table(raw.get("timeouts", {}), f"{path}.timeouts"),
                r.table(raw.get("limits", {}), f"{path}.limits"),
            )
        )

    routers: list[Router] = []
    for i, raw in enumerate(r.tables(doc, "router")):
        path = f"router[{i}]"
        r.keys(raw, {"name", "interfaces", "routes", "l4_hash"}, path)
        name = r.name(raw, path, names)
        addrs = []
        for j, intf in enumerate(r.tables(raw, "interfaces", required=True)):
            ipath = f"{path}.interfaces[{j}]"
            r.keys(intf, {"segment", "ipaddr"}, ipath)
            seg, ip = on_segment(intf.get("segment"), intf.get("ipaddr"), ipath)
            claim(ip, ipath)
            addrs.append((seg, ip))
        rts = []
        for j, rt in enumerate(r.tables(raw, "routes")):
            rpath = f"{path}.routes[{j}]"
            r.keys(rt, {"prefix", "via"}, rpath)
            via = rt.get("via")
            vias = via if isinstance(via, list) else [via]
            rts.append(
                (
                    str(r.network(rt.get("prefix"), f"{rpath}.prefix")),
                    tuple(r.ipv4(v, f"{rpath}.via") for v in vias),
                )
            )
        l4 = raw.get("l4_hash", True)
        if not isinstance(l4, bool):
            raise r.fail(f"{path}.l4_hash", "expected true or false")
        routers.append(Router(name, tuple(addrs), tuple(rts), l4))

    def end_hosts(key: str, default_port: int) -> list[EndHost]:
        out = []
        for i, raw in enumerate(r.tables(doc, key, required=(key == "backend"))):
            path = f"{key}[{i}]"
            r.keys(raw, {"name", "segment", "ipaddr", "port", "gateway"}, path)
            name = r.name(raw, path, names)
            seg, ip = on_segment(raw.get("segment"), raw.get("ipaddr"), path)
            claim(ip, f"{path}.ipaddr")
            gw = raw.get("gateway")
            gateway = r.ipv4(gw, f"{path}.gateway") if gw is not None else gateways.get(seg)
            port = r.int(raw.get("port", default_port), f"{path}.port", 1, 65535) if default_port else 0
            several = dfs_on_segment.get(seg, [])
            out.append(EndHost(name, seg, ip, gateway, port, tuple(several) if len(several) > 1 else ()))
        return out

    backends = end_hosts("backend", 80)
    clients = end_hosts("client", 0)
    if not clients:
        raise r.fail("client", "at least one [[client]] is required")

    settings = r.table(doc.get("cs_settings", {}), "cs_settings")
    vss = r.tables(doc, "virtual_server", required=True)
    name_value = tb.get("name", Path(source).stem)
    if not isinstance(name_value, str):
        raise r.fail("testbed.name", "expected a string")
    return Spec(
        name=name_value,
        description=str(tb.get("description", "")),
        source=source,
        mgmt_subnet=mgmt,
        ovs_other_config=ovs_tuning,
        segments=tuple(segments),
        cs=tuple(cs_nodes),
        dfs=tuple(dfs_nodes),
        backends=tuple(backends),
        clients=tuple(clients),
        routers=tuple(routers),
        cs_settings=dict(settings),
        virtual_servers=tuple(vss),
    )
