"""A small Open vSwitch bed without Mininet: userspace bridges, hosts in namespaces, dfsd.

The DFS integration tests and the DFS benchmark build the same thing by hand, so that they
control every name and every sysctl: a ``fail_mode=secure`` OpenFlow 1.3 bridge (userspace
datapath, there is no kernel module) whose port 1 faces a client namespace and port 2 a server
namespace, a ``dfsd`` programming it over a unix socket, and a CS on loopback. :class:`OvsBed`
does each step and records its undo first, so :meth:`OvsBed.close` removes everything even
after a step failed half way. It never starts the CS itself: the caller passes the CS's ports
(see ``slbtools.scripted_cs``) and hands its ``close`` to :meth:`OvsBed.defer`.

Every wait is bounded by a deadline (:func:`wait_for`); every process is stopped by the pid
this bed started.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nodes.daemon import Daemon

__all__ = [
    "CLIENT_SIDE",
    "SERVER_SIDE",
    "DfsdHandle",
    "Interface",
    "OvsBed",
    "WaitTimeout",
    "dfsd_toml",
    "free_port",
    "get_json",
    "ns",
    "ovs_problem",
    "sh",
    "stop_process",
    "wait_for",
]

ROOT = Path(__file__).resolve().parent.parent
OVS_RUN_DIR = "/var/run/openvswitch"
# Packets crossing a veth into the userspace datapath keep partial checksums unless offloads are off.
OFFLOADS = ("tx", "rx", "tso", "gso", "gro")


@dataclass(frozen=True)
class Interface:
    """One DFS interface: the switch port, the DFS's address on it (with prefix) and its MAC."""

    port: int
    ipaddr: str
    mac: str

    @property
    def address(self) -> str:
        """The address without its prefix length: what a host on that side routes through."""
        return self.ipaddr.split("/")[0]


CLIENT_SIDE = Interface(1, "10.0.1.1/24", "02:00:00:00:01:01")
SERVER_SIDE = Interface(2, "10.0.2.1/24", "02:00:00:00:02:01")


class WaitTimeout(AssertionError):
    """A condition polled by :func:`wait_for` did not hold before its deadline.

    An AssertionError so that a test waiting for the system under test fails (not errors)
    with the message, and the diagnostics, that say what never happened.
    """


def ovs_problem() -> str | None:
    """Why this machine cannot run an OVS bed (not root, no or no running OVS), or None."""
    if os.geteuid() != 0:
        return "needs root (network namespaces and Open vSwitch)"
    if not shutil.which("ovs-vsctl"):
        return "Open vSwitch is not installed"
    if subprocess.run(["ovs-vsctl", "--timeout=5", "show"], capture_output=True).returncode != 0:
        return "Open vSwitch is not running"
    return None


def sh(*args: str, check: bool = True, timeout: float = 30) -> str:
    """Run a command, return its stdout; RuntimeError with its stderr if it fails and ``check``."""
    res = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    if check and res.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed: {res.stderr.strip()}")
    return res.stdout


def ns(name: str, *args: str, check: bool = True, timeout: float = 30) -> str:
    """:func:`sh` inside the network namespace ``name``."""
    return sh("ip", "netns", "exec", name, *args, check=check, timeout=timeout)


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port on 127.0.0.1 that was free a moment ago (TCP, or UDP with ``SOCK_DGRAM``)."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(
    cond: Callable[[], Any],
    timeout: float,
    what: str,
    explain: Callable[[], str] | None = None,
    *,
    ignore: tuple[type[Exception], ...] = (),
) -> Any:
    """Poll ``cond`` until it returns something true, and return that; :class:`WaitTimeout` after ``timeout``.

    Exceptions of the ``ignore`` types count as "not yet" (a server still starting);
    ``explain`` adds diagnostics to the timeout's message.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = cond()
        except ignore:
            value = None
        if value:
            return value
        time.sleep(0.05)
    detail = f"\n{explain()}" if explain else ""
    raise WaitTimeout(f"timed out after {timeout}s waiting for {what}{detail}")


def get_json(url: str, timeout: float = 5) -> Any:
    """GET ``url`` and decode the JSON answer (a daemon's status document)."""
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.loads(resp.read())


def stop_process(proc: subprocess.Popen[Any], grace: float = 5) -> None:
    """Terminate ``proc``, wait up to ``grace`` seconds, then kill it."""
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=grace)


def dfsd_toml(
    *,
    name: str,
    switch: str,
    ssmb_port: int,
    cs_csmb_port: int,
    cs_ssmb_port: int,
    of_port: int,
    unix_socket: str,
    status_port: int,
    interfaces: Iterable[Interface],
    timeouts: str,
    extra: str = "",
) -> str:
    """A dfsd configuration for a bed: everything on loopback but the switch's interfaces."""
    ifaces = "".join(
        f'[[interface]]\nport = {i.port}\nipaddr = "{i.ipaddr}"\nmac = "{i.mac}"\n' for i in interfaces
    )
    return f"""
[dfs]
name = "{name}"
switch = "{switch}"
mgmt_ipaddr = "127.0.0.1"
ssmb_port = {ssmb_port}
[cs]
ipaddr = "127.0.0.1"
csmb_port = {cs_csmb_port}
ssmb_port = {cs_ssmb_port}
[openflow]
listen_port = {of_port}
unix_socket = "{unix_socket}"
[status]
port = {status_port}
[timeouts]
{timeouts}
{ifaces}{extra}
"""


@dataclass
class DfsdHandle:
    """A running dfsd of a bed: its process, status URL (no path), SSMB port and files."""

    daemon: Daemon
    url: str
    ssmb_port: int
    sock_path: str
    conf: Path
    switch: str

    def status(self) -> Any:
        """The daemon's ``/status`` document."""
        return get_json(self.url + "/status")


class OvsBed:
    """Bridges, namespaces, processes and dfsd, each undone by :meth:`close` in reverse order."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.cleanups: list[Callable[[], Any]] = []

    def defer(self, fn: Callable[[], Any]) -> None:
        """Run ``fn`` in :meth:`close` (after everything registered later)."""
        self.cleanups.append(fn)

    def add_bridge(self, name: str, *, secure: bool) -> None:
        """A userspace bridge: secure OpenFlow 1.3 for a DFS, or standalone (``NORMAL``) for a baseline."""
        self.defer(lambda: sh("ovs-vsctl", "--if-exists", "del-br", name, check=False))
        extra = ["fail_mode=secure", "protocols=OpenFlow13"] if secure else ["fail_mode=standalone"]
        sh("ovs-vsctl", "add-br", name, "--", "set", "bridge", name, "datapath_type=netdev", *extra)

    def add_host(
        self,
        name: str,
        bridge: str,
        ofport: int,
        addrs: Sequence[str],
        *,
        mac: str | None = None,
        gateway: Interface | None = None,
        sysctls: Sequence[str] = (),
    ) -> None:
        """Namespace ``name`` on a veth (``<name>i`` inside, ``<name>o`` on ``bridge`` at ``ofport``).

        ``addrs`` carry their prefix length. With ``gateway`` the host routes everything through
        that DFS interface and knows its MAC statically, which keeps kernel ARP traffic out of
        the switch's counts. IPv6 is off on both ends; ``sysctls`` are set inside as well.
        """
        self.defer(lambda: sh("ip", "netns", "del", name, check=False))
        sh("ip", "netns", "add", name)
        ns(name, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1")
        if sysctls:
            ns(name, "sysctl", "-qw", *sysctls)
        inner, outer = f"{name}i", f"{name}o"
        self.defer(lambda: sh("ip", "link", "del", outer, check=False))
        sh("ip", "link", "add", outer, "type", "veth", "peer", "name", inner)
        sh("ip", "link", "set", inner, "netns", name)
        sh("sysctl", "-qw", f"net.ipv6.conf.{outer}.disable_ipv6=1")
        for off in OFFLOADS:
            sh("ethtool", "-K", outer, off, "off", check=False)
            ns(name, "ethtool", "-K", inner, off, "off", check=False)
        if mac is not None:
            ns(name, "ip", "link", "set", inner, "address", mac)
        for addr in addrs:
            ns(name, "ip", "addr", "add", addr, "dev", inner)
        ns(name, "ip", "link", "set", inner, "up")
        ns(name, "ip", "link", "set", "lo", "up")
        if gateway is not None:
            gw = gateway.address
            ns(name, "ip", "route", "add", "default", "via", gw)
            ns(name, "ip", "neigh", "replace", gw, "lladdr", gateway.mac, "dev", inner, "nud", "permanent")
        sh("ip", "link", "set", outer, "up")
        port_opts = ("--", "set", "interface", outer, f"ofport_request={ofport}")
        sh("ovs-vsctl", "add-port", bridge, outer, *port_opts)

    def popen(self, netns: str, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` in namespace ``netns`` (Popen keyword arguments pass through); stopped on close."""
        proc: subprocess.Popen[Any] = subprocess.Popen(["ip", "netns", "exec", netns, *argv], **kwargs)

        def reap() -> None:
            stop_process(proc)
            for pipe in (proc.stdin, proc.stdout, proc.stderr):
                if pipe is not None:
                    pipe.close()

        self.defer(reap)
        return proc

    def spawn_dfsd(self, conf: Path, log: str, *extra: str, timeout: float = 30) -> Daemon:
        """Start ``nodes.dfsd`` on ``conf`` (log in the bed's directory) and wait for READY."""
        argv = [sys.executable, "-m", "nodes.dfsd", str(conf), *extra]
        dfsd = Daemon("dfsd", argv, self.tmp / log, env={"PYTHONPATH": str(ROOT)})
        self.defer(dfsd.stop)
        dfsd.start(timeout=timeout)
        return dfsd

    def start_dfsd(
        self,
        switch: str,
        *,
        name: str,
        cs_csmb_port: int,
        cs_ssmb_port: int,
        vservers: int,
        interfaces: Sequence[Interface] = (CLIENT_SIDE, SERVER_SIDE),
        timeouts: str = "idle = 5\nfin_idle = 1",
        extra_toml: str = "",
        args: Sequence[str] = (),
        deadline: float = 30,
    ) -> DfsdHandle:
        """Configure and start dfsd for ``switch``, point the switch at it, and wait until
        switch and CS are connected and the DFS holds ``vservers`` virtual servers."""
        sock_path = f"{OVS_RUN_DIR}/{switch}-dfsd.sock"
        self.defer(lambda: _unlink(sock_path))
        status_port, ssmb_port = free_port(), free_port(socket.SOCK_DGRAM)
        conf = self.tmp / f"{switch}-dfs.toml"
        conf.write_text(
            dfsd_toml(
                name=name,
                switch=switch,
                ssmb_port=ssmb_port,
                cs_csmb_port=cs_csmb_port,
                cs_ssmb_port=cs_ssmb_port,
                of_port=free_port(),
                unix_socket=sock_path,
                status_port=status_port,
                interfaces=interfaces,
                timeouts=timeouts,
                extra=extra_toml,
            )
        )
        daemon = self.spawn_dfsd(conf, "dfsd.log", *args, timeout=deadline)
        handle = DfsdHandle(daemon, f"http://127.0.0.1:{status_port}", ssmb_port, sock_path, conf, switch)
        sh("ovs-vsctl", "set-controller", switch, f"unix:{sock_path}")
        wait_for(
            lambda: (
                (st := handle.status())["switch_connected"]
                and st["cs_connected"]
                and st["virtual_servers"] == vservers
            ),
            deadline,
            "switch, CS and virtual servers",
            ignore=(OSError, ValueError),
        )
        return handle

    def close(self) -> None:
        """Undo everything, latest first; a failing step does not stop the others."""
        while self.cleanups:
            fn = self.cleanups.pop()
            with contextlib.suppress(Exception):
                fn()


def _unlink(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
