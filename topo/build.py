"""Turn a :class:`topo.spec.Spec` into a Mininet topology description (pure; no root needed)."""

from __future__ import annotations

from typing import Any

from mininet.topo import Topo

from topo.spec import Spec


class SpecTopo(Topo):
    """The Mininet topology of a testbed: names, addresses, routes and node classes only."""

    def build(self, spec: Spec, node_classes: dict[str, Any] | None = None, **_: Any) -> None:  # type: ignore[override]
        """Add one switch per segment, a management switch, the DFS switches and every node."""
        classes = node_classes or {}
        self.spec = spec
        dpid = iter(range(1, 1 << 16))

        def switch(name: str, cls: str = "switch", **opts: Any) -> str:
            params = {"dpid": f"{next(dpid):016x}", **opts}
            if cls in classes:
                params["cls"] = classes[cls]
            return self.addSwitch(name, **params)

        def host(name: str, kind: str, **opts: Any) -> str:
            if kind in classes:
                opts["cls"] = classes[kind]
            return self.addHost(name, **opts)

        mgmt = switch("mgmt")
        mgmt_len = spec.mgmt_subnet.prefixlen
        seg_switch = {seg.name: switch(seg.name) for seg in spec.segments}

        for cs in spec.cs:
            # Several links: each address rides on its own link, never on "the default interface".
            host(cs.name, "cs", ip=None, role="cs")
            self.addLink(cs.name, mgmt, params1={"ip": f"{cs.mgmt_ipaddr}/{mgmt_len}"})
            for seg, ip in cs.data:
                self.addLink(
                    cs.name, seg_switch[seg], params1={"ip": f"{ip}/{spec.segment(seg).subnet.prefixlen}"}
                )

        for dfs in spec.dfs:
            host(dfs.name, "dfs", ip=f"{dfs.mgmt_ipaddr}/{mgmt_len}", role="dfs", dfs=dfs)
            self.addLink(dfs.name, mgmt)
            sw = switch(dfs.switch, "dfs_switch")
            for p in dfs.ports:
                self.addLink(sw, seg_switch[p.segment], port1=p.port)

        for router in spec.routers:
            host(router.name, "router", ip=None, role="router", router=router)
            for i, (seg, ip) in enumerate(router.addresses):
                params = {"ip": f"{ip}/{spec.segment(seg).subnet.prefixlen}"}
                self.addLink(router.name, seg_switch[seg], params1=params, intfName1=f"{router.name}-eth{i}")

        for kind, members in (("backend", spec.backends), ("client", spec.clients)):
            for h in members:
                prefix = spec.segment(h.segment).subnet.prefixlen
                route = f"via {h.gateway}" if h.gateway else None
                host(
                    h.name,
                    kind,
                    ip=f"{h.ipaddr}/{prefix}",
                    defaultRoute=route,
                    role=kind,
                    port=h.port,
                    return_gateways=h.return_gateways,
                )
                self.addLink(h.name, seg_switch[h.segment])
