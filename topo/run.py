"""Run a testbed from its TOML file: drop into the Mininet CLI, or run a scenario and exit.

    slb-topo topo/configs/default.toml --cli          # Mininet CLI with `vs`, `flows`, `stats`
    slb-topo topo/configs/multi-vip.toml              # the smoke scenario: HTTP through every VIP

In the CLI, besides Mininet's own commands (``client1 curl 10.0.0.100``, ``pingall``...):
``vs`` lists the CS's virtual servers, ``flows`` the flows the CS tracks and the rules in each
DFS switch, ``stats`` the CS and DFS counters.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from topo.lab import Lab
from topo.spec import SpecError, load_spec

DEFAULT = Path(__file__).resolve().parent / "configs" / "default.toml"


def http_vips(lab: Lab) -> list[tuple[str, str, int]]:
    """(name, vip, port) of every TCP virtual server with a fixed address and port."""
    out = []
    for vs in lab.spec.virtual_servers:
        flags = vs.get("flags", [])
        if (
            vs.get("protocol", "tcp") == "tcp"
            and "wildcard_addr" not in flags
            and "wildcard_port" not in flags
        ):
            out.append((vs["name"], vs["vip"], int(vs["port"])))
    return out


def smoke(lab: Lab, requests: int = 6) -> bool:
    """GET each HTTP VIP from each client; print who answered; True when every request succeeded."""
    ok = True
    for name, vip, port in http_vips(lab):
        for i, _ in enumerate(lab.spec.clients):
            client = lab.client(i)
            answers = []
            for _ in range(requests):
                status, body = client.http_get(f"http://{vip}:{port}/")
                answers.append(body.strip() if status == 200 else f"FAILED({status})")
                ok &= status == 200
            print(f"  {name} {vip}:{port} from {client.name}: {' '.join(answers)}")
    return ok


def make_cli(lab: Lab) -> Any:
    """A Mininet CLI class with the testbed's own commands added."""
    from mininet.cli import CLI

    class SlbCLI(CLI):  # type: ignore[misc]
        """Mininet's CLI plus vs, flows and stats."""

        prompt = "slb> "

        def do_vs(self, _line: str) -> None:
            """vs: the CS's virtual servers and their real servers."""
            print(json.dumps(lab.cs.status("/vs"), indent=2))

        def do_flows(self, _line: str) -> None:
            """flows: flows known to the CS, and each DFS switch's OpenFlow table."""
            print(json.dumps(lab.cs.status("/flows"), indent=2))
            for dfs in lab.dfs_nodes:
                print(f"--- {dfs.switch_name} ({dfs.name})")
                print(dfs.dump_flows())

        def do_stats(self, _line: str) -> None:
            """stats: CS and DFS counters (every CS of an active/standby pair)."""
            running = [n for n in lab.cs_nodes + lab.dfs_nodes if any(d.running() for d in n.daemons)]
            print(json.dumps({n.name: n.status() for n in running}, indent=2))

        def do_stop(self, line: str) -> None:
            """stop NODE: stop the CS or DFS daemon on NODE (to see what the other segment does)."""
            node = self._daemon_node(line)
            if node is not None:
                node.stop_daemons()
                print(f"{node.name}: daemon stopped")

        def do_start(self, line: str) -> None:
            """start NODE: start NODE's CS or DFS daemon again, with the testbed's configuration."""
            node = self._daemon_node(line)
            if node is None:
                return
            if any(d.running() for d in node.daemons):
                print(f"{node.name}: already running")
                return
            node.daemons.clear()
            try:
                lab.start_daemon(node.name)
            except Exception as exc:  # a failed start is reported, the CLI goes on
                print(f"{node.name}: did not start: {exc}")
                return
            print(f"{node.name}: daemon started")

        def _daemon_node(self, line: str) -> Any:
            name = line.strip()
            names = [c.name for c in lab.spec.cs] + [d.name for d in lab.spec.dfs]
            if name not in names:
                print(f"usage: stop|start NODE, NODE one of: {' '.join(names)}")
                return None
            return lab.node(name)

    return SlbCLI


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, bring the testbed up, run the CLI or the smoke scenario, tear down."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "config", nargs="?", default=str(DEFAULT), help="testbed TOML file (default: the default testbed)"
    )
    ap.add_argument(
        "--cli", action="store_true", help="open the Mininet CLI instead of running the smoke scenario"
    )
    ap.add_argument("--check", action="store_true", help="only check the testbed file and print the topology")
    ap.add_argument("--log-dir", type=Path, help="keep daemon configs and logs here (default: a temp dir)")
    args = ap.parse_args(argv)
    try:
        spec = load_spec(args.config)
    except SpecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.check:
        from topo.build import SpecTopo

        topo = SpecTopo(spec=spec)
        print(f"{spec.name}: {spec.description}")
        print(f"  hosts:    {' '.join(topo.hosts())}\n  switches: {' '.join(topo.switches())}")
        for a, b in topo.links():
            print(f"  link {a} -- {b}")
        return 0
    if args.log_dir:
        args.log_dir.mkdir(parents=True, exist_ok=True)
    with Lab(spec, run_dir=args.log_dir) as lab:
        print(f"*** {spec.name} is up; logs in {lab.run_dir}")
        if args.cli:
            from mininet.log import setLogLevel

            setLogLevel("output")  # the CLI prints node commands' output at this level
            make_cli(lab)(lab.net)
            return 0
        ok = smoke(lab)
        problems = lab.log_problems()
        for p in problems:
            print(f"  log problem: {p}")
        return 0 if ok and not problems else 1


if __name__ == "__main__":
    sys.exit(main())
