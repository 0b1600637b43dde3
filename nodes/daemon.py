"""Run one of our daemons as a separate process on a Mininet node (or on the host).

The lifecycle is the one network engineers know from routing-daemon testbeds:
write config -> check it -> start -> wait until ready (with a deadline) -> stop (terminate,
wait, kill, always by the pid we stored). The daemon's output goes to a log file per node
that tests print when they fail.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any


class DaemonError(RuntimeError):
    """A daemon failed its config check, exited early, or was not ready in time."""


class Daemon:
    """One daemon process: started on a node, awaited until ready, stopped by pid."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        ready_pattern: str = r"^READY\b",
        node: Any = None,
        env: dict[str, str] | None = None,
        on_start: Callable[[int], None] | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = Path(log_path)
        self.ready_re = re.compile(ready_pattern, re.MULTILINE)
        self.node = node
        self.env = env
        self.on_start = on_start
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        """The daemon's pid, or None before start."""
        return self.proc.pid if self.proc else None

    def start(self, timeout: float = 20.0) -> None:
        """Start the daemon and wait until its log shows the ready line."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, PYTHONUNBUFFERED="1", **(self.env or {}))
        with open(self.log_path, "wb") as log:  # the child keeps its own copy of the descriptor
            if self.node is not None:
                self.proc = self.node.popen(self.argv, stdout=log, stderr=subprocess.STDOUT, env=env)
            else:
                self.proc = subprocess.Popen(
                    self.argv, stdout=log, stderr=subprocess.STDOUT, env=env, stdin=subprocess.DEVNULL
                )
        if self.on_start is not None:
            self.on_start(self.proc.pid)
        self.wait_ready(timeout)

    def log_text(self) -> str:
        """Everything the daemon has written so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_ready(self, timeout: float) -> None:
        """Poll the log for the ready line until ``timeout``; raise with the log if it never comes."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ready_re.search(self.log_text()):
                return
            if self.proc.poll() is not None:
                raise DaemonError(
                    f"{self.name} exited with status {self.proc.returncode} before it was ready; "
                    f"log {self.log_path}:\n{self.log_text()[-4000:]}"
                )
            time.sleep(0.05)
        self.stop()
        raise DaemonError(
            f"{self.name} not ready after {timeout:.0f}s; log {self.log_path}:\n{self.log_text()[-4000:]}"
        )

    def running(self) -> bool:
        """Whether the process is still alive."""
        return self.proc is not None and self.proc.poll() is None

    def signal(self, signum: int) -> None:
        """Send ``signum`` to the daemon (e.g. SIGHUP to reload)."""
        if self.running():
            assert self.proc is not None
            self.proc.send_signal(signum)

    def stop(self, grace: float = 5.0) -> int | None:
        """Terminate, wait up to ``grace`` seconds, then kill; return the exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()
                self.proc.wait(timeout=grace)
        return self.proc.returncode
