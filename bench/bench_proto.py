"""Encode/decode rate of every message type, next to plain struct pack/unpack of the same layout.

The ceiling is what the standard library's precompiled ``struct.Struct`` alone achieves on the
message's fixed layout (values already converted, no objects, no validation); the ratio says
how much slower the full codec is. Codec and ceiling are timed in interleaved rounds and each
keeps its best, so the ratio holds on a shared, noisy machine. Single core, bounded duration.

    python bench/bench_proto.py            # ~30 s
    python bench/bench_proto.py --quick    # ~3 s, for CI
    python bench/bench_proto.py --json out.json
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import struct
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from slbproto import csmb, ssmb
from slbproto.constants import CsmbError, FlowFlag, SsmbError, VsClass, VsFlag
from slbproto.csmb import PoolEntry, encode_pool
from slbproto.layout import clear_ipv4_memo

FLOW = dict(
    orig_src_ipaddr="198.51.100.23",
    orig_dst_ipaddr="10.0.0.100",
    orig_src_port=51234,
    orig_dst_port=443,
    tos=0,
    proto=6,
    flags=FlowFlag.ADD_TCP_OFFSET,
    tcp_flags=0x02,
)
TARGET = dict(new_dst_ipaddr="10.0.1.7", new_dst_port=8443, next_hop_ipaddr="10.0.1.7")
OFFSETS = dict(svr_seq_offset=1, svr_ack_offset=2, client_seq_offset=3, client_ack_offset=4)
COUNTERS = dict(inbound_bytes=123456, outbound_bytes=7654321, inbound_pkts=100, outbound_pkts=900)
VS = csmb.VirtualServer(
    VsFlag.TRANSLATE_ADDR | VsFlag.TRANSLATE_PORT,
    "10.0.0.100",
    443,
    VsClass.DFS_ASSIST,
    6,
    encode_pool([PoolEntry("10.0.1.7", 8443, 1)] * 4),
)

SSMB_CASES: list[ssmb.SsmbMessage] = [
    ssmb.Query(**FLOW, flow_id=42, serial_global=7),  # type: ignore[arg-type]
    ssmb.AppQuery(**FLOW, flow_id=42, app_data=b"SID=0123456789abcdef"),  # type: ignore[arg-type]
    ssmb.Reply(**FLOW, **TARGET, **OFFSETS, flow_id=42, error=SsmbError.OK),  # type: ignore[arg-type]
    ssmb.Delete(**FLOW, **COUNTERS, flow_id=42),  # type: ignore[arg-type]
    ssmb.Reap(**FLOW, **TARGET, flow_id=42),  # type: ignore[arg-type]
    ssmb.Stats(**FLOW, **COUNTERS, flow_id=42, error=SsmbError.CONNALIVE),  # type: ignore[arg-type]
    ssmb.NewFlow(**FLOW, **TARGET, flow_id=0x80000001),  # type: ignore[arg-type]
    ssmb.Reset(serial_global=3),
]
CSMB_CASES: list[tuple[csmb.CsmbMessage, str]] = [
    (csmb.AddVs(VS), ">HHIBxH" + "I4sHBBxxH"),
    (csmb.Hello("10.0.0.1", "10.0.0.2", VsFlag.APP_PROXY | VsFlag.REDUNDANT, 1, 0, 7700), ">HHIBxH4s4sIBBH"),
    (csmb.Status(0), ">HHIBxHI"),
    (csmb.Ack(error=CsmbError.VERS_NEW), ">HHIBxH"),
]


def loop_seconds(fn: Callable[[], object], number: int) -> float:
    """Seconds for ``number`` calls of fn."""
    start = time.perf_counter()
    for _ in range(number):
        fn()
    return time.perf_counter() - start


def calibrate(fn: Callable[[], object], seconds: float) -> int:
    """A call count that takes about ``seconds``."""
    number = 1
    while True:
        elapsed = loop_seconds(fn, number)
        if elapsed >= seconds / 2 or number >= 1 << 24:
            return max(1, int(number * seconds / max(elapsed, 1e-9)))
        number *= 8 if elapsed < seconds / 64 else 2


def best_rates(fns: Sequence[Callable[[], object]], budget: float, rounds: int) -> list[float]:
    """Calls per second of each fn, best of ``rounds`` rounds that interleave all of them.

    On a shared, noisy machine a codec and its ceiling measured minutes apart are not
    comparable; measured side by side in every round and keeping each one's best, they are.
    """
    per_loop = budget / (len(fns) * rounds)
    numbers = [calibrate(fn, per_loop) for fn in fns]
    best = [float("inf")] * len(fns)
    for _ in range(rounds):
        for i, (fn, number) in enumerate(zip(fns, numbers, strict=True)):
            best[i] = min(best[i], loop_seconds(fn, number) / number)
    return [1.0 / b for b in best]


@dataclass
class Row:
    bus: str
    message: str
    octets: int
    encode_per_s: float
    pack_ceiling_per_s: float
    decode_per_s: float
    unpack_ceiling_per_s: float

    @property
    def encode_ratio(self) -> float:
        return self.pack_ceiling_per_s / self.encode_per_s

    @property
    def decode_ratio(self) -> float:
        return self.unpack_ceiling_per_s / self.decode_per_s


def measure_one(
    bus: str,
    name: str,
    wire: bytes,
    encode: Callable[[], object],
    decode: Callable[[], object],
    layout: struct.Struct,
    budget: float,
    rounds: int,
) -> Row:
    """One row: the codec against bare struct on the same fixed layout, interleaved."""
    values = layout.unpack_from(wire)
    tail = wire[layout.size :]
    size = layout.size
    enc, pack, dec, unpack = best_rates(
        [
            encode,
            lambda: layout.pack(*values) + tail,
            decode,
            lambda: (layout.unpack_from(wire), wire[size:]),
        ],
        budget,
        rounds,
    )
    return Row(bus, name, len(wire), enc, pack, dec, unpack)


def measure(budget: float, rounds: int) -> list[Row]:
    """Every SSMB case, then every CSMB case."""
    rows = []
    for msg in SSMB_CASES:
        wire = ssmb.encode_datagram([msg])
        rows.append(
            measure_one(
                "SSMB",
                type(msg).__name__,
                wire,
                functools.partial(ssmb.encode_datagram, [msg]),
                functools.partial(ssmb.decode_datagram, wire),
                type(msg).LAYOUT.struct,
                budget,
                rounds,
            )
        )
    # The same QUERY with the IPv4 memos emptied before every call: the cost of addresses
    # never seen before (a new client's first message).
    query = SSMB_CASES[0]
    wire = ssmb.encode_datagram([query])

    def cold_encode() -> object:
        clear_ipv4_memo()
        return ssmb.encode_datagram([query])

    def cold_decode() -> object:
        clear_ipv4_memo()
        return ssmb.decode_datagram(wire)

    rows.append(
        measure_one("SSMB", "Query/new", wire, cold_encode, cold_decode, query.LAYOUT.struct, budget, rounds)
    )
    for cmsg, fmt in CSMB_CASES:
        wire = csmb.encode_message(cmsg)
        rows.append(
            measure_one(
                "CSMB",
                type(cmsg).__name__,
                wire,
                functools.partial(csmb.encode_message, cmsg),
                functools.partial(csmb.decode_message, wire),
                struct.Struct(fmt),
                budget,
                rounds,
            )
        )
    return rows


def table(rows: list[Row]) -> str:
    head = (
        f"{'bus':4} {'message':10} {'octets':>6} {'encode/s':>10} {'pack/s':>10} {'ratio':>6}"
        f" {'decode/s':>10} {'unpack/s':>10} {'ratio':>6}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r.bus:4} {r.message:10} {r.octets:6d} {r.encode_per_s:10,.0f} "
            f"{r.pack_ceiling_per_s:10,.0f} {r.encode_ratio:6.1f} {r.decode_per_s:10,.0f} "
            f"{r.unpack_ceiling_per_s:10,.0f} {r.decode_ratio:6.1f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="slbproto encode/decode benchmark")
    parser.add_argument("--quick", action="store_true", help="about one second in total (CI)")
    parser.add_argument("--json", type=Path, help="write results as JSON to this path")
    parser.add_argument(
        "--rounds", type=int, default=0, help="interleaved rounds per case (default 3, quick 2)"
    )
    args = parser.parse_args(argv)
    rounds = args.rounds or (2 if args.quick else 3)
    cases = len(SSMB_CASES) + 1 + len(CSMB_CASES)
    budget = (1.5 if args.quick else 15.0) / cases / 2  # calibration costs about as much again
    started = time.perf_counter()
    rows = measure(budget, rounds)
    print(table(rows))
    worst = max(rows, key=lambda r: max(r.encode_ratio, r.decode_ratio))
    worst_ratio = max(worst.encode_ratio, worst.decode_ratio)
    print("ratio = struct ceiling / codec rate (1.0 = as fast as bare struct)")
    print(f"worst ratio {worst_ratio:.1f} ({worst.bus} {worst.message})")
    print(f"total {time.perf_counter() - started:.1f} s, python {platform.python_version()}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "python": platform.python_version(),
                    "machine": platform.machine(),
                    "quick": args.quick,
                    "rounds": rounds,
                    "worst_ratio": round(worst_ratio, 2),
                    "worst_encode_ratio": round(max(r.encode_ratio for r in rows), 2),
                    "worst_decode_ratio": round(max(r.decode_ratio for r in rows), 2),
                    "results": [
                        {
                            **asdict(r),
                            "encode_ratio": round(r.encode_ratio, 2),
                            "decode_ratio": round(r.decode_ratio, 2),
                        }
                        for r in rows
                    ],
                },
                indent=2,
            )
            + "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
