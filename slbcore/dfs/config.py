"""DFS configuration: router interfaces, static routes, timeouts and limits, read from TOML.

The configuration is a plain frozen value; :func:`parse_config` checks every field and raises
:class:`ConfigError` naming the offending key, so a bad file stops the daemon before it touches
the switch or the buses.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")


# The project's port family: 7700 SSMB, 7701 CSMB, 7780 CS status, 7790 DFS status.
DEFAULT_STATUS_PORT = 7790


class ConfigError(ValueError):
    """The DFS configuration is malformed; the message names the key."""


@dataclass(frozen=True)
class Interface:
    """One router interface: the switch port, the address the DFS owns on it, and its MAC."""

    port: int
    ipaddr: str
    prefixlen: int
    mac: str
    name: str = ""

    @functools.cached_property
    def network(self) -> ipaddress.IPv4Network:
        """The connected subnet of this interface (computed once: every new flow asks)."""
        return ipaddress.IPv4Network(f"{self.ipaddr}/{self.prefixlen}", strict=False)


@dataclass(frozen=True)
class Route:
    """A static route: destinations in ``prefix`` go via the gateway ``via``."""

    prefix: str
    via: str


@dataclass(frozen=True)
class RouteResult:
    """Where a destination goes: out of ``interface`` toward the neighbour ``next_hop``."""

    interface: Interface
    next_hop: str


@dataclass(frozen=True)
class Timeouts:
    """Timers of the flow offload, in seconds."""

    idle: int = 30
    fin_idle: int = 2
    fin_hard: int = 0
    query: float = 0.25
    query_retries: int = 3
    arp: float = 0.5
    arp_retries: int = 3
    partner: float = 3.0
    neighbour: float = 300.0


@dataclass(frozen=True)
class Limits:
    """Bounds that keep a flood of new flows from exhausting memory or the flow table."""

    max_flows: int = 50000
    max_pending: int = 4096
    held_per_flow: int = 8
    held_total: int = 2048


@dataclass(frozen=True)
class Routing:
    """How the DFS treats traffic that is for no virtual server: as an IPv4 router would.

    ``forward`` turns routing on (off: such traffic is dropped by the table-miss entry).
    ``route_idle`` is the idle timeout of the per-destination forwarding entries, ``max_routes``
    bounds how many of them the DFS tracks. ``kernel_routes`` makes the daemon also read the
    routes of its own network namespace (every ``kernel_refresh`` seconds, from routing table
    ``kernel_table``); a kernel route is used when its gateway sits on a router interface's subnet.
    """

    forward: bool = True
    route_idle: int = 60
    max_routes: int = 65536
    kernel_routes: bool = False
    kernel_refresh: float = 5.0
    kernel_table: int = 254


RouteLookup = Callable[[str], RouteResult | None]


@dataclass(frozen=True)
class DfsConfig:
    """Everything the DFS needs to know about itself, its switch and its CS."""

    name: str
    switch: str
    mgmt_ipaddr: str
    interfaces: tuple[Interface, ...]
    routes: tuple[Route, ...] = ()
    ssmb_port: int = 7700
    cs_ipaddr: str = "127.0.0.1"
    # The standby CS of an active/standby pair, tried when the CS is lost (a CS also names its
    # standby in HELLO); None: only what HELLO said.
    cs_standby_ipaddr: str | None = None
    cs_csmb_port: int = 7701
    cs_ssmb_port: int = 7700
    openflow_port: int = 6653
    unix_socket: str = ""
    status_port: int = DEFAULT_STATUS_PORT  # 0: any free port (printed in the READY line)
    timeouts: Timeouts = field(default_factory=Timeouts)
    limits: Limits = field(default_factory=Limits)
    routing: Routing = field(default_factory=Routing)

    def interface_for_port(self, port: int) -> Interface | None:
        """The interface configured on switch ``port``, if any."""
        for intf in self.interfaces:
            if intf.port == port:
                return intf
        return None

    def owns_address(self, ipaddr: str) -> Interface | None:
        """The interface whose own address is ``ipaddr``, if any."""
        for intf in self.interfaces:
            if intf.ipaddr == ipaddr:
                return intf
        return None

    def connected(self, ipaddr: str) -> Interface | None:
        """The interface whose subnet holds ``ipaddr`` (longest prefix), if any."""
        addr = ipaddress.IPv4Address(ipaddr)
        best: Interface | None = None
        for intf in self.interfaces:
            if addr in intf.network and (best is None or intf.prefixlen > best.prefixlen):
                best = intf
        return best

    def route(self, dst: str) -> RouteResult | None:
        """Longest-prefix route lookup over connected subnets and static routes."""
        return RouteTable(self.interfaces, self.routes).lookup(dst)


class RouteTable:
    """Connected subnets, static routes and routes from elsewhere (the kernel), longest prefix wins.

    On equal prefixes a connected subnet beats a route, and a configured static route beats an
    extra (kernel) one. A route whose gateway is on no router interface's subnet is unusable and
    ignored. :meth:`lookup` is what :class:`~slbcore.dfs.engine.DfsEngine` takes as its route
    lookup function.
    """

    def __init__(
        self, interfaces: tuple[Interface, ...], routes: tuple[Route, ...], extra: tuple[Route, ...] = ()
    ) -> None:
        self.interfaces = interfaces
        self.routes = routes
        self.extra = extra
        # (prefixlen, rank, network, interface, gateway or None); sorted most specific first
        entries: list[tuple[int, int, ipaddress.IPv4Network, Interface, str | None]] = []
        for intf in interfaces:
            entries.append((intf.prefixlen, 0, intf.network, intf, None))
        for rank, table in ((1, routes), (2, extra)):
            for rt in table:
                gw_intf = self._connected(rt.via)
                if gw_intf is None:
                    continue
                net = ipaddress.IPv4Network(rt.prefix)
                entries.append((net.prefixlen, rank, net, gw_intf, rt.via))
        entries.sort(key=lambda e: (-e[0], e[1]))
        self._entries = entries

    def _connected(self, ipaddr: str) -> Interface | None:
        addr = ipaddress.IPv4Address(ipaddr)
        best: Interface | None = None
        for intf in self.interfaces:
            if addr in intf.network and (best is None or intf.prefixlen > best.prefixlen):
                best = intf
        return best

    def lookup(self, dst: str) -> RouteResult | None:
        """Where ``dst`` goes: the outgoing interface and the next hop, or None (no route)."""
        addr = ipaddress.IPv4Address(dst)
        for _, _, net, intf, via in self._entries:
            if addr in net:
                return RouteResult(intf, via if via is not None else dst)
        return None

    def with_extra(self, extra: tuple[Route, ...]) -> RouteTable:
        """The same table with ``extra`` as its kernel routes."""
        return RouteTable(self.interfaces, self.routes, extra)


def _ipv4(value: Any, key: str) -> str:
    try:
        return str(ipaddress.IPv4Address(value))
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{key}: not an IPv4 address: {value!r}") from exc


def _int(value: Any, key: str, lo: int, hi: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise ConfigError(f"{key}: expected an integer in {lo}..{hi}, got {value!r}")
    return value


def _num(value: Any, key: str, lo: float, hi: float) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool) or not lo <= value <= hi:
        raise ConfigError(f"{key}: expected a number in {lo}..{hi}, got {value!r}")
    return float(value)


def _table(data: dict[str, Any], key: str) -> dict[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise ConfigError(f"[{key}]: expected a table")
    return value


def _check_keys(table: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = set(table) - allowed
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}")


def _interface(raw: Any, idx: int) -> Interface:
    where = f"interface[{idx}]"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a table")
    _check_keys(raw, {"port", "ipaddr", "mac", "name"}, where)
    port = _int(raw.get("port"), f"{where}.port", 1, 0xFFFFFF00)
    cidr = raw.get("ipaddr")
    try:
        iface = ipaddress.IPv4Interface(cidr)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{where}.ipaddr: expected address/prefix, got {cidr!r}") from exc
    mac = str(raw.get("mac", "")).lower()
    if not _MAC_RE.match(mac):
        raise ConfigError(f"{where}.mac: expected xx:xx:xx:xx:xx:xx, got {raw.get('mac')!r}")
    if int(mac[:2], 16) & 1:
        raise ConfigError(f"{where}.mac: multicast address {mac}")
    name = raw.get("name", f"port{port}")
    if not isinstance(name, str):
        raise ConfigError(f"{where}.name: expected a string")
    return Interface(port, str(iface.ip), iface.network.prefixlen, mac, name)


def _route(raw: Any, idx: int) -> Route:
    where = f"route[{idx}]"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a table")
    _check_keys(raw, {"prefix", "via"}, where)
    try:
        prefix = str(ipaddress.IPv4Network(raw.get("prefix")))
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{where}.prefix: expected a network, got {raw.get('prefix')!r}") from exc
    return Route(prefix, _ipv4(raw.get("via"), f"{where}.via"))


def parse_config(data: dict[str, Any]) -> DfsConfig:
    """Build a :class:`DfsConfig` from a parsed TOML document, checking every field."""
    _check_keys(
        data,
        {"dfs", "cs", "openflow", "status", "interface", "route", "timeouts", "limits", "routing"},
        "top level",
    )
    dfs = _table(data, "dfs")
    _check_keys(dfs, {"name", "switch", "mgmt_ipaddr", "ssmb_port"}, "[dfs]")
    cs = _table(data, "cs")
    _check_keys(cs, {"ipaddr", "standby_ipaddr", "csmb_port", "ssmb_port"}, "[cs]")
    of = _table(data, "openflow")
    _check_keys(of, {"listen_port", "unix_socket"}, "[openflow]")
    unix_socket = of.get("unix_socket", "")
    if not isinstance(unix_socket, str):
        raise ConfigError("openflow.unix_socket: expected a path")
    st = _table(data, "status")
    _check_keys(st, {"port"}, "[status]")
    for key in ("name", "switch"):
        if not isinstance(dfs.get(key), str) or not dfs[key]:
            raise ConfigError(f"dfs.{key}: expected a non-empty string")
    raw_intfs = data.get("interface", [])
    if not isinstance(raw_intfs, list) or not raw_intfs:
        raise ConfigError("[[interface]]: at least one router interface is required")
    interfaces = tuple(_interface(raw, i) for i, raw in enumerate(raw_intfs))
    ports = [i.port for i in interfaces]
    if len(set(ports)) != len(ports):
        raise ConfigError("[[interface]]: a switch port is listed twice")
    raw_routes = data.get("route", [])
    if not isinstance(raw_routes, list):
        raise ConfigError("[[route]]: expected an array of tables")
    routes = tuple(_route(raw, i) for i, raw in enumerate(raw_routes))

    tt = _table(data, "timeouts")
    defaults = Timeouts()
    _check_keys(tt, set(Timeouts.__dataclass_fields__), "[timeouts]")
    timeouts = Timeouts(
        idle=_int(tt.get("idle", defaults.idle), "timeouts.idle", 1, 65535),
        fin_idle=_int(tt.get("fin_idle", defaults.fin_idle), "timeouts.fin_idle", 0, 65535),
        fin_hard=_int(tt.get("fin_hard", defaults.fin_hard), "timeouts.fin_hard", 0, 65535),
        query=_num(tt.get("query", defaults.query), "timeouts.query", 0.001, 60),
        query_retries=_int(tt.get("query_retries", defaults.query_retries), "timeouts.query_retries", 0, 20),
        arp=_num(tt.get("arp", defaults.arp), "timeouts.arp", 0.01, 60),
        arp_retries=_int(tt.get("arp_retries", defaults.arp_retries), "timeouts.arp_retries", 0, 20),
        partner=_num(tt.get("partner", defaults.partner), "timeouts.partner", 0.1, 600),
        neighbour=_num(tt.get("neighbour", defaults.neighbour), "timeouts.neighbour", 1, 86400),
    )
    lt = _table(data, "limits")
    ldef = Limits()
    _check_keys(lt, set(Limits.__dataclass_fields__), "[limits]")
    limits = Limits(
        max_flows=_int(lt.get("max_flows", ldef.max_flows), "limits.max_flows", 1, 10_000_000),
        max_pending=_int(lt.get("max_pending", ldef.max_pending), "limits.max_pending", 1, 1_000_000),
        held_per_flow=_int(lt.get("held_per_flow", ldef.held_per_flow), "limits.held_per_flow", 1, 1024),
        held_total=_int(lt.get("held_total", ldef.held_total), "limits.held_total", 1, 1_000_000),
    )
    rt = _table(data, "routing")
    rdef = Routing()
    _check_keys(rt, set(Routing.__dataclass_fields__), "[routing]")
    for key in ("forward", "kernel_routes"):
        if not isinstance(rt.get(key, False), bool):
            raise ConfigError(f"routing.{key}: expected true or false")
    routing = Routing(
        forward=rt.get("forward", rdef.forward),
        route_idle=_int(rt.get("route_idle", rdef.route_idle), "routing.route_idle", 1, 65535),
        max_routes=_int(rt.get("max_routes", rdef.max_routes), "routing.max_routes", 1, 10_000_000),
        kernel_routes=rt.get("kernel_routes", rdef.kernel_routes),
        kernel_refresh=_num(
            rt.get("kernel_refresh", rdef.kernel_refresh), "routing.kernel_refresh", 0.1, 3600
        ),
        kernel_table=_int(rt.get("kernel_table", rdef.kernel_table), "routing.kernel_table", 1, 0xFFFFFFFF),
    )
    return DfsConfig(
        name=dfs["name"],
        switch=dfs["switch"],
        mgmt_ipaddr=_ipv4(dfs.get("mgmt_ipaddr", "127.0.0.1"), "dfs.mgmt_ipaddr"),
        ssmb_port=_int(dfs.get("ssmb_port", 7700), "dfs.ssmb_port", 0, 65535),
        interfaces=interfaces,
        routes=routes,
        cs_ipaddr=_ipv4(cs.get("ipaddr", "127.0.0.1"), "cs.ipaddr"),
        cs_standby_ipaddr=(
            _ipv4(cs["standby_ipaddr"], "cs.standby_ipaddr") if "standby_ipaddr" in cs else None
        ),
        cs_csmb_port=_int(cs.get("csmb_port", 7701), "cs.csmb_port", 1, 65535),
        cs_ssmb_port=_int(cs.get("ssmb_port", 7700), "cs.ssmb_port", 1, 65535),
        openflow_port=_int(of.get("listen_port", 6653), "openflow.listen_port", 1, 65535),
        unix_socket=unix_socket,
        status_port=_int(st.get("port", DEFAULT_STATUS_PORT), "status.port", 0, 65535),
        timeouts=timeouts,
        limits=limits,
        routing=routing,
    )


def load_config(path: str | Path) -> DfsConfig:
    """Read and check a DFS TOML configuration file."""
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror}") from exc
    return parse_config(data)
