"""A running testbed: the Mininet network of a spec plus every daemon on it, torn down as one.

``Lab`` is what the demo, the topology scripts and the end-to-end tests use::

    with Lab(load_spec("topo/configs/default.toml")) as lab:
        status, body = lab.client().http_get("http://10.0.0.100/")

Start order: backends, then the CS, then each DFS (which connects to the CS and to its
switch); :meth:`Lab.wait_ready` then waits until every DFS has its virtual servers.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from nodes.daemon import DaemonError
from nodes.net import DFSSwitch, Testbed, UserSwitch
from nodes.types import NODE_CLASSES, BackendNode, ClientNode, CSNode, DFSNode, SlbNode
from topo.build import SpecTopo
from topo.spec import Spec

T = TypeVar("T")

# What a healthy daemon never writes: Python tracebacks and OpenFlow errors from the switch.
BAD_LOG_RE = re.compile(r"Traceback \(most recent call last\)|OFPErrorMsg|openflow_error\.")


def wait_for(what: str, check: Callable[[], T], timeout: float = 10.0, interval: float = 0.1) -> T:
    """Poll ``check`` until it returns something truthy, or fail after ``timeout`` naming ``what``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = check()
        except (DaemonError, OSError) as exc:
            last = exc
        if last and not isinstance(last, Exception):
            return last  # type: ignore[no-any-return]
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}; last: {last!r}")
        time.sleep(interval)


class Lab:
    """The network and the daemons of one testbed, started and stopped together."""

    def __init__(self, spec: Spec, run_dir: Path | None = None, start_daemons: bool = True) -> None:
        self.spec = spec
        self._own_dir = run_dir is None
        self.run_dir = Path(run_dir or tempfile.mkdtemp(prefix=f"slb-{spec.name}-"))
        self.start_daemons = start_daemons
        classes = {**NODE_CLASSES, "switch": UserSwitch, "dfs_switch": DFSSwitch}
        self.testbed = Testbed(
            SpecTopo(spec=spec, node_classes=classes), ovs_other_config=dict(spec.ovs_other_config)
        )
        self.net: Any = None
        # Node shells inherit PATH: put the venv's console scripts (cs, dfs, slb-decode) on it.
        venv_bin = str(Path(sys.executable).parent)
        if venv_bin not in os.environ.get("PATH", "").split(os.pathsep):
            os.environ["PATH"] = venv_bin + os.pathsep + os.environ.get("PATH", "")

    # -- nodes ------------------------------------------------------------------------------------
    def node(self, name: str) -> Any:
        """The Mininet node called ``name``."""
        return self.net[name]

    @property
    def cs(self) -> CSNode:
        """The CS node: the active one of an active/standby pair."""
        nodes = self.cs_nodes
        if len(nodes) > 1:
            # An active/standby pair: the one that is active now (the first if none says so).
            for node in nodes:
                if any(d.running() for d in node.daemons):
                    with contextlib.suppress(DaemonError, OSError, ValueError):
                        if node.status().get("role") == "active":
                            return node
        return nodes[0]

    @property
    def cs_nodes(self) -> list[CSNode]:
        """Every CS node (two for an active/standby pair)."""
        return [self.net[c.name] for c in self.spec.cs]

    @property
    def dfs_nodes(self) -> list[DFSNode]:
        """Every DFS node."""
        return [self.net[d.name] for d in self.spec.dfs]

    @property
    def dfs(self) -> DFSNode:
        """The first DFS node."""
        return self.dfs_nodes[0]

    @property
    def backends(self) -> list[BackendNode]:
        """Every backend node."""
        return [self.net[b.name] for b in self.spec.backends]

    def client(self, index: int = 0) -> ClientNode:
        """A client node."""
        return self.net[self.spec.clients[index].name]  # type: ignore[no-any-return]

    # -- lifecycle ----------------------------------------------------------------------------------
    def __enter__(self) -> Lab:
        self.net = self.testbed.__enter__()
        try:
            if self.start_daemons:
                self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        """Start backends, the CS and the DFS daemons, and wait until the DFSs are configured."""
        for spec_b, node in zip(self.spec.backends, self.backends, strict=True):
            node.start_backend(self.run_dir, spec_b.port, self.testbed.remember_pid)
        for name in [c.name for c in self.spec.cs] + [d.name for d in self.spec.dfs]:
            self.start_daemon(name)
        self.wait_ready()

    def start_daemon(self, name: str) -> None:
        """Start the CS or DFS daemon of node ``name`` with the configuration the testbed gives it."""
        remember = self.testbed.remember_pid
        for spec_cs in self.spec.cs:
            if spec_cs.name == name:
                self.net[name].start_cs(self.spec.cs_config(spec_cs), self.run_dir, remember)
                return
        for spec_d in self.spec.dfs:
            if spec_d.name == name:
                self.net[name].start_dfs(self.spec.dfs_config(spec_d), self.run_dir, remember)
                return
        raise KeyError(f"{name} runs no CS or DFS daemon")

    def wait_ready(self, timeout: float = 20.0) -> None:
        """Wait until every DFS holds every virtual server the CS has."""
        want = len(self.spec.virtual_servers)
        for node in self.dfs_nodes:
            wait_for(
                f"{node.name} to receive {want} virtual servers",
                lambda node=node: self._vs_count(node) >= want,
                timeout,
            )

    @staticmethod
    def _vs_count(node: DFSNode) -> int:
        status = node.status()
        vs = status.get("virtual_servers", status.get("vs", []))
        return len(vs) if isinstance(vs, list | dict) else int(vs)

    def stop(self) -> None:
        """Stop daemons (DFS first, then CS, then backends) and the network."""
        if self.net is not None:
            for name in [d.name for d in self.spec.dfs] + [c.name for c in self.spec.cs]:
                self.net[name].stop_daemons()
        self.testbed.stop()
        self.net = None

    # -- checks -------------------------------------------------------------------------------------
    def daemon_nodes(self) -> list[SlbNode]:
        """Every node that runs a daemon of ours."""
        names = (
            [c.name for c in self.spec.cs]
            + [d.name for d in self.spec.dfs]
            + [b.name for b in self.spec.backends]
        )
        return [self.net[n] for n in names]

    def logs(self) -> str:
        """Every daemon log, labelled (shown when a test fails)."""
        return "\n".join(n.log_text() for n in self.daemon_nodes())

    def log_problems(self) -> list[str]:
        """Log lines that show a daemon raised an exception or the switch reported an OpenFlow error."""
        problems = []
        for node in self.daemon_nodes():
            for d in node.daemons:
                for line in d.log_text().splitlines():
                    if BAD_LOG_RE.search(line):
                        problems.append(f"{d.name}: {line.strip()}")
        for dfs in self.dfs_nodes:
            if any(d.running() for d in dfs.daemons):
                # The log shows only the first error of a kind; the counters show every one.
                errors = dfs.status().get("errors", {})
                bad = {k: n for k, n in errors.items() if k.startswith("openflow_error")}
                problems += [f"{dfs.name}: {k} x{n}" for k, n in bad.items()]
        return problems

    def client_of(self, name: str) -> ClientNode:
        """The client node called ``name``."""
        node = self.net[name]
        assert isinstance(node, ClientNode)
        return node
