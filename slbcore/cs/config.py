"""Control Segment configuration: TOML text in, validated frozen dataclasses out.

Every problem found is reported with the file name, the key path (``virtual_server[1].real_server[0].weight``)
and what is wrong; all problems of a file are collected so one edit cycle can fix them all. Unknown keys are
errors too, because a misspelt ``maintenance`` silently ignored is worse than a refused file.

Example (see ``topo/configs/example-cs.toml`` for a complete one)::

    [cs]
    csmb_port = 7701
    ssmb_port = 7700
    flow_idle_timeout = 60

    [[virtual_server]]
    name = "web"
    vip = "10.0.0.100"
    port = 80
    protocol = "tcp"
    flags = ["translate_addr"]
    method = "maglev"

    [[virtual_server.real_server]]
    name = "web1"
    address = "10.0.1.1"
"""

from __future__ import annotations

import ipaddress
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

__all__ = [
    "ConfigError",
    "ConfigProblem",
    "CsConfig",
    "CsSettings",
    "HealthCheckConfig",
    "Method",
    "PersistenceConfig",
    "RealServerConfig",
    "VirtualServerConfig",
    "VsKey",
    "load_config",
    "parse_config",
    "parse_config_text",
]

PROTOCOLS: dict[str, int] = {"tcp": 6, "udp": 17}
VS_CLASSES: dict[str, int] = {"cs_assist": 1, "dfs_assist": 2}
# Bit positions follow the CSMB VS flags (PROTOCOL.md); only per-VS flags are configurable.
VS_FLAG_BITS: dict[str, int] = {
    "translate_addr": 1 << 0,
    "translate_port": 1 << 1,
    "route_by_dst_ip": 1 << 2,
    "wildcard_addr": 1 << 4,
    "wildcard_port": 1 << 5,
    "noarp": 1 << 6,
}
FLAG_TRANSLATE_ADDR = VS_FLAG_BITS["translate_addr"]
FLAG_TRANSLATE_PORT = VS_FLAG_BITS["translate_port"]
FLAG_ROUTE_BY_DST_IP = VS_FLAG_BITS["route_by_dst_ip"]
FLAG_WILDCARD_ADDR = VS_FLAG_BITS["wildcard_addr"]
FLAG_WILDCARD_PORT = VS_FLAG_BITS["wildcard_port"]

MAX_U16 = 0xFFFF
MAX_U32 = 0xFFFFFFFF

# (virt_ipaddr, virt_port, proto): the identity of a virtual server on the wire.
VsKey = tuple[str, int, int]


class Method(StrEnum):
    """Server selection method of a virtual server."""

    ROUND_ROBIN = "round_robin"
    WEIGHTED_ROUND_ROBIN = "weighted_round_robin"
    LEAST_CONNECTIONS = "least_connections"
    SOURCE_HASH = "source_hash"
    MAGLEV = "maglev"


@dataclass(frozen=True, slots=True)
class ConfigProblem:
    """One thing wrong with a configuration file."""

    source: str
    key: str
    problem: str

    def __str__(self) -> str:
        return f"{self.source}: {self.key}: {self.problem}"


class ConfigError(Exception):
    """A configuration was refused; ``problems`` lists every reason (file, key path, problem)."""

    def __init__(self, problems: list[ConfigProblem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems) or "invalid configuration")


@dataclass(frozen=True, slots=True)
class HealthCheckConfig:
    """How to probe each real server of a virtual server."""

    kind: str = "tcp"  # "tcp" (connect) or "http" (GET path, expect status)
    path: str = "/"
    expect_status: int = 200
    interval: float = 2.0
    timeout: float = 1.0
    rise: int = 2
    fall: int = 3
    initial_state: str = "up"  # "up": serve at once; "down": wait for `rise` successes


@dataclass(frozen=True, slots=True)
class PersistenceConfig:
    """Source-IP persistence: a client keeps its real server while it has flows and ``timeout`` after."""

    timeout: float = 300.0
    # Virtual ports of the same address for which the CS prepares a persistent client's related flows
    # with NEWFLOW (e.g. an FTP-style data port); empty disables NEWFLOW.
    prepare_ports: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class RealServerConfig:
    """One real server of a pool."""

    name: str
    address: str
    port: int = 0  # 0: keep the client's destination port
    weight: int = 1
    next_hop: str | None = None
    drain: bool = False
    disabled: bool = False


@dataclass(frozen=True, slots=True)
class VirtualServerConfig:
    """One virtual server and its pool."""

    name: str
    vip: str
    port: int
    proto: int
    vs_class: int = VS_CLASSES["cs_assist"]
    flags: int = FLAG_TRANSLATE_ADDR
    method: Method = Method.ROUND_ROBIN
    persistence: PersistenceConfig | None = None
    connection_limit: int = 0  # 0: unlimited
    maintenance: bool = False
    health_check: HealthCheckConfig | None = None
    maglev_table_size: int = 65537
    real_servers: tuple[RealServerConfig, ...] = ()

    @property
    def key(self) -> VsKey:
        """Wire identity (virt_ipaddr, virt_port, proto)."""
        return (self.vip, self.port, self.proto)

    @property
    def protocol_name(self) -> str:
        """``tcp`` or ``udp``."""
        return {v: k for k, v in PROTOCOLS.items()}[self.proto]


@dataclass(frozen=True, slots=True)
class CsSettings:
    """Daemon-wide settings (the ``[cs]`` table)."""

    csmb_listen: str = "0.0.0.0"
    csmb_port: int = 7701
    ssmb_listen: str = "0.0.0.0"
    ssmb_port: int = 7700
    # Address announced in HELLO as ssmb_active_ipaddr; None: the local address of each CSMB connection.
    ssmb_advertise: str | None = None
    status_listen: str = "127.0.0.1"
    status_port: int = 7780
    # The other CS of an active/standby pair: state-shared messages are copied to it, and a DFS that
    # loses this CS turns to it. ``role = "standby"``: start as the standby, replicating the active's
    # flows from those copies and answering nothing, until a DFS connects (takeover).
    standby: str | None = None
    role: str = "active"
    flow_idle_timeout: float = 60.0
    reap_interval: float = 1.0
    reap_response_timeout: float = 5.0
    reap_retries: int = 3
    max_flows: int = 100_000
    max_persistence: int = 100_000
    query_rate: float = 10_000.0  # QUERYs per second per DFS; 0 disables the limit
    query_burst: int = 2_000
    batch_delay: float = 0.010


@dataclass(frozen=True, slots=True)
class CsConfig:
    """A whole validated configuration."""

    source: str
    settings: CsSettings = field(default_factory=CsSettings)
    virtual_servers: tuple[VirtualServerConfig, ...] = ()

    def vs_by_name(self, name: str) -> VirtualServerConfig | None:
        """The virtual server called ``name``, if any."""
        for vs in self.virtual_servers:
            if vs.name == name:
                return vs
        return None


T = TypeVar("T")


class _Reader:
    """Collects problems while walking the parsed TOML tree."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.problems: list[ConfigProblem] = []

    def problem(self, key: str, text: str) -> None:
        self.problems.append(ConfigProblem(self.source, key, text))

    def check_keys(self, table: Mapping[str, Any], allowed: set[str], path: str) -> None:
        for name in table:
            if name not in allowed:
                where = f"{path}.{name}" if path else name
                self.problem(where, f"unknown key (allowed: {', '.join(sorted(allowed))})")

    def get(
        self,
        table: Mapping[str, Any],
        name: str,
        path: str,
        kind: type[T] | tuple[type, ...],
        default: T,
        check: Callable[[Any], str | None] | None = None,
        required: bool = False,
    ) -> T:
        key = f"{path}.{name}" if path else name
        if name not in table:
            if required:
                self.problem(key, "missing required key")
            return default
        value = table[name]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        # bool is an int subclass; a number key given `true` is a mistake, not 1.
        if isinstance(value, bool) and bool not in kinds:
            self.problem(key, f"expected {_kind_name(kinds)}, got a boolean")
            return default
        if float in kinds and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kinds):
            self.problem(key, f"expected {_kind_name(kinds)}, got {type(value).__name__} {value!r}")
            return default
        if check is not None:
            err = check(value)
            if err:
                self.problem(key, err)
                return default
        return value  # type: ignore[return-value]


def _kind_name(kinds: tuple[type, ...]) -> str:
    names = {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "an array",
        dict: "a table",
    }
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def _ipv4(value: str) -> str | None:
    try:
        ipaddress.IPv4Address(value)
    except ValueError:
        return f"{value!r} is not an IPv4 address"
    return None


def _port(allow_zero: bool) -> Callable[[int], str | None]:
    low = 0 if allow_zero else 1

    def check(value: int) -> str | None:
        if not low <= value <= MAX_U16:
            return f"{value} is out of range {low}..{MAX_U16}"
        return None

    return check


def _range(low: float, high: float) -> Callable[[float], str | None]:
    def check(value: float) -> str | None:
        if not low <= value <= high:
            return f"{value} is out of range {low:g}..{high:g}"
        return None

    return check


def _positive(value: float) -> str | None:
    return None if value > 0 else f"{value} must be greater than 0"


def _nonempty(value: str) -> str | None:
    if not value.strip():
        return "must not be empty"
    if "/" in value or any(c.isspace() for c in value):
        return f"{value!r} must not contain '/' or whitespace"
    return None


def _is_prime(n: int) -> bool:
    if n < 2:
        return False
    i = 2
    while i * i <= n:
        if n % i == 0:
            return False
        i += 1
    return True


def _settings(r: _Reader, table: Any) -> CsSettings:
    d = CsSettings()
    if table is None:
        return d
    if not isinstance(table, dict):
        r.problem("cs", "expected a table")
        return d
    allowed = set(CsSettings.__slots__)
    r.check_keys(table, allowed, "cs")
    p = "cs"

    def role_ok(v: str) -> str | None:
        return None if v in ("active", "standby") else f"{v!r} is not one of: active, standby"

    role = r.get(table, "role", p, str, d.role, role_ok)
    if role == "standby" and table.get("standby") is None:
        r.problem("cs.standby", 'role = "standby" needs the address of the active CS here')
    return CsSettings(
        role=role,
        csmb_listen=r.get(table, "csmb_listen", p, str, d.csmb_listen, _ipv4),
        csmb_port=r.get(table, "csmb_port", p, int, d.csmb_port, _port(True)),
        ssmb_listen=r.get(table, "ssmb_listen", p, str, d.ssmb_listen, _ipv4),
        ssmb_port=r.get(table, "ssmb_port", p, int, d.ssmb_port, _port(True)),
        ssmb_advertise=r.get(table, "ssmb_advertise", p, str, None, _ipv4),
        status_listen=r.get(table, "status_listen", p, str, d.status_listen, _ipv4),
        status_port=r.get(table, "status_port", p, int, d.status_port, _port(True)),
        standby=r.get(table, "standby", p, str, None, _ipv4),
        flow_idle_timeout=r.get(
            table, "flow_idle_timeout", p, float, d.flow_idle_timeout, _range(0.01, 86400 * 7)
        ),
        reap_interval=r.get(table, "reap_interval", p, float, d.reap_interval, _range(0.001, 3600)),
        reap_response_timeout=r.get(
            table, "reap_response_timeout", p, float, d.reap_response_timeout, _range(0.01, 3600)
        ),
        reap_retries=r.get(table, "reap_retries", p, int, d.reap_retries, _range(1, 100)),
        max_flows=r.get(table, "max_flows", p, int, d.max_flows, _range(1, 50_000_000)),
        max_persistence=r.get(table, "max_persistence", p, int, d.max_persistence, _range(1, 50_000_000)),
        query_rate=r.get(table, "query_rate", p, float, d.query_rate, _range(0, 1e9)),
        query_burst=r.get(table, "query_burst", p, int, d.query_burst, _range(1, 1_000_000_000)),
        batch_delay=r.get(table, "batch_delay", p, float, d.batch_delay, _range(0, 1.0)),
    )


def _health(r: _Reader, table: Any, path: str) -> HealthCheckConfig | None:
    if table is None:
        return None
    if not isinstance(table, dict):
        r.problem(path, "expected a table")
        return None
    d = HealthCheckConfig()
    r.check_keys(
        table, {"type", "path", "expect_status", "interval", "timeout", "rise", "fall", "initial_state"}, path
    )

    def kind_ok(v: str) -> str | None:
        return None if v in ("tcp", "http") else f"{v!r} is not one of: tcp, http"

    def path_ok(v: str) -> str | None:
        if not v.startswith("/") or any(c in v for c in "\r\n ") or len(v) > 1024:
            return (
                f"{v!r} must start with '/', contain no spaces or line breaks, and be at most 1024 characters"
            )
        return None

    def state_ok(v: str) -> str | None:
        return None if v in ("up", "down") else f"{v!r} is not one of: up, down"

    hc = HealthCheckConfig(
        kind=r.get(table, "type", path, str, d.kind, kind_ok),
        path=r.get(table, "path", path, str, d.path, path_ok),
        expect_status=r.get(table, "expect_status", path, int, d.expect_status, _range(100, 599)),
        interval=r.get(table, "interval", path, float, d.interval, _range(0.01, 3600)),
        timeout=r.get(table, "timeout", path, float, d.timeout, _range(0.01, 3600)),
        rise=r.get(table, "rise", path, int, d.rise, _range(1, 100)),
        fall=r.get(table, "fall", path, int, d.fall, _range(1, 100)),
        initial_state=r.get(table, "initial_state", path, str, d.initial_state, state_ok),
    )
    if hc.timeout > hc.interval:
        r.problem(f"{path}.timeout", f"{hc.timeout:g} must not exceed interval {hc.interval:g}")
    return hc


def _persistence(r: _Reader, table: Any, path: str) -> PersistenceConfig | None:
    if table is None:
        return None
    if not isinstance(table, dict):
        r.problem(path, "expected a table")
        return None
    r.check_keys(table, {"type", "timeout", "prepare_ports"}, path)

    def type_ok(v: str) -> str | None:
        return None if v == "source_ip" else f"{v!r} is not supported (only: source_ip)"

    r.get(table, "type", path, str, "source_ip", type_ok)
    timeout = r.get(table, "timeout", path, float, 300.0, _range(0.001, 86400 * 7))
    ports_raw = r.get(table, "prepare_ports", path, list, [])
    ports: list[int] = []
    for i, port in enumerate(ports_raw):
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= MAX_U16:
            r.problem(f"{path}.prepare_ports[{i}]", f"{port!r} is not a port number 1..{MAX_U16}")
        else:
            ports.append(port)
    return PersistenceConfig(timeout=timeout, prepare_ports=tuple(ports))


def _real_server(r: _Reader, table: Any, path: str) -> RealServerConfig | None:
    if not isinstance(table, dict):
        r.problem(path, "expected a table")
        return None
    r.check_keys(table, {"name", "address", "port", "weight", "next_hop", "drain", "disabled"}, path)
    before = len(r.problems)
    rs = RealServerConfig(
        name=r.get(table, "name", path, str, "", _nonempty, required=True),
        address=r.get(table, "address", path, str, "0.0.0.0", _ipv4, required=True),
        port=r.get(table, "port", path, int, 0, _port(True)),
        weight=r.get(table, "weight", path, int, 1, _range(0, MAX_U16)),
        next_hop=r.get(table, "next_hop", path, str, None, _ipv4),
        drain=r.get(table, "drain", path, bool, False),
        disabled=r.get(table, "disabled", path, bool, False),
    )
    return rs if len(r.problems) == before else None


def _flags(r: _Reader, value: Any, path: str) -> int:
    if value is None:
        return FLAG_TRANSLATE_ADDR
    if not isinstance(value, list):
        r.problem(path, f"expected an array of flag names, got {type(value).__name__}")
        return 0
    bits = 0
    for i, name in enumerate(value):
        if not isinstance(name, str) or name not in VS_FLAG_BITS:
            r.problem(f"{path}[{i}]", f"{name!r} is not one of: {', '.join(VS_FLAG_BITS)}")
            continue
        bits |= VS_FLAG_BITS[name]
    return bits


def _virtual_server(r: _Reader, table: Any, path: str) -> VirtualServerConfig | None:
    if not isinstance(table, dict):
        r.problem(path, "expected a table")
        return None
    r.check_keys(
        table,
        {
            "name",
            "vip",
            "port",
            "protocol",
            "vs_class",
            "flags",
            "method",
            "persistence",
            "connection_limit",
            "maintenance",
            "health_check",
            "maglev_table_size",
            "real_server",
        },
        path,
    )
    before = len(r.problems)

    def one_of(choices: Mapping[str, object]) -> Callable[[str], str | None]:
        def check(v: str) -> str | None:
            return None if v in choices else f"{v!r} is not one of: {', '.join(choices)}"

        return check

    methods = {m.value: m for m in Method}
    flags = _flags(r, table.get("flags"), f"{path}.flags")
    name = r.get(table, "name", path, str, "", _nonempty, required=True)
    wildcard_addr = bool(flags & FLAG_WILDCARD_ADDR)
    wildcard_port = bool(flags & FLAG_WILDCARD_PORT)
    vip = r.get(table, "vip", path, str, "0.0.0.0", _ipv4, required=not wildcard_addr)
    port = r.get(table, "port", path, int, 0, _port(wildcard_port), required=not wildcard_port)
    if wildcard_addr:
        vip = "0.0.0.0"  # ignored on the wire; normalised so two wildcard VSs compare equal
    if wildcard_port:
        port = 0
    protocol = r.get(table, "protocol", path, str, "tcp", one_of(PROTOCOLS))
    vs_class = r.get(table, "vs_class", path, str, "cs_assist", one_of(VS_CLASSES))
    method = r.get(table, "method", path, str, "round_robin", one_of(methods))
    table_size = r.get(table, "maglev_table_size", path, int, 65537, _range(7, 1_000_003))
    if table_size >= 7 and not _is_prime(table_size):
        r.problem(f"{path}.maglev_table_size", f"{table_size} is not a prime number")

    servers_raw = table.get("real_server", [])
    servers: list[RealServerConfig] = []
    if not isinstance(servers_raw, list):
        r.problem(f"{path}.real_server", "expected an array of tables ([[virtual_server.real_server]])")
        servers_raw = []
    seen: dict[str, int] = {}
    for i, raw in enumerate(servers_raw):
        rs_path = f"{path}.real_server[{i}]"
        rs = _real_server(r, raw, rs_path)
        if rs is None:
            continue
        if rs.name in seen:
            r.problem(
                f"{rs_path}.name",
                f"duplicate real server name {rs.name!r} (also real_server[{seen[rs.name]}])",
            )
            continue
        seen[rs.name] = i
        servers.append(rs)
    if vs_class == "dfs_assist" and len(servers) * 8 > 8192:
        r.problem(
            f"{path}.real_server", f"{len(servers)} servers do not fit a DFS_ASSIST pool (at most 1024)"
        )

    vs = VirtualServerConfig(
        name=name,
        vip=vip,
        port=port,
        proto=PROTOCOLS.get(protocol, 6),
        vs_class=VS_CLASSES.get(vs_class, 1),
        flags=flags,
        method=methods.get(method, Method.ROUND_ROBIN),
        persistence=_persistence(r, table.get("persistence"), f"{path}.persistence"),
        connection_limit=r.get(table, "connection_limit", path, int, 0, _range(0, MAX_U32)),
        maintenance=r.get(table, "maintenance", path, bool, False),
        health_check=_health(r, table.get("health_check"), f"{path}.health_check"),
        maglev_table_size=table_size,
        real_servers=tuple(servers),
    )
    return vs if len(r.problems) == before else None


def parse_config(data: Mapping[str, Any], source: str = "<config>") -> CsConfig:
    """Validate an already parsed TOML document; raise ``ConfigError`` listing every problem."""
    r = _Reader(source)
    r.check_keys(data, {"cs", "virtual_server"}, "")
    settings = _settings(r, data.get("cs"))
    vs_raw = data.get("virtual_server", [])
    if not isinstance(vs_raw, list):
        r.problem("virtual_server", "expected an array of tables ([[virtual_server]])")
        vs_raw = []
    servers: list[VirtualServerConfig] = []
    names: dict[str, int] = {}
    keys: dict[VsKey, int] = {}
    for i, raw in enumerate(vs_raw):
        path = f"virtual_server[{i}]"
        vs = _virtual_server(r, raw, path)
        if vs is None:
            continue
        if vs.name in names:
            r.problem(
                f"{path}.name",
                f"duplicate virtual server name {vs.name!r} (also virtual_server[{names[vs.name]}])",
            )
            continue
        if vs.key in keys:
            r.problem(
                path,
                f"{vs.protocol_name} {vs.vip}:{vs.port} is already defined by virtual_server[{keys[vs.key]}]",
            )
            continue
        names[vs.name] = i
        keys[vs.key] = i
        servers.append(vs)
    if r.problems:
        raise ConfigError(r.problems)
    return CsConfig(source=source, settings=settings, virtual_servers=tuple(servers))


def parse_config_text(text: str, source: str = "<config>") -> CsConfig:
    """Parse and validate TOML text."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([ConfigProblem(source, "(syntax)", str(exc))]) from exc
    return parse_config(data, source)


def load_config(path: str | Path) -> CsConfig:
    """Read, parse and validate a configuration file."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([ConfigProblem(source, "(file)", f"cannot read: {exc}")]) from exc
    return parse_config_text(text, source)
