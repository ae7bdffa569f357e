"""An open-loop load generator: POSTs at a fixed rate, whatever the answers do.

wrk keeps a fixed number of requests in flight, so a slow answer delays the
next request and hides the wait it caused (coordinated omission). Here request
``i`` is due at ``start + i / rate``; latency is measured from that scheduled
moment to the end of the answer, so time spent queued behind a slow answer
counts. Connections are kept alive and reused; if all are busy, due requests
wait in a queue, and that wait is part of their latency.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


@dataclass
class PacedResult:
    rate: float
    duration: float
    #: Seconds from scheduled send to complete answer, per answered request,
    #: with the warm-up excluded.
    latencies: list[float] = field(default_factory=list)
    #: Answers by status over the whole run, warm-up included.
    statuses: dict[int, int] = field(default_factory=dict)
    failures: int = 0
    #: How far behind schedule the last request was sent, in seconds.
    send_lag: float = 0.0

    @property
    def ok(self) -> int:
        return sum(n for status, n in self.statuses.items() if 200 <= status < 300)


def run(
    host: str,
    port: int,
    request: Callable[[int], bytes],
    *,
    rate: float,
    duration: float,
    warmup: float = 1.0,
    connections: int = 64,
    drain_timeout: float = 30.0,
) -> PacedResult:
    """Send ``rate * (warmup + duration)`` requests built by ``request(i)``."""
    return asyncio.run(
        _run(host, port, request, rate, duration, warmup, connections, drain_timeout)
    )


async def _run(
    host: str,
    port: int,
    request: Callable[[int], bytes],
    rate: float,
    duration: float,
    warmup: float,
    connections: int,
    drain_timeout: float,
) -> PacedResult:
    result = PacedResult(rate=rate, duration=duration)
    due: asyncio.Queue[tuple[int, float]] = asyncio.Queue()
    total = int(rate * (warmup + duration))
    measured_from = int(rate * warmup)
    loop = asyncio.get_running_loop()
    start = loop.time() + 0.05

    async def worker() -> None:
        conn: Connection | None = None
        while True:
            i, scheduled = await due.get()
            try:
                status, conn = await _exchange(host, port, conn, request(i))
            except (OSError, asyncio.IncompleteReadError, ValueError):
                result.failures += 1
                conn = None
            else:
                result.statuses[status] = result.statuses.get(status, 0) + 1
                if i >= measured_from:
                    result.latencies.append(loop.time() - scheduled)
            finally:
                due.task_done()

    workers = [asyncio.create_task(worker()) for _ in range(connections)]
    for i in range(total):
        scheduled = start + i / rate
        delay = scheduled - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        due.put_nowait((i, scheduled))
    result.send_lag = max(0.0, loop.time() - (start + (total - 1) / rate))
    try:
        await asyncio.wait_for(due.join(), drain_timeout)
    finally:
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)

    return result


async def _exchange(
    host: str,
    port: int,
    conn: Connection | None,
    payload: bytes,
) -> tuple[int, Connection | None]:
    """One request/answer on a kept-alive connection; reconnects once if the
    server had closed an idle connection before reading the request."""
    for attempt in (1, 2):
        if conn is None:
            conn = await asyncio.open_connection(host, port)
        reader, writer = conn
        writer.write(payload)
        try:
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
        except (ConnectionError, asyncio.IncompleteReadError) as err:
            writer.close()
            conn = None
            nothing_read = not getattr(err, "partial", b"")
            if attempt == 1 and nothing_read:
                continue
            raise
        status, length, close = _parse_head(head)
        await reader.readexactly(length)
        if close:
            writer.close()
            return status, None
        return status, conn
    raise AssertionError("unreachable")


def _parse_head(head: bytes) -> tuple[int, int, bool]:
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    length, close = 0, False
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        if name == "content-length":
            length = int(value)
        elif name == "connection" and value.strip().lower() == "close":
            close = True

    return status, length, close


def post(host: str, path: str, headers: dict[str, str], body: bytes) -> bytes:
    """The bytes of one HTTP/1.1 POST with a keep-alive connection."""
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}", f"Content-Length: {len(body)}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body
