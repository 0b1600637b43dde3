"""Write the configuration documents this project generates as TOML (the standard library only reads it)."""

from __future__ import annotations

import json
import math
from typing import Any


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"cannot write {value!r} as TOML")
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{_key(k)} = {_scalar(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_scalar(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def _key(key: str) -> str:
    return key if key.replace("_", "").replace("-", "").isalnum() else json.dumps(key)


def _is_table_array(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def _emit(doc: dict[str, Any], path: list[str], out: list[str]) -> None:
    for k, v in doc.items():
        if not isinstance(v, dict) and not _is_table_array(v):
            out.append(f"{_key(k)} = {_scalar(v)}")
    for k, v in doc.items():
        if isinstance(v, dict):
            name = ".".join(_key(p) for p in [*path, k])
            out.append(f"\n[{name}]")
            _emit(v, [*path, k], out)
        elif _is_table_array(v):
            name = ".".join(_key(p) for p in [*path, k])
            for item in v:
                out.append(f"\n[[{name}]]")
                _emit(item, [*path, k], out)


def dumps(doc: dict[str, Any]) -> str:
    """Render a document of tables, arrays of tables and scalars as TOML text."""
    out: list[str] = []
    _emit(doc, [], out)
    return "\n".join(out).lstrip("\n") + "\n"
