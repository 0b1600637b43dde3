"""The Mininet helper every topology uses.

Four things differ from a stock Mininet run on these machines, and this module owns all four:

* There is no Open vSwitch kernel module, so every switch uses the userspace datapath
  (``datapath_type=netdev``). DFS switches run with ``fail_mode=secure``: in standalone mode OVS
  would start forwarding around the load balancer as soon as its controller went away.
* Packets that cross a veth into the userspace datapath keep the partial checksums that
  offloading leaves in them, so TCP silently fails while ping works. Every interface we create,
  on both ends of every veth, gets its offloads turned off.
* A test that fails must still leave nothing behind. :class:`Testbed` records what it creates in
  a state file under ``/run/splitlb`` before it creates it, tears everything down in ``finally``,
  and ``make clean`` (:func:`clean_leftovers`) removes whatever a killed run left, by name and pid.
  Only one testbed runs at a time (node names would clash): a second one waits for the lock.
* Switch ports are AF_XDP sockets (``afxdp-nonpmd``, generic XDP) where the kernel allows it,
  which doubles what a userspace switch forwards compared with AF_PACKET ports; see
  :func:`default_port_type`.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from mininet.log import setLogLevel
from mininet.net import Mininet
from mininet.node import Host, OVSIntf, OVSSwitch
from mininet.topo import Topo

STATE_DIR = Path(os.environ.get("SLB_STATE_DIR", "/run/splitlb"))
LOCK_WAIT = float(os.environ.get("SLB_LOCK_WAIT", "900"))
OFFLOADS = ("tx", "rx", "tso", "gso", "gro")


def disable_offloads(run: Any, intf: str) -> None:
    """Turn off checksum and segmentation offloads on ``intf`` using ``run`` (a node's cmd)."""
    args = " ".join(f"{o} off" for o in OFFLOADS)
    run(f"ethtool -K {intf} {args} >/dev/null 2>&1")


class OffloadFreeHost(Host):
    """A Mininet host whose interfaces have offloads off, so TCP works through userspace OVS."""

    def config(self, **params: Any) -> Any:
        """Configure as Mininet does, then turn off offloads on every interface but lo."""
        result = super().config(**params)
        for intf in self.intfList():
            if intf.name != "lo":
                disable_offloads(self.cmd, intf.name)
        return result


PORT_TYPES = ("afxdp-nonpmd", "system")


@functools.cache
def default_port_type() -> str:
    """The switch port type to use: ``SLB_PORT_TYPE``, else AF_XDP when this machine supports it.

    Measured here through the default testbed: a 200 MB download crosses a switch at about
    2x the rate with ``afxdp-nonpmd`` ports (XDP in generic mode, no busy-polling core) as with
    the default AF_PACKET ("system") ports. Plain ``afxdp`` is faster still but pins a core.
    Where the kernel lacks AF_XDP, the probe fails and the default ports are used.
    """
    chosen = os.environ.get("SLB_PORT_TYPE", "")
    if chosen:
        if chosen not in PORT_TYPES:
            raise ValueError(f"SLB_PORT_TYPE={chosen!r}: expected one of {', '.join(PORT_TYPES)}")
        return chosen
    return "afxdp-nonpmd" if _afxdp_works() else "system"


def _afxdp_works() -> bool:
    """Try one AF_XDP port on a scratch bridge; remove both whatever happens."""
    bridge, veth, peer = (
        f"slbxp{os.getpid() % 100000}",
        f"slbxa{os.getpid() % 100000}",
        f"slbxb{os.getpid() % 100000}",
    )
    run = functools.partial(subprocess.run, capture_output=True, text=True, check=False)
    try:
        if run(["ip", "link", "add", veth, "type", "veth", "peer", "name", peer]).returncode != 0:
            return False
        run(["ip", "link", "set", veth, "up"])
        run(["ip", "link", "set", peer, "up"])
        added = run(
            [
                "ovs-vsctl",
                "--timeout=10",
                "add-br",
                bridge,
                "--",
                "set",
                "bridge",
                bridge,
                "datapath_type=netdev",
                "--",
                "add-port",
                bridge,
                veth,
                "--",
                "set",
                "interface",
                veth,
                "type=afxdp-nonpmd",
                "options:xdp-mode=generic",
            ]
        )
        if added.returncode != 0:
            return False
        error = run(["ovs-vsctl", "--timeout=5", "get", "interface", veth, "error"]).stdout.strip()
        ofport = run(["ovs-vsctl", "--timeout=5", "get", "interface", veth, "ofport"]).stdout.strip()
        return error in ("", "[]") and ofport not in ("", "-1", "[]")
    finally:
        run(["ovs-vsctl", "--timeout=10", "--if-exists", "del-br", bridge])
        run(["ip", "link", "del", veth])


class UserSwitch(OVSSwitch):
    """An Open vSwitch bridge on the userspace datapath, speaking OpenFlow 1.3."""

    def __init__(self, name: str, failMode: str = "standalone", **params: Any) -> None:
        params.setdefault("protocols", "OpenFlow13")
        self.port_type = params.pop("port_type", None) or default_port_type()
        super().__init__(name, failMode=failMode, datapath="user", **params)

    def intfOpts(self, intf: Any) -> str:
        """Mininet's port options, plus the port type when one is chosen (``afxdp-nonpmd``)."""
        opts = str(super().intfOpts(intf))
        if self.port_type == "afxdp-nonpmd" and not isinstance(intf, OVSIntf):
            opts += " type=afxdp-nonpmd options:xdp-mode=generic"
        return opts

    def start(self, controllers: list[Any]) -> None:
        """Start the bridge, then turn off offloads on the root-namespace end of each port."""
        super().start(controllers)
        for intf in self.intfList():
            if intf.name != "lo":
                disable_offloads(self.cmd, intf.name)


class DFSSwitch(UserSwitch):
    """A DFS switch: secure fail mode, so nothing is forwarded without the DFS's rules."""

    def __init__(self, name: str, **params: Any) -> None:
        params["failMode"] = "secure"
        super().__init__(name, **params)


class Testbed:
    """Build a topology, start it, and guarantee its teardown.

    Use as a context manager::

        with Testbed(MyTopo()) as net:
            net["h1"].cmd("curl ...")

    Everything is stopped on exit, pass or fail; :meth:`leftovers` reports anything that
    survived, and tests assert it is empty.
    """

    __test__ = False  # a context manager, not a pytest test class

    def __init__(
        self,
        topo: Topo,
        quiet: bool = True,
        ovs_other_config: dict[str, str] | None = None,
        **mininet_args: Any,
    ) -> None:
        self.topo = topo
        self.net: Mininet | None = None
        self.state_file = STATE_DIR / f"net-{os.getpid()}-{id(self):x}.json"
        self._state: dict[str, Any] = {"bridges": [], "pids": [], "ovs_other_config": {}}
        self.ovs_other_config = dict(ovs_other_config or {})
        mininet_args.setdefault("host", OffloadFreeHost)
        mininet_args.setdefault("switch", UserSwitch)
        mininet_args.setdefault("controller", None)
        mininet_args.setdefault("autoSetMacs", True)
        mininet_args.setdefault("waitConnected", False)
        self._mininet_args = mininet_args
        # Mininet's Node.popen(..., shell=True) and its CLI read $SHELL unguarded; CI runners and
        # `env -i` start without it.
        os.environ.setdefault("SHELL", "/bin/sh")
        if quiet:
            setLogLevel("warning")

    # -- state kept for `make clean` ------------------------------------------------------------
    def _save_state(self) -> None:
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self._state))
        tmp.replace(self.state_file)

    def remember_pid(self, pid: int) -> None:
        """Record a process this testbed started, so a killed run can still be cleaned."""
        self._state["pids"].append(pid)
        self._save_state()

    # -- lifecycle --------------------------------------------------------------------------------
    def _lock(self) -> None:
        """Wait for any other testbed on this machine to finish: node names would clash."""
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        self._lock_fd = os.open(STATE_DIR / "testbed.lock", os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + LOCK_WAIT
        told = False
        while True:
            try:
                fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    os.close(self._lock_fd)
                    self._lock_fd = -1
                    raise RuntimeError(
                        f"another testbed has held {STATE_DIR}/testbed.lock for {LOCK_WAIT:.0f}s"
                    ) from None
                if not told:
                    print(
                        "*** another testbed is running on this machine; waiting for it to finish",
                        file=sys.stderr,
                    )
                    told = True
                time.sleep(0.2)

    def _unlock(self) -> None:
        if getattr(self, "_lock_fd", -1) >= 0:
            os.close(self._lock_fd)  # closing drops the flock
            self._lock_fd = -1

    def __enter__(self) -> Mininet:
        self._lock()
        self._state["bridges"] = list(self.topo.switches())
        self._save_state()
        try:
            self._tune_ovs()
            self.net = Mininet(topo=self.topo, build=False, **self._mininet_args)
            self.net.build()
            for node in self.net.hosts + self.net.switches:
                pid = getattr(node, "pid", None)
                if pid:
                    self._state["pids"].append(pid)
            self._save_state()
            self.net.start()
        except BaseException:
            self.stop()
            raise
        return self.net

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop everything this testbed started; safe to call twice."""
        if self.net is not None:
            with contextlib.suppress(Exception):
                self.net.stop()
            self.net = None
        remove_bridges(self._state["bridges"])
        kill_pids(self._state["pids"])
        restore_ovs_other_config(self._state["ovs_other_config"])
        with contextlib.suppress(FileNotFoundError):
            self.state_file.unlink()
        self._unlock()

    def leftovers(self) -> list[str]:
        """What of this testbed still exists (empty when teardown was complete)."""
        found = [f"bridge {b}" for b in self._state["bridges"] if bridge_exists(b)]
        found += [f"pid {p}" for p in self._state["pids"] if pid_alive(p)]
        found += [
            f"OVS other_config:{key}={ovs_other_config_get(key)} (was {old})"
            for key, old in self._state["ovs_other_config"].items()
            if ovs_other_config_get(key) != old
        ]
        return found

    def _tune_ovs(self) -> None:
        """Apply the testbed's OVS other_config settings, first recording each key's old value."""
        for key, value in self.ovs_other_config.items():
            self._state["ovs_other_config"].setdefault(key, ovs_other_config_get(key))
            self._save_state()
            subprocess.run(
                ["ovs-vsctl", "--timeout=5", "set", "Open_vSwitch", ".", f"other_config:{key}={value}"],
                check=True,
                capture_output=True,
            )


def ovs_other_config_get(key: str) -> str | None:
    """The value of ``Open_vSwitch . other_config:key``, or None when it is not set."""
    done = subprocess.run(
        ["ovs-vsctl", "--timeout=5", "--if-exists", "get", "Open_vSwitch", ".", f"other_config:{key}"],
        capture_output=True,
        text=True,
        check=False,
    )
    value = done.stdout.strip()
    return value.strip('"') if done.returncode == 0 and value else None


def restore_ovs_other_config(saved: dict[str, str | None]) -> None:
    """Put back OVS other_config values recorded before a testbed changed them (None: unset)."""
    for key, old in saved.items():
        if old is None:
            argv = ["remove", "Open_vSwitch", ".", "other_config", key]
        else:
            argv = ["set", "Open_vSwitch", ".", f"other_config:{key}={old}"]
        subprocess.run(["ovs-vsctl", "--timeout=5", *argv], capture_output=True, check=False)


def bridge_exists(name: str) -> bool:
    """Whether OVS has a bridge called ``name``."""
    return subprocess.run(["ovs-vsctl", "--timeout=5", "br-exists", name], check=False).returncode == 0


def remove_bridges(names: list[str]) -> None:
    """Delete the named OVS bridges if they still exist."""
    for name in names:
        if bridge_exists(name):
            subprocess.run(["ovs-vsctl", "--timeout=5", "--if-exists", "del-br", name], check=False)


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` is a live (non-zombie) process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def kill_pids(pids: list[int], grace: float = 3.0) -> None:
    """Terminate the given processes, wait up to ``grace`` seconds, then kill what is left."""
    live = [p for p in pids if pid_alive(p)]
    for pid in live:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while live and time.monotonic() < deadline:
        live = [p for p in live if pid_alive(p)]
        if live:
            time.sleep(0.05)
    for pid in live:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def clean_leftovers() -> list[str]:
    """Remove what killed runs left (bridges, processes, veths named in state files); say what."""
    if not STATE_DIR.is_dir():
        return []
    return [done for state_file in sorted(STATE_DIR.glob("*.json")) for done in clean_state_file(state_file)]


def clean_state_file(state_file: Path) -> list[str]:
    """Undo what one killed run recorded in ``state_file``, then remove the file; say what was done."""
    done: list[str] = []
    try:
        state = json.loads(state_file.read_text())
    except (OSError, ValueError):
        state = {}
    bridges = [b for b in state.get("bridges", []) if bridge_exists(b)]
    pids = [p for p in state.get("pids", []) if pid_alive(p)]
    remove_bridges(bridges)
    kill_pids(pids)
    done += [f"bridge {b}" for b in bridges] + [f"pid {p}" for p in pids]
    tuned = state.get("ovs_other_config")
    tuned = tuned if isinstance(tuned, dict) else {}
    changed = {k: v for k, v in tuned.items() if ovs_other_config_get(k) != v}
    restore_ovs_other_config(changed)
    done += [f"OVS other_config:{key} restored" for key in changed]
    for veth in state.get("veths", []):
        if subprocess.run(["ip", "link", "del", veth], capture_output=True, check=False).returncode == 0:
            done.append(f"veth {veth}")
    for ns in state.get("netns", []):
        if subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False).returncode == 0:
            done.append(f"netns {ns}")
    state_file.unlink(missing_ok=True)
    return done
