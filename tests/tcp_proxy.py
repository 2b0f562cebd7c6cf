"""A TCP proxy on loopback that can hold or black-hole traffic: real network faults for tests
(a command stuck in flight, a half-open connection that never answers)."""

from __future__ import annotations

import selectors
import socket
import threading


class TcpProxy:
    """Forwards 127.0.0.1:<port> to a target. `hold("up")` keeps client->server bytes (a
    command stuck in flight), `hold("down")` server->client bytes (a reply stuck in flight),
    until `release()` (or `cut_held()`: what was held never arrives and its connections close);
    `freeze()` silently drops both directions of the connections open now (a half-open peer)
    while new connections work normally."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.held_bytes = 0
        self._holding: str | None = None
        self._held: dict[socket.socket, bytearray] = {}
        self._pairs: dict[socket.socket, socket.socket] = {}
        self._frozen: set[socket.socket] = set()
        self._clients: set[socket.socket] = set()
        self._cut: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._selector = selectors.DefaultSelector()
        self._stop = threading.Event()
        self._wake_r, self._wake_w = socket.socketpair()
        self._selector.register(self.listener, selectors.EVENT_READ)
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def hold(self, direction: str = "up") -> None:
        assert direction in ("up", "down")
        with self._lock:
            self._holding = direction

    def release(self) -> None:
        """Stop holding and forward what was held on connections that are still open."""
        with self._lock:
            self._holding = None
            held, self._held = self._held, {}
        for source, data in held.items():
            peer = self._pairs.get(source)
            if peer is not None:
                try:
                    peer.sendall(data)
                except OSError:
                    pass

    def cut_held(self) -> None:
        """Stop holding; drop what was held and close the connections it came from (in the
        proxy's thread), so a held command never reaches the server."""
        with self._lock:
            self._holding = None
            self._cut.update(self._held)
            self._held = {}
        self._wake_w.send(b"x")

    def freeze(self) -> None:
        with self._lock:
            self._frozen.update(self._pairs)

    def close(self) -> None:
        self._stop.set()
        self._wake_w.send(b"x")
        self._thread.join(timeout=5)
        for sock in list(self._pairs):
            sock.close()
        self._selector.close()
        self.listener.close()
        self._wake_r.close()
        self._wake_w.close()

    def _loop(self) -> None:
        while not self._stop.is_set():
            for key, _ in self._selector.select(timeout=0.2):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if sock is self._wake_r:
                    self._wake_r.recv(64)
                    continue
                if sock is self.listener:
                    self._accept()
                else:
                    self._forward(sock)
            with self._lock:
                cut, self._cut = self._cut, set()
            for sock in cut:
                self._drop(sock)

    def _accept(self) -> None:
        client, _ = self.listener.accept()
        upstream = socket.create_connection(("127.0.0.1", self.target_port))
        with self._lock:
            self._pairs[client] = upstream
            self._pairs[upstream] = client
            self._clients.add(client)
        self._selector.register(client, selectors.EVENT_READ)
        self._selector.register(upstream, selectors.EVENT_READ)

    def _forward(self, sock: socket.socket) -> None:
        try:
            data = sock.recv(65536)
        except OSError:
            data = b""
        peer = self._pairs.get(sock)
        if not data or peer is None:
            self._drop(sock)
            return
        with self._lock:
            if sock in self._frozen:
                return
            from_client = sock in self._clients
            if self._holding == ("up" if from_client else "down"):
                self._held.setdefault(sock, bytearray()).extend(data)
                self.held_bytes += len(data)
                return
        try:
            peer.sendall(data)
        except OSError:
            self._drop(sock)

    def _drop(self, sock: socket.socket) -> None:
        with self._lock:
            peer = self._pairs.pop(sock, None)
            if peer is not None:
                self._pairs.pop(peer, None)
            self._frozen.discard(sock)
            self._clients.discard(sock)
            self._held.pop(sock, None)
        for s in (sock, peer):
            if s is not None:
                try:
                    self._selector.unregister(s)
                except (KeyError, ValueError):
                    pass
                s.close()
