"""Mininet node types that run this project's real daemons as separate processes.

Each node type follows one lifecycle: write its config -> check it -> start the daemon in the
node's namespace -> wait until it says READY (deadline) -> ... -> stop it (terminate, wait, kill,
by pid). Logs go to one file per node in the lab's log directory; :meth:`SlbNode.log_text`
returns them so a failing test can show what each daemon said.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from nodes.daemon import Daemon, DaemonError
from nodes.net import OffloadFreeHost
from topo.tomlout import dumps

PY = sys.executable


def return_routing(node: Any, gateways: tuple[tuple[str, str], ...]) -> None:
    """Send each connection's replies back through the DFS that delivered it.

    With several DFSs on one segment (ECMP in front of them), a server's default route would
    send every reply to one DFS, which holds no state for the other DFS's flows. Real
    deployments solve this with connection-marking on the source MAC; so do we: conntrack marks
    a new inbound connection with the index of the DFS MAC it came from, and a policy route per
    mark sends the replies to that DFS.
    """
    marks = " ".join(
        f"ct state new ether saddr {mac} ct mark set {i + 1};" for i, (mac, _ip) in enumerate(gateways)
    )
    rules = (
        "table ip slbreturn {\n"
        f"  chain pre {{ type filter hook prerouting priority mangle; {marks} }}\n"
        "  chain out { type route hook output priority mangle; meta mark set ct mark; }\n"
        "}\n"
    )
    node.cmd(f"printf %s {shlex.quote(rules)} | nft -f -")
    for i, (_mac, ip) in enumerate(gateways):
        node.cmd(f"ip rule add fwmark {i + 1} table {101 + i}")
        node.cmd(f"ip route replace default via {ip} table {101 + i}")


class SlbNode(OffloadFreeHost):
    """A host that runs daemons of ours; they are stopped when the node is."""

    def config(self, **params: Any) -> Any:
        """Configure as Mininet does, plus per-DFS return routing where a segment has several DFSs."""
        result = super().config(**params)
        if params.get("return_gateways"):
            return_routing(self, params["return_gateways"])
        return result

    def __init__(self, name: str, **params: Any) -> None:
        super().__init__(name, **params)
        self.daemons: list[Daemon] = []
        self.run_dir: Path | None = None

    def start_daemon(
        self,
        label: str,
        argv: list[str],
        run_dir: Path,
        remember: Any = None,
        timeout: float = 20.0,
        ready_pattern: str = r"^.*READY\b",
    ) -> Daemon:
        """Start ``argv`` in this node's namespace and wait for its ready line."""
        self.run_dir = run_dir
        d = Daemon(
            f"{self.name}/{label}",
            argv,
            run_dir / f"{self.name}-{label}.log",
            ready_pattern,
            node=self,
            on_start=remember,
        )
        self.daemons.append(d)
        d.start(timeout=timeout)
        return d

    def write_config(self, config: dict[str, Any], run_dir: Path, check_argv: list[str]) -> Path:
        """Write ``config`` as TOML and run the daemon's own check on it (``check_argv`` + path)."""
        self.config_path = run_dir / f"{self.name}.toml"
        self.config_path.write_text(dumps(config))
        check = subprocess.run([*check_argv, str(self.config_path)], capture_output=True, text=True)
        if check.returncode != 0:
            raise DaemonError(f"{self.name}: configuration refused:\n{check.stdout}{check.stderr}")
        return self.config_path

    def stop_daemons(self) -> None:
        """Stop every daemon of this node, newest first."""
        for d in reversed(self.daemons):
            d.stop()

    def log_text(self) -> str:
        """All daemon logs of this node, labelled."""
        return "".join(f"----- {d.name} ({d.log_path})\n{d.log_text()}" for d in self.daemons)

    def terminate(self) -> None:
        """Stop our daemons before Mininet kills the node's shell."""
        self.stop_daemons()
        super().terminate()

    def get_json(self, port: int, path: str, method: str = "GET", timeout: float = 5.0) -> Any:
        """Fetch a JSON document from a status endpoint on this node's 127.0.0.1."""
        out = self.cmd(
            f"curl -sS -f --max-time {timeout:g} -X {method} http://127.0.0.1:{port}{shlex.quote(path)}"
        )
        try:
            return json.loads(out)
        except ValueError:
            raise DaemonError(f"{self.name}: {path} on port {port} gave no JSON: {out[-500:]!r}") from None


class BackendNode(SlbNode):
    """A real HTTP server that answers with its own name (see nodes.backend)."""

    def start_backend(self, run_dir: Path, port: int = 80, remember: Any = None) -> Daemon:
        """Start the HTTP server on ``port``."""
        self.port = port
        self.fail_flag = run_dir / f"{self.name}.fail"
        self.fail_flag.unlink(missing_ok=True)
        argv = [
            PY,
            "-m",
            "nodes.backend",
            "--name",
            self.name,
            "--port",
            str(port),
            "--fail-flag",
            str(self.fail_flag),
        ]
        return self.start_daemon("http", argv, run_dir, remember)

    def set_healthy(self, healthy: bool) -> None:
        """Make /health answer 200 (healthy) or 503, without stopping the server."""
        if healthy:
            self.fail_flag.unlink(missing_ok=True)
        else:
            self.fail_flag.touch()


class CSNode(SlbNode):
    """The Control Segment daemon (nodes.csd) on its node."""

    status_port = 7780

    def start_cs(self, config: dict[str, Any], run_dir: Path, remember: Any = None) -> Daemon:
        """Write the config, check it, start the CS, wait until ready."""
        self.status_port = int(config.get("cs", {}).get("status_port", 7780))
        self.write_config(config, run_dir, [PY, "-m", "nodes.csd", "--check", "--config"])
        return self.start_daemon(
            "csd", [PY, "-m", "nodes.csd", "--config", str(self.config_path)], run_dir, remember
        )

    def rewrite_config(self, config: dict[str, Any]) -> None:
        """Replace the config file (call :meth:`reload` to apply it)."""
        self.config_path.write_text(dumps(config))

    def status(self, path: str = "/status") -> Any:
        """The CS's JSON status (``/status``, ``/flows``, ``/servers``, ``/vs``)."""
        return self.get_json(self.status_port, path)

    def post(self, path: str) -> Any:
        """POST to the CS status endpoint (``/drain/NAME``, ``/reload``...)."""
        return self.get_json(self.status_port, path, method="POST")

    def cli(self, *args: str) -> str:
        """Run the ``cs`` CLI in this node's namespace and return its output."""
        return self.cmd(
            shlex.join([PY, "-m", "nodes.cscli", "--url", f"http://127.0.0.1:{self.status_port}", *args])
        )


class DFSNode(SlbNode):
    """The DFS daemon (nodes.dfsd) on its node, controlling its own OVS switch."""

    status_port = 7790

    def start_dfs(self, config: dict[str, Any], run_dir: Path, remember: Any = None) -> Daemon:
        """Write the config, start the DFS, attach its switch, wait until the switch is connected."""
        self.status_port = int(config.get("status", {}).get("port", 7790))
        self.switch_name = config["dfs"]["switch"]
        self.write_config(config, run_dir, [PY, "-m", "nodes.dfsd", "--check"])
        d = self.start_daemon("dfsd", [PY, "-m", "nodes.dfsd", str(self.config_path)], run_dir, remember)
        # OVS reaches a controller in another namespace only through a unix socket under
        # /var/run/openvswitch; the daemon accepts OVS on that socket itself.
        self.controller_target = f"unix:{config['openflow']['unix_socket']}"
        subprocess.run(
            ["ovs-vsctl", "--timeout=5", "set-controller", self.switch_name, self.controller_target],
            check=True,
        )
        self.wait_switch_connected()
        return d

    def switch_connected(self) -> bool:
        """Whether the DFS switch reports its controller connection up."""
        out = subprocess.run(
            [
                "ovs-vsctl",
                "--timeout=5",
                "--bare",
                "--columns=is_connected",
                "find",
                "controller",
                f"target={json.dumps(self.controller_target)}",
            ],
            capture_output=True,
            text=True,
        ).stdout
        return "true" in out.split()

    def wait_switch_connected(self, timeout: float = 20.0) -> None:
        """Poll OVS until the bridge reports its controller connected."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.switch_connected():
                return
            time.sleep(0.1)
        raise DaemonError(
            f"{self.name}: switch {self.switch_name} never connected to the DFS\n{self.log_text()[-3000:]}"
        )

    def status(self, path: str = "/status") -> Any:
        """The DFS's JSON status (``/status``, ``/flows``)."""
        return self.get_json(self.status_port, path)

    def dump_flows(self) -> str:
        """The switch's OpenFlow table, as ovs-ofctl shows it."""
        return subprocess.run(
            ["ovs-ofctl", "-O", "OpenFlow13", "dump-flows", self.switch_name], capture_output=True, text=True
        ).stdout


class ClientNode(SlbNode):
    """A client host: curl and Python HTTP clients run here."""

    def http_get(self, url: str, timeout: float = 5.0) -> tuple[int, str]:
        """One HTTP GET with curl; returns (status, body), status 0 when the connection failed."""
        out = self.cmd(f"curl -sS --max-time {timeout:g} -w '\\n%{{http_code}}' {shlex.quote(url)} 2>&1")
        body, _, code = out.replace("\r", "").rstrip("\n").rpartition("\n")
        body = body.rstrip("\n")
        try:
            return int(code), body
        except ValueError:
            return 0, out

    def count_traffic(self, peer: str, port: int | None = None) -> None:
        """Start counting IP packets/bytes this client exchanges with ``peer`` (nftables counters)."""
        match = f"tcp dport {port}" if port else ""
        rmatch = f"tcp sport {port}" if port else ""
        rules = (
            "table ip slbcount {\n"
            f"  chain out {{ type filter hook output priority 0; ip daddr {peer} {match} counter; }}\n"
            f"  chain in {{ type filter hook input priority 0; ip saddr {peer} {rmatch} counter; }}\n"
            "}\n"
        )
        self.cmd("nft delete table ip slbcount 2>/dev/null")
        self.cmd(f"printf %s {shlex.quote(rules)} | nft -f -")

    def counted(self) -> dict[str, tuple[int, int]]:
        """(packets, IP bytes) exchanged with the counted peer: ``{"sent": .., "received": ..}``."""
        doc = json.loads(self.cmd("nft -j list table ip slbcount"))
        found: dict[str, tuple[int, int]] = {}
        for item in doc["nftables"]:
            rule = item.get("rule")
            if not rule:
                continue
            counter = next(e["counter"] for e in rule["expr"] if "counter" in e)
            key = "sent" if rule["chain"] == "out" else "received"
            found[key] = (counter["packets"], counter["bytes"])
        return found


class RouterNode(OffloadFreeHost):
    """A Linux router namespace: forwarding on, static routes, multipath with L4 hashing (ECMP)."""

    def config(self, **params: Any) -> Any:
        """Configure addresses, then forwarding and routes from the testbed's router entry."""
        result = super().config(**params)
        router = params["router"]  # each interface's address comes with its link
        self.cmd("sysctl -qw net.ipv4.ip_forward=1")
        if router.l4_hash:
            self.cmd("sysctl -qw net.ipv4.fib_multipath_hash_policy=1")
        for prefix, vias in router.routes:
            if len(vias) == 1:
                self.cmd(f"ip route replace {prefix} via {vias[0]}")
            else:
                hops = " ".join(f"nexthop via {v} weight 1" for v in vias)
                self.cmd(f"ip route replace {prefix} {hops}")
        return result


NODE_CLASSES: dict[str, Any] = {
    "cs": CSNode,
    "dfs": DFSNode,
    "backend": BackendNode,
    "client": ClientNode,
    "router": RouterNode,
}
