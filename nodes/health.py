"""Health-check prober: the I/O half of CS health checking.

One asyncio task per (virtual server, real server) target runs a probe every ``interval`` seconds and
reports ``(ok, detail)`` to a callback; the rise/fall counting lives in ``slbcore.cs.health``. Probes:

- ``tcp``: a TCP connect that completes within ``timeout``.
- ``http``: ``GET path HTTP/1.0`` whose status line arrives within ``timeout`` with ``expect_status``.

Every probe is bounded by its timeout and never raises: a refused connection, a timeout, a reset or a
garbled answer are all a failed probe with a short reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable, Iterable

from slbcore.cs.config import HealthCheckConfig
from slbcore.cs.engine import HealthTarget

log = logging.getLogger("csd.health")

MAX_STATUS_LINE = 4096

ResultCallback = Callable[[HealthTarget, bool, str], None]


async def probe_tcp(address: str, port: int, timeout: float) -> tuple[bool, str]:
    """Try a TCP connect; (True, "connected") or (False, reason)."""
    writer: asyncio.StreamWriter | None = None
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(address, port), timeout)
        return True, "connected"
    except TimeoutError:
        return False, f"connect timeout after {timeout:g}s"
    except OSError as exc:
        return False, f"connect failed: {exc.strerror or exc}"
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 1.0)


async def probe_http(
    address: str, port: int, path: str, expect_status: int, timeout: float
) -> tuple[bool, str]:
    """GET ``path``; success when the status code equals ``expect_status``."""
    writer: asyncio.StreamWriter | None = None

    async def run() -> tuple[bool, str]:
        nonlocal writer
        reader, writer = await asyncio.open_connection(address, port)
        host = address if port == 80 else f"{address}:{port}"
        request = (
            f"GET {path} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: slb-cs-health\r\nConnection: close\r\n\r\n"
        )
        writer.write(request.encode("ascii"))
        await writer.drain()
        line = await reader.readuntil(b"\n")
        if len(line) > MAX_STATUS_LINE:
            return False, "status line too long"
        parts = line.decode("latin-1").split()
        if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
            return False, f"not an HTTP status line: {line[:60]!r}"
        status = int(parts[1])
        if status != expect_status:
            return False, f"HTTP {status}, expected {expect_status}"
        return True, f"HTTP {status}"

    try:
        return await asyncio.wait_for(run(), timeout)
    except TimeoutError:
        return False, f"timeout after {timeout:g}s"
    except asyncio.IncompleteReadError:
        return False, "connection closed before a status line"
    except asyncio.LimitOverrunError:
        return False, "status line too long"
    except (OSError, UnicodeError) as exc:
        return False, f"request failed: {getattr(exc, 'strerror', None) or exc}"
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 1.0)


async def probe(target: HealthTarget) -> tuple[bool, str]:
    """Run the probe configured for ``target`` once."""
    check: HealthCheckConfig = target.check
    if check.kind == "http":
        return await probe_http(target.address, target.port, check.path, check.expect_status, check.timeout)
    return await probe_tcp(target.address, target.port, check.timeout)


def _target_key(t: HealthTarget) -> tuple[str, str, str, int, HealthCheckConfig]:
    return (t.vs, t.server, t.address, t.port, t.check)


class HealthProber:
    """Keeps one probing task per target and reports every result."""

    def __init__(self, on_result: ResultCallback) -> None:
        self.on_result = on_result
        self._tasks: dict[tuple[str, str, str, int, HealthCheckConfig], asyncio.Task[None]] = {}

    @property
    def targets(self) -> int:
        """Number of running probe tasks."""
        return len(self._tasks)

    def update(self, targets: Iterable[HealthTarget]) -> None:
        """Start tasks for new targets and stop those no longer wanted (e.g. after a reload)."""
        wanted = {_target_key(t): t for t in targets}
        for key in list(self._tasks):
            if key not in wanted:
                self._tasks.pop(key).cancel()
        for key, target in wanted.items():
            if key not in self._tasks:
                self._tasks[key] = asyncio.get_running_loop().create_task(
                    self._run(target), name=f"health {target.vs}/{target.server}"
                )

    async def _run(self, target: HealthTarget) -> None:
        interval = target.check.interval
        # Spread the first probes so a pool of many servers is not hit in one burst.
        await asyncio.sleep(random.uniform(0, min(interval, 0.2)))
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            try:
                ok, detail = await probe(target)
            except Exception as exc:  # a probe must never kill its task
                ok, detail = False, f"probe error: {exc!r}"
            try:
                self.on_result(target, ok, detail)
            except Exception:
                log.exception("health result handler failed for %s/%s", target.vs, target.server)
            await asyncio.sleep(max(0.0, interval - (loop.time() - started)))

    async def close(self) -> None:
        """Cancel every probe task and wait for them."""
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
