"""The CS benchmark's pure pieces: peer-level parsing, the patched QUERY template, REPLY recognition."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from bench.bench_cs import QueryTemplate, parse_levels, reply_flow_id
from slbproto import ssmb
from slbproto.constants import SsmbError, SsmbType
from slbproto.peer import SerialCounter

pytestmark = pytest.mark.unit


def test_parse_levels() -> None:
    assert parse_levels("1,2,4,8") == [1, 2, 4, 8]
    assert parse_levels("3") == [3]
    for bad in ("", "0", "a", "2,2", "1,-1", "100000"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_levels(bad)


def test_query_template_matches_the_encoder() -> None:
    template = QueryTemplate()
    template.check()
    mine, reference = SerialCounter(start=65534), SerialCounter(start=65534)
    for i, client in ((1, 0), (2, 300), (0x7FFF_FFFE, 65535 + 7)):
        (msg,) = ssmb.decode_datagram(template.make(mine, i, client))
        assert isinstance(msg, ssmb.Query)
        g, t = reference.next(SsmbType.QUERY)
        # serials wrap like slbproto's own counter
        assert (msg.serial_global, msg.serial_bytype, msg.flow_id) == (g, t, i)
        assert msg.orig_src_ipaddr == f"198.51.{(client >> 8) & 255}.{client & 255}"
        assert msg.orig_src_port == 1024 + client % 60000
        assert (msg.orig_dst_ipaddr, msg.orig_dst_port, msg.proto) == ("10.0.0.100", 80, 6)


def test_reply_flow_id() -> None:
    reply = ssmb.Reply("198.51.100.1", "10.0.0.100", 1000, 80, flow_id=77, error=SsmbError.OK)
    data = ssmb.encode_datagram([reply])
    assert reply_flow_id(data, SsmbType.REPLY) == 77
    assert reply_flow_id(data, SsmbType.QUERY) is None
    refused = ssmb.encode_datagram([dataclasses.replace(reply, error=SsmbError.NOTAVAIL)])
    assert reply_flow_id(refused, SsmbType.REPLY) is None, "a refusal is not a served QUERY"
    assert reply_flow_id(data[:-1], SsmbType.REPLY) is None
    assert reply_flow_id(ssmb.encode_datagram([reply, reply]), SsmbType.REPLY) is None
