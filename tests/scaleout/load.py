"""Client side of the scale-out tests: a few httpx clients keeping a steady closed-loop load on the gateway,
recording every request's outcome, so a test can say how many failed and how slow the slowest were."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import httpx


@dataclass(frozen=True)
class Outcome:
    started: float  # time.monotonic()
    ms: float
    status: int | None  # None: no HTTP answer at all (connection refused or reset, timeout)
    error: str = ""


@dataclass
class Outcomes:
    items: list[Outcome] = field(default_factory=list)

    def failures(self, ok: tuple[int, ...] = (200,)) -> list[Outcome]:
        return [o for o in self.items if o.status not in ok]

    def after(self, t: float) -> Outcomes:
        return Outcomes([o for o in self.items if o.started >= t])

    def between(self, start: float, end: float) -> Outcomes:
        return Outcomes([o for o in self.items if start <= o.started < end])

    def percentile(self, p: float) -> float:
        data = sorted(o.ms for o in self.items)
        return data[min(len(data) - 1, int(p / 100 * len(data)))] if data else float("nan")

    def summary(self, ok: tuple[int, ...] = (200,)) -> dict[str, float | int]:
        return {
            "requests": len(self.items),
            "failed": len(self.failures(ok)),
            "p50_ms": round(self.percentile(50), 1),
            "p99_ms": round(self.percentile(99), 1),
            "max_ms": round(max((o.ms for o in self.items), default=float("nan")), 1),
        }


async def timed(outcomes: Outcomes, send: Callable[[], Awaitable[httpx.Response]]) -> httpx.Response | None:
    t0 = time.monotonic()
    try:
        response = await send()
    except httpx.HTTPError as exc:
        outcomes.items.append(
            Outcome(t0, (time.monotonic() - t0) * 1000, None, f"{type(exc).__name__}: {exc}")
        )
        return None
    outcomes.items.append(Outcome(t0, (time.monotonic() - t0) * 1000, response.status_code))
    return response


async def steady_gets(
    base_url: str,
    path: str,
    headers: dict[str, str],
    *,
    stop: asyncio.Event,
    clients: int = 6,
    max_seconds: float = 20.0,
    max_requests: int = 50_000,
) -> Outcomes:
    """`clients` workers, each on its own keep-alive connection, sending the next GET as soon as the last one
    answered, until `stop` is set (or the bounds are reached)."""
    outcomes = Outcomes()
    deadline = time.monotonic() + max_seconds

    async def worker() -> None:
        async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=10.0) as client:
            while not stop.is_set() and time.monotonic() < deadline and len(outcomes.items) < max_requests:
                await timed(outcomes, lambda: client.get(path))

    await asyncio.gather(*(worker() for _ in range(clients)))
    return outcomes
