"""Control Segment logic, pure: configuration, server selection, health, flows, CSMB sessions.

- :mod:`slbcore.cs.config`: TOML configuration -> validated dataclasses (``load_config``, ``ConfigError``).
- :mod:`slbcore.cs.balance`: round robin, smooth weighted round robin, least connections, source hash, Maglev.
- :mod:`slbcore.cs.health`: rise/fall health state machine.
- :mod:`slbcore.cs.flows`, :mod:`slbcore.cs.persistence`, :mod:`slbcore.cs.ratelimit`: bounded tables.
- :mod:`slbcore.cs.engine`: :class:`ControlSegment`, ``handle(message, sender, now) -> outgoing``.
- :mod:`slbcore.cs.session`: :class:`DfsSession`, the CS side of one CSMB conversation.

The daemon that owns the sockets is ``nodes/csd.py``.
"""

from slbcore.cs.config import ConfigError, CsConfig, load_config, parse_config, parse_config_text
from slbcore.cs.engine import ControlSegment, HealthTarget, ResetAck, SsmbOut, VsChange
from slbcore.cs.session import DfsSession, SessionOutput, SessionState

__all__ = [
    "ConfigError",
    "ControlSegment",
    "CsConfig",
    "DfsSession",
    "HealthTarget",
    "ResetAck",
    "SessionOutput",
    "SessionState",
    "SsmbOut",
    "VsChange",
    "load_config",
    "parse_config",
    "parse_config_text",
]
