"""The Control Segment daemon: sockets, timers and signals around ``slbcore.cs``.

::

    python -m nodes.csd --config FILE [--log-file PATH] [--pid-file PATH] [--log-level info]
    python -m nodes.csd --check --config FILE       # validate only; exit 0 or 1 with the problems

It listens on CSMB (TCP), SSMB (UDP) and a local HTTP status endpoint, and logs
``READY csmb=IP:PORT ssmb=IP:PORT status=IP:PORT`` once all three are bound (ports 0 in the
configuration mean "any free port"; the READY line tells which). SIGHUP, ``POST /reload`` or
``cs reload`` re-read the configuration: a file that fails validation is refused with its
problems and the running configuration stays. SIGTERM and SIGINT stop it cleanly.

Everything the daemon does per message is decided by :class:`slbcore.cs.engine.ControlSegment`
and :class:`slbcore.cs.session.DfsSession`; this module only moves bytes and calls them with the
time. A bad datagram or CSMB message is counted (``/status`` counters) and never stops the daemon.

Status endpoint (JSON; GET unless noted): ``/status``, ``/flows[?limit=N]``, ``/servers``, ``/vs``,
POST ``/drain/<server>``, POST ``/undrain/<server>`` (``<server>`` or ``<vs>/<server>``), POST ``/reload``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import sys
import time
import urllib.parse
from pathlib import Path
from typing import Any

from nodes.health import HealthProber
from slbcore.cs.config import ConfigError, CsConfig, load_config
from slbcore.cs.engine import ControlSegment, HealthTarget, ResetAck, SsmbOut, VsChange
from slbcore.cs.session import DfsSession
from slbproto import transport
from slbproto.peer import SsmbReceiver, SsmbSender

log = logging.getLogger("csd")
# Readiness is what supervisors wait for: its logger passes INFO whatever the configured log level.
ready_log = logging.getLogger("csd.ready")
ready_log.setLevel(logging.INFO)

HTTP_TIMEOUT = 5.0
# A DFS that stops reading must not make the CS buffer its configuration stream forever.
CSMB_WRITE_HIGH_WATER = 4 * 1024 * 1024
# A connection that has not completed HELLO by then is closed (it holds a socket and a session).
HELLO_DEADLINE = 30.0
MAX_CSMB_CONNECTIONS = 1024


class CsCsmbConnection(transport.CsmbConnection):
    """One DFS's CSMB connection: slbproto's framing, serials and HELLO, with a DfsSession behind it."""

    def __init__(self, daemon: CsDaemon) -> None:
        super().__init__(self._on_csmb_message, on_established=self._on_established, on_close=self._on_closed)
        self.daemon = daemon
        self.session: DfsSession | None = None
        self.label = "?"
        self._hello_timer: asyncio.TimerHandle | None = None

    def connection_made(self, tr: asyncio.BaseTransport) -> None:
        """Build the session (it needs the local address for HELLO), then let slbproto take over."""
        peer = tr.get_extra_info("peername") or ("0.0.0.0", 0)
        local = tr.get_extra_info("sockname") or ("0.0.0.0", 0)
        settings = self.daemon.cs.settings
        advertise = settings.ssmb_advertise
        if advertise is None:
            advertise = settings.ssmb_listen if settings.ssmb_listen != "0.0.0.0" else str(local[0])
        self.label = f"{peer[0]}:{peer[1]}"
        self.session = DfsSession(
            self.daemon.cs,
            (str(peer[0]), int(peer[1])),
            local_ssmb_ip=advertise,
            ssmb_port=self.daemon.ssmb_port,
            standby_ip=settings.standby,
        )
        self.negotiator = self.session.negotiator
        self.daemon.cs.counters["csmb_connections"] += 1
        if len(self.daemon.connections) >= MAX_CSMB_CONNECTIONS:
            self.daemon.cs.counters["csmb_refused_too_many"] += 1
            log.warning(
                "CSMB connection from %s refused: %d connections open", self.label, MAX_CSMB_CONNECTIONS
            )
            tr.close()
            return
        self.daemon.connections.add(self)
        log.info("CSMB connection from %s", self.label)
        self._hello_timer = asyncio.get_running_loop().call_later(HELLO_DEADLINE, self._hello_overdue)
        super().connection_made(tr)

    def _hello_overdue(self) -> None:
        self._hello_timer = None
        if self.session is not None and not self.session.established:
            self.daemon.cs.counters["csmb_hello_timeout"] += 1
            log.warning("CSMB %s: no completed HELLO within %gs; closing", self.label, HELLO_DEADLINE)
            self.close()

    def send_all(self, messages: list[Any]) -> None:
        """Send messages (serials stamped by slbproto); close a peer that stopped reading."""
        for msg in messages:
            self.send(msg)
        tr = self.transport
        if tr is not None and not tr.is_closing() and tr.get_write_buffer_size() > CSMB_WRITE_HIGH_WATER:
            log.warning("CSMB %s is not reading; closing", self.label)
            self.daemon.cs.counters["csmb_slow_peer_closed"] += 1
            self.close()

    def _on_established(self, _conn: transport.CsmbConnection) -> None:
        assert self.session is not None
        if self._hello_timer is not None:
            self._hello_timer.cancel()
            self._hello_timer = None
        was_standby = self.daemon.cs.role == "standby"
        out = self.session.mark_established(self.daemon.now())
        if was_standby and self.daemon.cs.role == "active":
            log.warning(
                "taking over as the active CS: DFS %s turned to this standby (%d replicated flows)",
                self.label,
                len(self.daemon.cs.flows),
            )
        endpoint = self.session.dfs_endpoint
        if endpoint is not None:
            # A (re)connecting DFS restarts its SSMB serials.
            self.daemon.ssmb_receiver.forget(endpoint)
        log.info(
            "DFS %s established (SSMB %s)", self.label, f"{endpoint[0]}:{endpoint[1]}" if endpoint else "?"
        )
        self.send_all(out.csmb)
        self.daemon.send_ssmb(out.ssmb)

    def _on_csmb_message(self, _conn: transport.CsmbConnection, msg: Any) -> None:
        assert self.session is not None
        out = self.session.on_message(msg, self.daemon.now())
        self.send_all(out.csmb)
        self.daemon.send_ssmb(out.ssmb)
        if out.close:
            log.warning("CSMB %s closed: %s", self.label, out.reason)
            self.close()

    def _on_closed(self, _conn: transport.CsmbConnection, reason: BaseException | None) -> None:
        if self._hello_timer is not None:
            self._hello_timer.cancel()
            self._hello_timer = None
        if self.session is not None:
            self.session.closed()
        self.daemon.connections.discard(self)
        for key, value in self.counters.items():
            if key not in ("received", "sent") and value:
                # Protocol errors that closed the stream (truncated, bad_length, ...) and callback failures.
                self.daemon.cs.counters[f"csmb_{key}"] += value
        log.info("CSMB connection from %s closed%s", self.label, f": {reason}" if reason else "")


class CsDaemon:
    """The running CS: engine, sockets, timers."""

    def __init__(self, config_path: Path, config: CsConfig) -> None:
        self.config_path = config_path
        self.cs = ControlSegment(config, self.now())
        self.ssmb_receiver = SsmbReceiver()
        self.ssmb_sender = SsmbSender(batch_delay=config.settings.batch_delay)
        self.connections: set[CsCsmbConnection] = set()
        self.prober = HealthProber(self._on_health)
        self.ssmb: transport.SsmbEndpoint | None = None
        self.ssmb_port = 0
        self.bound: dict[str, str] = {}
        self._servers: list[asyncio.AbstractServer] = []
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._ticker: asyncio.Task[None] | None = None

    @staticmethod
    def now() -> float:
        """Monotonic seconds (the clock asyncio's loop and slbproto's endpoint use too)."""
        return time.monotonic()

    # ------------------------------------------------------------------ startup

    async def start(self) -> None:
        """Bind every socket, start timers and probes, log READY."""
        loop = asyncio.get_running_loop()
        s = self.cs.settings
        self.ssmb = await transport.open_ssmb_endpoint(
            (s.ssmb_listen, s.ssmb_port), self._on_ssmb, receiver=self.ssmb_receiver, sender=self.ssmb_sender
        )
        assert self.ssmb.transport is not None
        with contextlib.suppress(OSError):
            self.ssmb.transport.get_extra_info("socket").setsockopt(
                socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20
            )
        ssmb_addr = self.ssmb.local_address
        self.ssmb_port = int(ssmb_addr[1])
        if s.standby:
            self.ssmb_sender.standby = (s.standby, self.ssmb_port)
        csmb_server = await transport.start_csmb_server(
            s.csmb_listen, s.csmb_port, lambda: CsCsmbConnection(self)
        )
        http_server = await asyncio.start_server(
            self._on_http, s.status_listen, s.status_port, reuse_address=True
        )
        self._servers = [csmb_server, http_server]
        csmb_addr = csmb_server.sockets[0].getsockname()
        http_addr = http_server.sockets[0].getsockname()
        self.bound = {
            "csmb": f"{csmb_addr[0]}:{csmb_addr[1]}",
            "ssmb": f"{ssmb_addr[0]}:{ssmb_addr[1]}",
            "status": f"{http_addr[0]}:{http_addr[1]}",
        }
        self.prober.update(self.cs.health_targets())
        self._ticker = loop.create_task(self._tick_loop(), name="cs ticker")
        ready_log.info(
            "READY csmb=%s ssmb=%s status=%s vs=%d",
            self.bound["csmb"],
            self.bound["ssmb"],
            self.bound["status"],
            len(self.cs.vs),
        )

    async def serve(self) -> None:
        """Run until stop() is called."""
        await self._stop.wait()
        await self.shutdown()

    def stop(self) -> None:
        """Ask the daemon to stop (called from signal handlers on the loop)."""
        self._stop.set()

    async def shutdown(self) -> None:
        """Close everything; waiting REAP batches are flushed first."""
        log.info("stopping")
        await self.prober.close()
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        for server in self._servers:
            server.close()
        for conn in list(self.connections):
            conn.close()
        for server in self._servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 2.0)
        if self.ssmb is not None:
            self.ssmb.close()
        log.info("stopped")

    # ------------------------------------------------------------------ SSMB

    def _on_ssmb(self, msg: Any, sender: tuple[str, int]) -> None:
        out = self.cs.handle(msg, sender, self.now())
        if out:
            self.dispatch(out)

    def dispatch(self, out: list[Any]) -> None:
        """Send engine output: SSMB messages, and CSMB ACKs for SSMB RESETs."""
        ssmb_out: list[SsmbOut] = []
        for item in out:
            if isinstance(item, ResetAck):
                for conn in list(self.connections):
                    if conn.session is not None and conn.session.dfs_endpoint == item.dfs:
                        conn.send_all(conn.session.reset_ack())
            else:
                ssmb_out.append(item)
        self.send_ssmb(ssmb_out)

    def send_ssmb(self, out: list[SsmbOut]) -> None:
        """Send SSMB messages through slbproto's endpoint (serials, batching, standby copies)."""
        if self.ssmb is None:
            return
        for item in out:
            try:
                self.ssmb.send(item.message, item.dest)
            except OSError as exc:
                self.cs.counters["ssmb_send_errors"] += 1
                log.debug("SSMB send to %s:%s failed: %s", item.dest[0], item.dest[1], exc)

    async def _tick_loop(self) -> None:
        while True:
            try:
                self.dispatch(self.cs.tick(self.now()))
            except Exception:
                log.exception("timer processing failed")
            self._wake.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.cs.settings.reap_interval)

    # ------------------------------------------------------------------ CSMB

    def announce(self, changes: list[VsChange]) -> None:
        """Send ADD_VS/DELETE_VS to every established DFS."""
        if not changes:
            return
        for conn in list(self.connections):
            if conn.session is not None:
                conn.send_all(conn.session.announce(changes))

    # ------------------------------------------------------------------ health, drain, reload

    def _on_health(self, target: HealthTarget, ok: bool, detail: str) -> None:
        server = self.cs.vs.get(target.vs)
        before = server.servers.get(target.server) if server else None
        was = before.state if before else None
        changes = self.cs.health_result(target.vs, target.server, ok, self.now(), detail)
        after = before.state if before else None
        if was != after:
            log.info("health %s/%s: %s -> %s (%s)", target.vs, target.server, was, after, detail)
        self.announce(changes)

    def set_drain(self, ref: str, drain: bool) -> list[str]:
        """Drain or undrain; returns the servers affected."""
        matched, changes = self.cs.set_drain(ref, drain)
        if matched:
            log.info("%s %s", "drain" if drain else "undrain", ", ".join(matched))
        self.announce(changes)
        return matched

    def reload(self) -> dict[str, Any]:
        """Re-read the configuration file; raise ConfigError (old configuration kept) if it is invalid."""
        try:
            config = load_config(self.config_path)
        except ConfigError as exc:
            self.cs.counters["reload_failed"] += 1
            log.error("reload refused, keeping the running configuration:\n%s", exc)
            raise
        old = self.cs.settings
        changes = self.cs.reload(config, self.now())
        new = config.settings
        moved = [
            k
            for k in ("csmb_listen", "csmb_port", "ssmb_listen", "ssmb_port", "status_listen", "status_port")
            if getattr(old, k) != getattr(new, k)
        ]
        if moved:
            log.warning("reload: listen settings (%s) change only on restart", ", ".join(moved))
        self.ssmb_sender.batch_delay = new.batch_delay
        self.ssmb_sender.standby = (new.standby, self.ssmb_port) if new.standby else None
        self.prober.update(self.cs.health_targets())
        self.announce(changes)
        log.info("reloaded %s: %d change(s)", self.config_path, len(changes))
        self._wake.set()
        return {
            "config": str(self.config_path),
            "changes": [{"kind": c.kind, "name": c.name} for c in changes],
            "ignored_until_restart": moved,
        }

    # ------------------------------------------------------------------ status HTTP

    def status(self) -> dict[str, Any]:
        """The ``/status`` document."""
        doc = self.cs.status(self.now())
        doc["listen"] = dict(self.bound)
        doc["ssmb_receiver"] = dict(self.ssmb_receiver.counters)
        doc["ssmb_sender"] = dict(self.ssmb_sender.counters)
        if self.ssmb is not None:
            doc["ssmb_endpoint"] = dict(self.ssmb.counters)
        doc["health_probes"] = self.prober.targets
        doc["csmb_sessions"] = [
            {
                "peer": c.label,
                "state": c.session.state.value,
                "version": _fmt_pair(c.session.negotiator.version, "."),
                "ssmb": _fmt_pair(c.session.dfs_endpoint, ":"),
                "counters": {**c.counters, **c.session.counters, **c.session.negotiator.counters},
            }
            for c in list(self.connections)
            if c.session is not None
        ]
        return doc

    def route(self, method: str, target: str) -> tuple[int, Any]:
        """Answer one status request: (HTTP status, JSON body)."""
        url = urllib.parse.urlsplit(target)
        path = url.path.rstrip("/") or "/"
        query = urllib.parse.parse_qs(url.query)
        if method == "GET":
            if path in ("/", "/status"):
                return 200, self.status()
            if path == "/flows":
                try:
                    limit = int(query.get("limit", ["1000"])[0])
                except ValueError:
                    return 400, {"error": "limit must be an integer"}
                return 200, self.cs.flow_rows(max(0, min(limit, 100_000)))
            if path == "/servers":
                return 200, self.cs.server_rows()
            if path == "/vs":
                return 200, self.cs.vs_rows()
        if method == "POST":
            for action in ("drain", "undrain"):
                prefix = f"/{action}/"
                if path.startswith(prefix):
                    ref = urllib.parse.unquote(path[len(prefix) :])
                    matched = self.set_drain(ref, action == "drain")
                    if not matched:
                        return 404, {"error": f"no real server {ref!r}"}
                    return 200, {"servers": matched}
            if path == "/reload":
                try:
                    return 200, self.reload()
                except ConfigError as exc:
                    return 422, {
                        "error": "configuration refused, the running one is kept",
                        "problems": [str(p) for p in exc.problems],
                    }
        if path in ("/", "/status", "/flows", "/servers", "/vs", "/reload") or path.startswith(
            ("/drain/", "/undrain/")
        ):
            return 405, {"error": f"{method} not allowed on {path}"}
        return 404, {"error": f"no such resource {path}"}

    async def _on_http(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        status, body = 500, {"error": "internal error"}
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HTTP_TIMEOUT)
            line = head.split(b"\r\n", 1)[0].decode("latin-1")
            parts = line.split()
            if len(parts) != 3 or not parts[2].startswith("HTTP/"):
                status, body = 400, {"error": "bad request line"}
            else:
                status, body = self.route(parts[0].upper(), parts[1])
        except (TimeoutError, asyncio.LimitOverrunError, asyncio.IncompleteReadError, ValueError):
            status, body = 400, {"error": "bad or incomplete request"}
        except Exception:
            log.exception("status request failed")
        try:
            payload = json.dumps(body, indent=1).encode() + b"\n"
            reason = {
                200: "OK",
                400: "Bad Request",
                404: "Not Found",
                405: "Method Not Allowed",
                422: "Unprocessable Entity",
            }.get(status, "Error")
            writer.write(
                f"HTTP/1.0 {status} {reason}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode()
                + payload
            )
            await asyncio.wait_for(writer.drain(), HTTP_TIMEOUT)
        except (TimeoutError, OSError):
            pass
        finally:
            writer.close()


def _fmt_pair(pair: tuple[Any, Any] | None, sep: str) -> str | None:
    return None if pair is None else f"{pair[0]}{sep}{pair[1]}"


def _setup_logging(level: str, log_file: str | None) -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stdout)]
    if log_file:
        handlers.append(logging.FileHandler(log_file))
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    for h in handlers:
        h.setFormatter(fmt)
    root = logging.getLogger()
    root.handlers[:] = handlers
    root.setLevel(getattr(logging, level.upper(), logging.INFO))


async def _amain(args: argparse.Namespace, config: CsConfig) -> int:
    daemon = CsDaemon(Path(args.config), config)
    loop = asyncio.get_running_loop()

    def on_hup() -> None:
        with contextlib.suppress(ConfigError):
            daemon.reload()

    loop.add_signal_handler(signal.SIGTERM, daemon.stop)
    loop.add_signal_handler(signal.SIGINT, daemon.stop)
    loop.add_signal_handler(signal.SIGHUP, on_hup)
    try:
        await daemon.start()
    except OSError as exc:
        log.error("cannot listen: %s", exc)
        return 1
    await daemon.serve()
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The csd argument parser."""
    p = argparse.ArgumentParser(prog="csd", description="Control Segment daemon")
    p.add_argument("--config", required=True, help="TOML configuration file")
    p.add_argument("--check", action="store_true", help="validate the configuration and exit")
    p.add_argument("--log-file", help="also log to this file")
    p.add_argument("--pid-file", help="write the pid here while running")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    args = build_parser().parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"csd: configuration refused:\n{exc}", file=sys.stderr)
        return 1
    if args.check:
        print(f"{args.config}: OK ({len(config.virtual_servers)} virtual servers)")
        return 0
    _setup_logging(args.log_level, args.log_file)
    pid_file = Path(args.pid_file) if args.pid_file else None
    if pid_file is not None:
        pid_file.write_text(f"{os.getpid()}\n")
    try:
        return asyncio.run(_amain(args, config))
    finally:
        if pid_file is not None:
            with contextlib.suppress(OSError):
                pid_file.unlink()


if __name__ == "__main__":
    sys.exit(main())
