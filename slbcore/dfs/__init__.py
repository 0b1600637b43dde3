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
side, routed traffic, pool members) go through one lookup function the engine is given: by
default :class:`~slbcore.dfs.config.RouteTable` over the connected subnets and static routes
(longest prefix wins); the daemon can add the routes of its network namespace, read with
pyroute2 (``[routing] kernel_routes``), and re-reads them periodically.

Fixed entries (cookie kinds in :mod:`slbcore.dfs.rules`): table-miss drops (the bridge runs with
``fail_mode=secure``), ARP goes to the controller, unknown IPv4 goes to the controller (when
routing is on), multicast and broadcast are dropped, ICMP to the DFS's own addresses goes to the
controller and other IP to them is dropped, and dispatch entries per virtual server (more
specific wins: exact > any port > any address; a CS_ASSIST TCP server has two, see below; a
switch reconnect rewrites them all). The DFS asks for OFPR_INVALID_TTL packet-ins
(asynchronous configuration), which OVS leaves out by default.

Router. Traffic that is for no virtual server is routed as an IPv4 router would: the first
packet to a destination reaches the DFS, which looks the destination up, resolves the next hop's
MAC (holding a few packets while ARP runs, bounded and counted), installs a per-destination
entry (priority 500, idle timeout ``routing.route_idle``: dec_ttl, our MAC as source, the next
hop's as destination, out of its port) and sends the packet the same way; the rest of that
destination's traffic stays in the switch. No route: ICMP net-unreachable from the ingress
interface's address, counted, and a 5-second drop entry so a flood does not reach the DFS. TTL
expiring: ICMP time-exceeded. Ping to the DFS's own addresses is answered. A neighbour that
moves re-points its destinations; a change of the kernel routes flushes them. ``routing.forward
= false`` restores the drop-everything behaviour.

CS_ASSIST virtual servers. The dispatch entry sends the first packet of an unknown flow to the
controller. For TCP that is the opening SYN (SYN without ACK), matched on ``tcp_flags`` by an
entry one priority above the VS's catch-all: OVS then caches the SYN's "to controller" datapath
megaflow with the TCP flags in its mask, so the handshake ACK misses it and finds the flow's new
entries instead of following the SYN to the DFS (measured with ``bench.bench_dfs``: about 1.85
packet-ins per short connection before, 1.0 after). Any other segment of a TCP connection the
DFS does not know (its entries expired or were reset) is answered with a RST, as a host with no
such connection would (never a RST for a RST; counted as ``unknown_segment_refused``), and no
QUERY is sent: the server does not know that connection either. UDP datagrams of unknown flows
are queried as before. The DFS allocates a flow_id, holds the packet (bounded per flow and in total, drops
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
one weighted bucket per reachable member. OVS runs bucket actions as an action set, which drops
``learn``; so a bucket only tags the packet (reg3 = VS index and member) and resubmits it to
table 1, where the member's entry loads the output port into reg0, runs two ``learn`` actions
that install the connection's forward and reverse entries (same shape as above, idle timeout,
fin timeouts, send-flow-removed, per-VS cookie), then does the DNAT, MAC rewrite and output
itself. Later packets hit the learned entries, so a connection keeps its server and no packet of
it reaches the DFS. Measured on OVS 3.1 (userspace datapath): an OpenFlow 1.3 select group with
no selection method uses ``dp_hash`` over a symmetric L4 hash of the five-tuple, so the bucket
is already per connection; the NX ``selection_method=hash`` group property needs OpenFlow 1.5
and os-ken's OpenFlow 1.3 group-mod cannot carry it, so the DFS relies on the learned entries
for stickiness. Members whose MAC is not yet known are left out until ARP resolves them. The
counts of a DFS_ASSIST connection are what OVS credits its learned entries with: from about its
second packet on, within a packet or two per connection (OVS's datapath cache attributes the
packets that pass while it revalidates after a learn loosely).

Flow end. A flow-removed for one direction makes the DFS delete the other (so both counts are
final), then it sends DELETE with inbound (client -> server, forward entry) and outbound
counts. Learned DFS_ASSIST entries are paired the same way by client address/port and reported
with a DFS-chosen flow_id, so the CS still learns of those flows and their statistics. REAP asks
the switch for the flow's two entries (flow-stats by cookie): if the packet count grew since the
last look the answer is STATS with error CONNALIVE, else the entries are deleted and a plain
STATS is sent. NEWFLOW pre-installs a flow (client side found by route lookup and ARP); an
``orig_src_port`` of 0 means any client port (the entries leave the port out, sit one priority
below exact flows and keep the plain idle timeout, since many connections share them). An SSMB
RESET deletes every per-flow entry (one masked delete) and is acknowledged with a CSMB ACK.

Counter semantics (agreed with :mod:`slbcore.cs.engine`). The byte and packet counts in STATS
and DELETE are the flow's running totals since it was offloaded, per direction (inbound =
client -> server): every STATS repeats everything counted so far, and DELETE carries the final
totals. Totals never go down (a REAP the switch did not answer repeats the last totals), so a
receiver takes the difference from the previous report of the same flow and stays right when a
message is lost or duplicated. Counts come from the switch's entries plus the packets the DFS
itself released after the QUERY.

CSMB. When the connection comes up the DFS sends HELLO naming its SSMB endpoint; it answers the
CS's HELLO with ACK (or VERS_NEW / VERS_OBSOLETE), applies RESET / ADD_VS / DELETE_VS and answers
QUERY_VS with VS_LIST. Each new connection and each accepted HELLO may come from a new CS process
whose SSMB serials start again at zero, so the engine asks the daemon (``Output.ssmb_forget``) to
drop its duplicate-detection state for the CS's SSMB endpoint before anything else is sent;
otherwise a restarted CS's RESET would be discarded as an old duplicate. While the CS is away, new
CS_ASSIST flows fail closed; offloaded flows and DFS_ASSIST virtual servers keep working.

Robustness. A switch reconnect does not wipe working flows: the DFS re-writes its fixed entries
and groups, asks for every per-flow entry, keeps its own, adopts complete pairs left by an
earlier epoch (a restarted daemon; so their end is still reported), deletes strays, and reports
flows whose entries the switch lost. (OVS 3.1 itself flushes the flow table when the bridge's
controller *configuration* changes, ``ovs-vsctl set-controller``/``del-controller``; a dropped
connection, ``ovs-appctl bridge/reconnect`` or a daemon restart keeps it.) An
OFPFMFC_TABLE_FULL error drops the failed flow and refuses new flows for a second; existing
flows are untouched. Each kind of error is counted; the daemon logs the first of each kind.

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
