"""A small HTTP/1.1 load generator on raw asyncio sockets with keep-alive, run in its own
process so that it does not compete with the server for the GIL.

Closed loop (``closed``): `connections` clients send back to back for `seconds`; gives req/s.
Open loop (``paced``): requests are *scheduled* at `rate`/s whatever happens; latency counts
from the scheduled time, so a stall shows up in p99 (no coordinated omission).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass


@dataclass
class LoadResult:
    requests: int
    errors: int
    seconds: float
    latencies_ms: list[float]

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def percentile(self, p: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def request_bytes(host: str, port: int, path: str, headers: dict[str, str]) -> bytes:
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}:{port}", "Connection: keep-alive"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def _exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, payload: bytes
) -> bool:
    writer.write(payload)
    head = await reader.readuntil(b"\r\n\r\n")
    status_ok = head[9:12] == b"200"
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    if length:
        await reader.readexactly(length)
    return status_ok


async def _closed(
    host: str, port: int, payload: bytes, connections: int, seconds: float, warmup: float
) -> LoadResult:
    latencies: list[float] = []
    errors = 0
    count = 0
    start = time.perf_counter()
    measure_from = start + warmup
    stop = measure_from + seconds

    async def client() -> None:
        nonlocal errors, count
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while True:
                t0 = time.perf_counter()
                if t0 >= stop:
                    return
                ok = await _exchange(reader, writer, payload)
                t1 = time.perf_counter()
                if t0 >= measure_from:
                    count += 1
                    latencies.append((t1 - t0) * 1000)
                    errors += not ok
        finally:
            writer.close()

    await asyncio.gather(*(client() for _ in range(connections)))
    return LoadResult(count, errors, seconds, latencies)


async def _paced(
    host: str, port: int, payload: bytes, rate: float, seconds: float, connections: int
) -> LoadResult:
    latencies: list[float] = []
    errors = 0
    total = int(rate * seconds)
    pool: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()
    for _ in range(connections):
        pool.put_nowait(await asyncio.open_connection(host, port))
    start = time.perf_counter() + 0.05

    async def one(scheduled: float) -> None:
        nonlocal errors
        conn = await pool.get()
        try:
            ok = await _exchange(conn[0], conn[1], payload)
        finally:
            pool.put_nowait(conn)
        latencies.append((time.perf_counter() - scheduled) * 1000)
        errors += not ok

    tasks = []
    for i in range(total):
        scheduled = start + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(one(scheduled)))
    await asyncio.gather(*tasks)
    while not pool.empty():
        pool.get_nowait()[1].close()
    return LoadResult(total, errors, seconds, latencies)


@dataclass(frozen=True)
class LoadSpec:
    host: str
    port: int
    path: str
    headers: tuple[tuple[str, str], ...] = ()
    mode: str = "closed"
    connections: int = 16
    seconds: float = 5.0
    warmup: float = 1.0
    rate: float = 1000.0


def run_load(spec: LoadSpec) -> LoadResult:
    """Entry point for the load process."""
    payload = request_bytes(spec.host, spec.port, spec.path, dict(spec.headers))
    if spec.mode == "closed":
        return asyncio.run(
            _closed(spec.host, spec.port, payload, spec.connections, spec.seconds, spec.warmup)
        )
    return asyncio.run(
        _paced(spec.host, spec.port, payload, spec.rate, spec.seconds, spec.connections)
    )
