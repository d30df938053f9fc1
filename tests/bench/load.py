"""A small closed-loop HTTP/1.1 load generator: N keep-alive connections, each sending its next request as soon
as the previous answer arrived, for a fixed time. Used for every HTTP figure in `make bench`, so a ratio
compares two servers under the very same client."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass


@dataclass
class LoadResult:
    requests: int
    errors: int
    seconds: float
    latencies_ms: list[float]

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    def percentile(self, p: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        data = sorted(self.latencies_ms)
        return data[min(len(data) - 1, int(p / 100 * len(data)))]

    def summary(self) -> dict[str, float]:
        return {
            "rps": round(self.rps, 1),
            "p50_ms": round(self.percentile(50), 2),
            "p99_ms": round(self.percentile(99), 2),
            "errors": self.errors,
            "requests": self.requests,
        }


def _request(method: str, path: str, host: str, headers: dict[str, str], body: bytes) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", "Connection: keep-alive"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    chunked = False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value.strip())
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    if chunked:
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip(), 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    elif length:
        await reader.readexactly(length)
    return status


async def run_load(
    url: str,
    *,
    connections: int = 32,
    seconds: float = 5.0,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    body: bytes = b"",
    expect_status: int = 200,
    warmup_seconds: float = 1.0,
) -> LoadResult:
    assert url.startswith("http://")
    hostport, _, path = url[len("http://") :].partition("/")
    host, _, port = hostport.partition(":")
    payload = _request(method, "/" + path, hostport, headers or {}, body)
    latencies: list[float] = []
    counts = {"ok": 0, "errors": 0}
    loop = asyncio.get_running_loop()
    start = loop.time()
    measure_from = start + warmup_seconds
    stop_at = measure_from + seconds

    async def worker() -> None:
        reader, writer = await asyncio.open_connection(host, int(port or 80))
        try:
            while True:
                t0 = loop.time()
                if t0 >= stop_at:
                    return
                writer.write(payload)
                status = await _read_response(reader)
                t1 = loop.time()
                if t0 >= measure_from:
                    latencies.append((t1 - t0) * 1000)
                    counts["ok" if status == expect_status else "errors"] += 1
        finally:
            writer.close()

    await asyncio.gather(*(worker() for _ in range(connections)))
    return LoadResult(counts["ok"], counts["errors"], seconds, latencies)


def median_of(results: list[LoadResult]) -> LoadResult:
    return sorted(results, key=lambda r: r.rps)[len(results) // 2]
