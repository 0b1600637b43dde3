"""Render ``docs/PROTOCOL.md`` from the message tables, so the doc cannot drift from the code.

python -m slbproto.docgen --write   # regenerate docs/PROTOCOL.md
python -m slbproto.docgen --check   # exit 1 when docs/PROTOCOL.md is stale
"""

from __future__ import annotations

import argparse
import difflib
import enum
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from slbproto import constants as c
from slbproto import csmb, errors, ssmb
from slbproto.hello import TRANSITIONS
from slbproto.layout import Layout, Role

DEFAULT_OUTPUT = Path(__file__).resolve().parent.parent / "docs" / "PROTOCOL.md"
_OCTET_CHARS = 16  # two characters per bit in the diagrams


def bit_diagram(layout: Layout) -> str:
    """RFC-style 32-bit-wide diagram of a layout (variable tail drawn as one row)."""
    rows: dict[int, list[tuple[str, int]]] = {}
    for off, f in layout.rows():
        remaining, pos, part = f.size, off, 0
        parts = (f.size + (off % 4) + 3) // 4
        while remaining:
            take = min(remaining, 4 - pos % 4)
            label = f.name if parts == 1 else f"{f.name} ({part + 1}/{parts})"
            rows.setdefault(pos // 4, []).append((label, take))
            pos, remaining, part = pos + take, remaining - take, part + 1
    rule = "+" + "-+" * 32
    lines = [
        " 0                   1                   2                   3",
        " " + " ".join(str(i % 10) for i in range(32)),
        rule,
    ]
    for row in sorted(rows):
        cells = []
        for label, octets in rows[row]:
            width = octets * _OCTET_CHARS - 1
            cells.append(label[:width].center(width))
        used = sum(octets for _, octets in rows[row])
        text = "|" + "|".join(cells) + "|"
        if used < 4:
            text += " " * ((4 - used) * _OCTET_CHARS - 1) + ":"
        lines += [text, rule if used == 4 else "+" + "-+" * (used * 8)]
    if layout.tail is not None:
        tail = layout.tail
        label = f"{tail.attr} ({tail.length_field} octets"
        label += ", zero-padded to a multiple of 4)" if tail.align > 1 else ")"
        lines += ["/" + label.center(63) + "/", rule]
    return "```\n" + "\n".join(lines) + "\n```"


def offset_table(layout: Layout) -> str:
    """Markdown table: offset, size, field, allowed values, meaning."""
    lines = ["| off | size | field | allowed | meaning |", "|---:|---:|---|---|---|"]
    for off, f in layout.rows():
        role = {Role.CONST: " (fixed per type)", Role.COUNT: " (framing)", Role.LENGTH: " (computed)"}
        lines.append(
            f"| {off} | {f.size} | `{f.name}` | {f.allowed_text()} | {f.meaning}{role.get(f.role, '')} |"
        )
    if layout.tail is not None:
        tail = layout.tail
        lines.append(
            f"| {layout.size} | `{tail.length_field}` | `{tail.attr}` | at most {tail.max_len} octets |"
            f" {tail.meaning} |"
        )
    return "\n".join(lines)


def layout_section(layout: Layout, level: str = "###") -> str:
    """Heading, description, table and diagram of one layout."""
    size = f"{layout.size}" + (f" + {layout.tail.length_field}" if layout.tail else "")
    return "\n\n".join(
        [
            f"{level} {layout.name} ({size} octets)",
            layout.description,
            offset_table(layout),
            bit_diagram(layout),
        ]
    )


def enum_table(cls: type[enum.Enum], meanings: Mapping[Any, str] | None = None) -> str:
    """Markdown table of an enum's values."""
    is_flag = issubclass(cls, enum.Flag)
    head = "| bit | value | name | meaning |" if is_flag else "| value | name | meaning |"
    lines = [head, "|---:|---:|---|---|" if is_flag else "|---:|---|---|"]
    for member in cls:
        meaning = (meanings or {}).get(member, "")
        value = int(member.value)
        if is_flag:
            lines.append(f"| {value.bit_length() - 1} | 0x{value:x} | `{member.name}` | {meaning} |")
        else:
            lines.append(f"| {value} | `{member.name}` | {meaning} |")
    return f"`{cls.__name__}`\n\n" + "\n".join(lines)


def ssmb_semantics_table() -> str:
    """Table I."""
    lines = [
        "| type | code | sent by | priority | batched | state-shared | response | meaning |",
        "|---|---:|---|---|---|---|---|---|",
    ]
    yn = {True: "yes", False: "no"}
    for t, s in c.SSMB_SEMANTICS.items():
        lines.append(
            f"| {t.name} | {int(t)} | {s.sender.value} | {s.priority.value} | {yn[s.batched]} |"
            f" {yn[s.state_shared]} | {s.response or '—'} | {s.explanation} |"
        )
    return "\n".join(lines)


def csmb_semantics_table() -> str:
    """Table IV with the body of each message."""
    bodies = {
        c.CsmbType.ADD_VS: "one VS definition (vs_class 1 or 2)",
        c.CsmbType.DELETE_VS: "one VS definition; only virt_ipaddr, virt_port, proto matter",
        c.CsmbType.QUERY_VS: "none (all) or one VS definition as a filter",
        c.CsmbType.VS_LIST: "zero or more VS definitions, to msg_length",
        c.CsmbType.RESET: "none",
        c.CsmbType.STATUS: "status (4)",
        c.CsmbType.HELLO: "see HELLO below",
        c.CsmbType.ACK: "none; error carries the result",
    }
    lines = ["| type | code | sent by | response | body | meaning |", "|---|---:|---|---|---|---|"]
    for t, s in c.CSMB_SEMANTICS.items():
        lines.append(
            f"| {t.name} | {int(t)} | {s.sender.value} | {s.response or '—'} | {bodies[t]} |"
            f" {s.explanation} |"
        )
    return "\n".join(lines)


def message_class_table(registry: Iterable[tuple[int, type[Any]]]) -> str:
    """Which Python class and layout each type code uses."""
    lines = ["| code | class | layout |", "|---:|---|---|"]
    for code, cls in registry:
        layouts = getattr(cls, "LAYOUTS", None) or (cls.LAYOUT,)
        names = ", ".join(layout.name for layout in layouts)
        lines.append(f"| {code} | `{cls.__module__}.{cls.__name__}` | {names} |")
    return "\n".join(lines)


def error_table() -> str:
    """Every ProtocolError code with its class and meaning."""
    rows = []
    for name in dir(errors):
        obj = getattr(errors, name)
        if isinstance(obj, type) and issubclass(obj, errors.ProtocolError):
            doc = (obj.__doc__ or "").strip().splitlines()[0]
            rows.append(f"| `{obj.code}` | `{obj.__name__}` | {doc} |")
    return "| code | exception | meaning |\n|---|---|---|\n" + "\n".join(sorted(rows))


def transition_table() -> str:
    """The HELLO state machine."""
    lines = ["| state | event | next state |", "|---|---|---|"]
    for (state, event), nxt in TRANSITIONS.items():
        lines.append(f"| {state.value} | {event.value} | {nxt.value} |")
    return "\n".join(lines)


CHOICES = """\
Where the normative spec is silent, this project chose:

1. **Serials are per destination.** `serial_global` counts the messages a sender sent to *that*
   receiver (and `serial_bytype` those of one type), starting at 0 and wrapping modulo 2^16.
   A receiver, including a standby CS that only gets state-shared copies, sees a gapless
   sequence, so its gap counter means lost datagrams. CSMB serials count per connection.
2. **Duplicates and restarts.** A receiver keeps per sender the highest serial and a bitmap of
   the last 1024 (configurable); serials compare modulo 2^16 (RFC 1982). A serial seen before is
   a duplicate and dropped; a serial older than the window is taken as a sender restart (state
   reset, message accepted, counted `restart`). When a peer opens a new CSMB session (new HELLO),
   its owner calls `SsmbReceiver.forget` so a restart with small serials is not taken for duplicates.
3. **QUERY retransmission.** The DFS resends an unanswered QUERY/APP_QUERY every 0.2 s, 3 sends in
   all, then fails the flow closed. A resend carries **fresh serials** (else the CS would drop it
   as a duplicate when only the REPLY was lost) and the same flow_id; the CS answers a QUERY for a
   flow_id it already decided by repeating its REPLY.
4. **Batching.** Only REAP and STATS are batched (table I); they may share a datagram. A batch
   leaves when another 56-octet message would not fit in the MTU payload (default 1472 = 1500 -
   20 - 8), at 255 messages, or 10 ms after its first message. A non-batched message to the same
   destination first flushes the waiting batch, so serials arrive in order. A decoder accepts any
   mix of types in a datagram; messages follow each other without padding.
5. **Strict fields.** Enumerated fields (msg_type, error, vs_class) must hold a defined value and
   flag fields may only set defined bits; anything else is `bad_field`. Pad octets are zero on send
   and ignored on receive. IPv4 addresses are strict dotted quads (no leading zeros).
6. **Sizes.** APP_QUERY may exceed the MTU (at most 44 + 8192 octets) and then relies on IP
   fragmentation. The 8192-octet app_data limit also applies to a VS definition (so a DFS_ASSIST
   pool holds at most 1024 servers). VS definitions are zero-padded to 4 octets, padding counted
   in msg_length and required.
7. **vs_class 0** means "unspecified" and is allowed only in DELETE_VS and a QUERY_VS filter.
8. **HELLO authentication** is present exactly when msg_length > 28; auth_data_len is at most
   1024. See Authentication for what is implemented.
9. **CSMB errors close the connection.** Any protocol error on a CSMB stream is answered with
   ACK(BAD_MESSAGE) and the connection is closed: TCP framing cannot be resynchronised after a
   lying msg_length, and after any rejected configuration message the peers' state may differ.
   The reconnect repeats HELLO, RESET and ADD_VS and so resynchronises.
10. **Project error codes.** CSMB error 3 AUTH_FAILED, 4 BAD_MESSAGE, 5 NOT_SUPPORTED.
11. **Version negotiation.** A HELLO version above our highest is refused with VERS_NEW, below our
    lowest with VERS_OBSOLETE (one inside our range that we do not speak: VERS_NEW). The
    negotiated version is the lower of the two accepted HELLO versions.
12. **Pool entries** (DFS_ASSIST app_data): weight 0 means drain (no new flows).
13. **STATUS** carries a 32-bit word; this project uses 0 for healthy.
"""

AUTH = """\
When both sides hold a shared key (at least 16 octets), HELLO carries
`auth_data = nonce (16) || HMAC-SHA256(key, hello[0:28] || nonce)`, where `hello[0:28]` is the
HELLO as sent up to `auth_data_len` (serials and msg_length included; sign after assigning
serials). A HELLO without valid auth_data is answered ACK(AUTH_FAILED), counted, and the
connection closed.

Implemented in the library: HELLO signing and verification (`slbproto.auth`), wired into the
negotiator (`slbproto.hello`) and the asyncio CSMB connection (`slbproto.transport`).
**Not implemented:** the per-message CSMB and per-datagram SSMB HMAC trailers with replay
sequence numbers, and a key setting in the CS and DFS daemons, which run unauthenticated. Keep
the buses on a trusted network (the testbeds put them on their own management network).
"""

BAD_INPUT = """\
- **SSMB:** `decode_datagram` returns every message of a datagram or raises one ProtocolError;
  `SsmbReceiver.receive` never raises: a bad datagram is dropped whole, counted under its error
  code and `dropped`, and changes no other state. Duplicates are dropped and counted.
- **CSMB:** `StreamDecoder.feed` checks `msg_length` as soon as a header is complete (below 12:
  `bad_length`; above 1 MiB: `length_too_large`) so a lying length never makes it buffer more
  than one maximum message. On any ProtocolError the decoder fails for good (`failed` holds the
  error, later `feed` raises `stream_failed`) and the connection must be closed (choice 9).
- **Caller mistakes** (a field out of range, a non-str address, too much app_data) raise
  `UsageError` when packing; nothing is sent.
"""


def render() -> str:
    """The whole of docs/PROTOCOL.md."""
    s = ssmb
    out = [
        "# CS/DFS message buses: wire format",
        "<!-- Generated by `python -m slbproto.docgen --write` from the tables in slbproto/. "
        "Do not edit by hand; `python -m slbproto.docgen --check` fails when this file is stale. -->",
        "This is the project's protocol reference, generated from the single table each message is "
        "defined by (`slbproto.ssmb`, `slbproto.csmb`, `slbproto.constants`). It implements the "
        "normative wire-format specification and records the choices it leaves open.",
        "## General",
        f"- All integers unsigned, network byte order; IPv4 addresses 4 octets.\n"
        f"- Protocol version {c.PROTOCOL_VERSION[0]}.{c.PROTOCOL_VERSION[1]}.\n"
        f"- Default ports: SSMB UDP {c.DEFAULT_SSMB_PORT}, CSMB TCP {c.DEFAULT_CSMB_PORT}.\n"
        f"- Limits: app_data {c.MAX_APP_DATA_LEN} octets; CSMB msg_length {c.MAX_CSMB_LENGTH} octets; "
        f"SSMB count {c.MAX_SSMB_COUNT}.\n"
        f"- Defaults: batch delay {c.DEFAULT_BATCH_DELAY * 1000:g} ms, MTU payload "
        f"{c.DEFAULT_SSMB_MTU_PAYLOAD} octets, QUERY tries {c.DEFAULT_QUERY_TRIES} every "
        f"{c.DEFAULT_QUERY_INTERVAL:g} s; NEWFLOW flow ids have bit 0x{c.NEWFLOW_ID_BIT:08x} set.",
        "## SSMB: per-flow messages (UDP)",
        "A datagram holds `count` messages back to back (1 when not batched); every header repeats "
        "the same count. A count of 0, headers that disagree, fewer messages than count, or octets "
        "after the last message make the whole datagram invalid.",
        message_class_table(s.REGISTRY),
        layout_section(s.HEADER_LAYOUT),
        layout_section(s.FLOW_LAYOUT),
        layout_section(s.APP_QUERY_LAYOUT),
        layout_section(s.ENDFLOW_LAYOUT),
        layout_section(s.RESET_LAYOUT),
        "### SSMB enumerations",
        enum_table(c.SsmbType),
        enum_table(c.SsmbError, c.SSMB_ERROR_MEANING),
        enum_table(c.FlowFlag, c.FLOW_FLAG_MEANING),
        "### Semantics (table I)",
        ssmb_semantics_table(),
        "High priority: sent at once, alone in its datagram. Low priority: batched types may wait "
        "up to the batch delay to share a datagram. State-shared types are also sent to the standby "
        "CS when REDUNDANT is set.",
        "## CSMB: configuration messages (TCP)",
        "Each message starts with the 12-octet header; `msg_length` (header included) delimits it "
        f"in the stream and is between {c.CSMB_HEADER_LEN} and {c.MAX_CSMB_LENGTH}.",
        message_class_table(csmb.REGISTRY),
        csmb_semantics_table(),
        layout_section(csmb.HEADER_LAYOUT),
        layout_section(csmb.VS_LAYOUT),
        layout_section(csmb.POOL_ENTRY_LAYOUT),
        layout_section(csmb.HELLO_LAYOUT),
        layout_section(csmb.HELLO_AUTH_LAYOUT),
        layout_section(csmb.STATUS_LAYOUT),
        "### CSMB enumerations",
        enum_table(c.CsmbType),
        enum_table(c.CsmbError, c.CSMB_ERROR_MEANING),
        enum_table(c.VsFlag, c.VS_FLAG_MEANING),
        enum_table(c.VsClass, c.VS_CLASS_MEANING),
        "## HELLO negotiation",
        "Either side sends HELLO; the peer answers ACK with error OK, VERS_NEW (retry lower) or "
        "VERS_OBSOLETE (retry higher). A DFS connects and sends HELLO first; the CS answers ACK, "
        "sends its own HELLO, then RESET and one ADD_VS per virtual server. Our HELLO moves through:",
        transition_table(),
        "A refused peer HELLO changes nothing but counters. The session is established when our "
        "HELLO was acknowledged and the peer's accepted.",
        "## Authentication",
        AUTH,
        "## Errors",
        "Every rejected input raises a `ProtocolError` subclass whose `code` is the counter key:",
        error_table(),
        "## Bad input",
        BAD_INPUT,
        "## Choices made by this project",
        CHOICES,
    ]
    return "\n\n".join(part.strip("\n") for part in out) + "\n"


def main(argv: list[str] | None = None) -> int:
    """CLI: --write regenerates, --check compares; exit status 1 when stale."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--check", action="store_true", help="fail if the file is stale")
    mode.add_argument("--write", action="store_true", help="rewrite the file")
    mode.add_argument("--stdout", action="store_true", help="print the document")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args(argv)
    text = render()
    if args.stdout:
        sys.stdout.write(text)
        return 0
    if args.write:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text, encoding="utf-8")
        return 0
    current = args.output.read_text(encoding="utf-8") if args.output.exists() else ""
    if current == text:
        return 0
    diff = difflib.unified_diff(
        current.splitlines(), text.splitlines(), str(args.output), "generated", lineterm="", n=1
    )
    sys.stderr.write("\n".join(list(diff)[:40]) + "\n")
    sys.stderr.write(f"{args.output} is stale: run python -m slbproto.docgen --write\n")
    return 1


if __name__ == "__main__":
    sys.exit(main())
