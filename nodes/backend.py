"""A real HTTP backend that answers with its own name, so tests can see who served a request.

``GET /`` answers ``<name>\\n``; ``GET /bytes/N`` answers N bytes (bulk transfers);
``GET /health`` answers 200 unless the file given by ``--fail-flag`` exists (then 503), which is
how tests make a server fail its health check without stopping it. HTTP/1.1 with keep-alive.
"""

from __future__ import annotations

import argparse
import http.server
import os
import signal
import socketserver
import sys
import threading

CHUNK = b"x" * 65536


class BackendHandler(http.server.BaseHTTPRequestHandler):
    """Answers with the server's name, a sized body, or its health."""

    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes; with Nagle on, each keep-alive response would
    # wait for the client's delayed ACK (~40 ms) and cap every keep-alive measurement.
    disable_nagle_algorithm = True
    server: BackendServer

    def do_GET(self) -> None:
        """Serve /, /bytes/N and /health."""
        name = self.server.name
        if self.path == "/health":
            failing = self.server.fail_flag and os.path.exists(self.server.fail_flag)
            self._send(503 if failing else 200, b"fail\n" if failing else b"ok\n")
        elif self.path.startswith("/bytes/"):
            try:
                size = int(self.path[len("/bytes/") :])
                if not 0 <= size <= 1 << 34:
                    raise ValueError
            except ValueError:
                self._send(400, b"bad size\n")
                return
            self.send_response(200)
            self.send_header("Content-Length", str(size))
            self.send_header("X-Backend", name)
            self.end_headers()
            left = size
            while left > 0:
                piece = CHUNK[: min(left, len(CHUNK))]
                self.wfile.write(piece)
                left -= len(piece)
        else:
            self._send(200, f"{name}\n".encode())

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Backend", self.server.name)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """Requests are not logged: at benchmark rates the log would cost more than the work."""


class BackendServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
    """A threaded HTTP server carrying the backend's name."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024

    def __init__(self, addr: tuple[str, int], name: str, fail_flag: str | None) -> None:
        super().__init__(addr, BackendHandler)
        self.name = name
        self.fail_flag = fail_flag

    def handle_error(self, request: object, client_address: tuple[str, int]) -> None:
        """A client that resets or goes away is normal traffic, not a server error; others are logged."""
        exc = sys.exc_info()[1]
        if isinstance(exc, ConnectionError | TimeoutError):
            return
        super().handle_error(request, client_address)


def main(argv: list[str] | None = None) -> int:
    """Run the backend until SIGTERM."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--name", required=True, help="the name this backend answers with")
    ap.add_argument("--bind", default="0.0.0.0", help="address to listen on")
    ap.add_argument("--port", type=int, default=80, help="TCP port (default 80)")
    ap.add_argument("--fail-flag", help="while this file exists, /health answers 503")
    args = ap.parse_args(argv)
    try:
        server = BackendServer((args.bind, args.port), args.name, args.fail_flag)
    except OSError as e:
        print(f"backend {args.name}: cannot listen on {args.bind}:{args.port}: {e}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    print(f"READY backend {args.name} on {args.bind}:{args.port}", flush=True)
    server.serve_forever(poll_interval=0.2)
    server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
