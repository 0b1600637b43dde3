"""docs/PROTOCOL.md is generated from the message tables and must be current."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from slbproto import csmb, docgen, ssmb

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


def test_protocol_doc_is_current() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "slbproto.docgen", "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_check_fails_on_stale_file(tmp_path: Path) -> None:
    stale = tmp_path / "PROTOCOL.md"
    stale.write_text("old\n")
    assert docgen.main(["--check", "--output", str(stale)]) == 1
    assert docgen.main(["--write", "--output", str(stale)]) == 0
    assert docgen.main(["--check", "--output", str(stale)]) == 0


def test_doc_lists_every_field_at_its_offset() -> None:
    text = docgen.render()
    for layout in (
        ssmb.FLOW_LAYOUT,
        ssmb.ENDFLOW_LAYOUT,
        ssmb.APP_QUERY_LAYOUT,
        csmb.HELLO_LAYOUT,
        csmb.VS_LAYOUT,
    ):
        for off, field in layout.rows():
            assert f"| {off} | {field.size} | `{field.name}` |" in text


def test_bit_diagram_rows_are_32_bits_wide() -> None:
    for layout in (ssmb.ENDFLOW_LAYOUT, csmb.HEADER_LAYOUT, csmb.HELLO_AUTH_LAYOUT):
        diagram = docgen.bit_diagram(layout).splitlines()
        rows = [line for line in diagram if line.startswith("|")]
        assert rows and all(len(line) == 65 for line in rows)
    assert "inbound_bytes (1/2)" in docgen.bit_diagram(ssmb.ENDFLOW_LAYOUT)
