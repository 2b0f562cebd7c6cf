"""HTTP plumbing: a threading server that can drop its connections, and a JSON request handler.

Every answer is JSON, errors included (``{"error": ...}``); nothing a client sends produces a
traceback. Keep-alive (HTTP/1.1) works, so ``requests.Session`` reuses connections as with a
real upstream; ``SandboxServer.close_connections`` cuts them at stop.
"""

from __future__ import annotations

import json
import logging
import socket
import struct
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from sandbox import routes
from sandbox.errors import InvalidInput, PublishFailed, SandboxError
from sandbox.faults import ADMIN_PREFIX, Fault

if TYPE_CHECKING:
    from sandbox.server import SandboxWrapper

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 1024 * 1024
_Socket = socket.socket
_Address = Any


class SandboxServer(ThreadingHTTPServer):
    """One daemon thread per connection; remembers open connections so stop can cut them."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], wrapper: SandboxWrapper) -> None:
        self.wrapper = wrapper
        self._connections: set[_Socket] = set()
        self._drained = threading.Condition()
        super().__init__(address, SandboxRequestHandler)

    def process_request(self, request: Any, client_address: _Address) -> None:
        with self._drained:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        super().shutdown_request(request)
        with self._drained:
            self._connections.discard(request)
            self._drained.notify_all()

    def handle_error(self, request: Any, client_address: _Address) -> None:
        # A client that went away mid-answer (or a connection cut by stop) is not news.
        logger.debug("connection from %s ended with an error", client_address, exc_info=True)

    def close_connections(self, timeout: float = 2.0) -> None:
        """Shut every open connection down and wait until their threads have closed them."""
        with self._drained:
            for sock in list(self._connections):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            self._drained.wait_for(lambda: not self._connections, timeout=timeout)


class SandboxRequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes: with Nagle on, every keep-alive request
    # would stall ~40 ms waiting for the client's delayed ACK.
    disable_nagle_algorithm = True
    server_version = "crmcache-sandbox/0.1"
    timeout = 30  # idle keep-alive connections end after this (seconds)

    server: SandboxServer

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s - " + format, self.address_string(), *args)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """The stdlib's errors (bad request line, unsupported method) as JSON, not HTML."""
        self.close_connection = True
        self._reply(code, {"error": message or HTTPStatus(code).phrase})

    # --- one request ---------------------------------------------------------------------------

    def _dispatch(self) -> None:
        wrapper = self.server.wrapper
        split = urlsplit(self.path)
        path = split.path or "/"
        if wrapper.down and not path.startswith(ADMIN_PREFIX):
            wrapper.record_dropped(self.command, path)
            self._drop()
            return
        request = routes.Request(
            method=self.command,
            path=path,
            query=parse_qs(split.query, keep_blank_values=True),
            tenant=self.headers.get("X-Tenant-ID"),
            authorization=self.headers.get("Authorization"),
        )
        try:
            request.body = self._read_body()
        except SandboxError as exc:
            wrapper.record_request(request)
            self.close_connection = True  # the rest of the body is still on the wire
            self._reply_error(exc)
            return
        wrapper.record_request(request)
        fault = wrapper.faults.take(path)
        if fault is not None and fault.delay:
            wrapper.sleep(fault.delay)
        if fault is not None and not fault.after and self._inject(fault):
            return
        status, payload = self._answer(request)
        if fault is not None and fault.after and self._inject(fault):
            return
        self._reply(status, payload)

    def _answer(self, request: routes.Request) -> tuple[int, Any]:
        try:
            return routes.handle(self.server.wrapper, request)
        except PublishFailed as exc:
            return exc.status, {"error": exc.message, "event": exc.event}
        except SandboxError as exc:
            return exc.status, {"error": exc.message}
        except Exception:
            logger.exception("sandbox bug answering %s %s", request.method, request.path)
            return 500, {"error": "internal sandbox error"}

    def _inject(self, fault: Fault) -> bool:
        """Apply the fault's status or drop; False when it only delays."""
        if fault.drop:
            self._drop()
            return True
        if fault.status is not None:
            self._reply(fault.status, {"error": "injected fault", "status": fault.status})
            return True
        return False

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding"):
            raise SandboxError("chunked bodies are not supported: send Content-Length", 411)
        raw = self.headers.get("Content-Length")
        if raw is None:
            return b""
        try:
            length = int(raw)
        except ValueError:
            raise InvalidInput("Content-Length must be an integer") from None
        if length < 0:
            raise InvalidInput("Content-Length must be >= 0")
        if length > MAX_BODY_BYTES:
            raise SandboxError(f"body over {MAX_BODY_BYTES} bytes", 413)
        return self.rfile.read(length)

    # --- answers -------------------------------------------------------------------------------

    def _reply_error(self, exc: SandboxError) -> None:
        self._reply(exc.status, {"error": exc.message})

    def _reply(self, status: int, payload: Any) -> None:
        body = json.dumps(payload, separators=(",", ":")).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _drop(self) -> None:
        """Close the connection without answering; SO_LINGER 0 makes it a reset, like a crash."""
        self.close_connection = True
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
