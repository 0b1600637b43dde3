"""The Data Flow Segment: pure logic that offloads the CS's per-flow decisions into Open vSwitch.

How it works
------------
The DFS switch is the IPv4 L3 gateway between a client side and a server side. Its TOML
configuration (:mod:`slbcore.dfs.config`) names the switch, the DFS, its management address
(where its SSMB socket lives), the CS's address and ports, and one router interface per switch
port: an address/prefix and a MAC that the DFS owns, plus optional static routes. The DFS
answers ARP for its own addresses and for every virtual IP (unless the VS has NOARP_MODE or a
wildcard address), learns neighbours from the ARP it sees, and sends ARP requests itself
(packet-out) when it needs a next hop's MAC. Route lookups (ROUTE_BY_DST_IP, NEWFLOW client
side) use this configured table: connected subnets plus static routes, longest prefix wins.

Fixed entries (cookie kinds in :mod:`slbcore.dfs.rules`): table-miss drops (the bridge runs with
``fail_mode=secure``), ARP goes to the controller, IP to the DFS's own addresses is dropped, and
one dispatch entry per virtual server (more specific wins: exact > any port > any address).

CS_ASSIST virtual servers. The dispatch entry sends the first packet of an unknown flow to the
controller. The DFS allocates a flow_id, holds the packet (bounded per flow and in total, drops
counted), and sends a QUERY. An unanswered QUERY is retransmitted with fresh serials (bounded
tries), then the flow fails closed. On REPLY the DFS computes the new destination
(``new_dst_ipaddr`` / ``new_dst_port`` only where TRANSLATE_ADDR / TRANSLATE_PORT say so) and the
next hop (``next_hop_ipaddr``, or a route lookup on the new destination under ROUTE_BY_DST_IP or
when the REPLY names none), resolves its MAC by ARP if needed, and installs two entries at
priority 2000, each with ``idle_timeout``, OFPFF_SEND_FLOW_REM and a cookie holding the flow_id
and the DFS's epoch:

* forward: exact client 5-tuple to the VIP -> set ipv4_dst / tcp_dst (or udp_dst) as
  translated, eth_src = our MAC on the server side, eth_dst = next hop's MAC, output its port;
* reverse: exact server 5-tuple to the client -> set ipv4_src / source port back to the VIP,
  eth_src = our MAC on the client port, eth_dst = the MAC the client's packet came from,
  output the client's port.

The held packets are then sent with the forward entry's actions (packet-out) and counted into
the flow's inbound counters; the switch never sends that flow to the DFS again (a packet that
overtakes the new entries in OVS's datapath cache is forwarded the same way and counted by OVS).
An error REPLY (NOTAVAIL, CONNLIMIT, UNKNOWN), an unanswered QUERY, a missing CS, an unresolvable
next hop, a full table or the ``max_flows`` limit refuse the flow: a TCP RST (or, for UDP, ICMP
port-unreachable for UNKNOWN and admin-prohibited otherwise) goes to the client, counted by kind.
A REPLY asking for TCP sequence offsets (ADD_TCP_OFFSET) is refused too: OpenFlow cannot do
sequence arithmetic. Duplicate and unsolicited REPLYs are counted and ignored.

TCP close. Each per-flow entry carries the Nicira ``fin_timeout`` action: once a FIN or RST
passes, the entry's idle timeout drops to ``timeouts.fin_idle`` (2 s by default), so closed
connections leave the table and are reported within seconds, with no packet-in per close.

DFS_ASSIST virtual servers. The pool comes from the VS's app_data
(:func:`slbproto.csmb.decode_pool`). The dispatch entry points at an OpenFlow select group with
one weighted bucket per reachable member; OVS hashes each new connection's 5-tuple to a bucket
(its default selection for OpenFlow 1.3 select groups). A bucket loads the output port into
reg0, runs two ``learn`` actions that install the connection's forward and reverse entries
(same shape as above, idle timeout, fin timeouts, send-flow-removed, per-VS cookie), then does
the DNAT, MAC rewrite and output itself. Later packets hit the learned entries, so a connection
keeps its server and no packet of it reaches the DFS. Members whose MAC is not yet known are
left out until ARP resolves them. The first packet of each such connection is counted by the
group's dispatch entry, not by the learned entries.

Flow end. A flow-removed for one direction makes the DFS delete the other (so both counts are
final), then it sends DELETE with inbound (client -> server, forward entry) and outbound
counts. Learned DFS_ASSIST entries are paired the same way by client address/port and reported
with a DFS-chosen flow_id, so the CS still learns of those flows and their statistics. REAP asks
the switch for the flow's two entries (flow-stats by cookie): if the packet count grew since the
last look the answer is STATS with error CONNALIVE, else the entries are deleted and a plain
STATS is sent. Every STATS and the final DELETE carry the counts not yet reported, so the CS
adds them up. NEWFLOW pre-installs a flow (client side found by route lookup and ARP). An SSMB
RESET deletes every per-flow entry (one masked delete) and is acknowledged with a CSMB ACK.

CSMB. When the connection comes up the DFS sends HELLO naming its SSMB endpoint; it answers the
CS's HELLO with ACK (or VERS_NEW / VERS_OBSOLETE), applies RESET / ADD_VS / DELETE_VS and answers
QUERY_VS with VS_LIST. While the CS is away, new CS_ASSIST flows fail closed; offloaded flows and
DFS_ASSIST virtual servers keep working.

Robustness. A switch reconnect does not wipe working flows: the DFS re-writes its fixed entries
and groups, asks for every per-flow entry, keeps its own, adopts complete pairs left by an
earlier epoch (so their end is still reported), deletes strays, and reports flows whose entries
the switch lost. An OFPFMFC_TABLE_FULL error drops the failed flow and refuses new flows for a
second; existing flows are untouched.

Shape. :class:`~slbcore.dfs.engine.DfsEngine` takes events (packet-in, REPLY/REAP/NEWFLOW/RESET,
CSMB messages, flow-removed, stats replies, errors, ``tick(now)``) and returns an
:class:`~slbcore.dfs.engine.Output`: os-ken OFP message objects plus SSMB and CSMB messages. It
owns no socket and reads no clock; ``controller.app`` and ``nodes.dfsd`` do the I/O.
"""

from slbcore.dfs.config import ConfigError, DfsConfig, load_config, parse_config
from slbcore.dfs.engine import DfsEngine, FlowEntryStats, Output, SsmbOut

__all__ = [
    "ConfigError",
    "DfsConfig",
    "DfsEngine",
    "FlowEntryStats",
    "Output",
    "SsmbOut",
    "load_config",
    "parse_config",
]
