"""Rate limits per tenant, per API key, per client address on the routes without a credential, and per client
address for API keys identity refused.

Counters are fixed windows (limits' notation, "1200/minute") in the gateway's PostgreSQL database (table
`rate_limit_counters`, UNLOGGED), shared by every replica: however far the gateway scales out, a limit is one
limit. One statement counts a request against all its limits at once; windows are numbered by the database's
clock, so replicas agree on them. While the database is unreachable each replica falls back to counting in
its own memory (a limit per replica rather than none) and says so in its log.

A request far from its limits is not worth a database round trip each (it cost the authenticated GET a third
of its time): while every limit of a request has more than `HEADROOM` of its amount left by the last shared
count, the replica counts the hit in memory and a background flush adds its hits to the shared counters every
`FLUSH_SECONDS` in one statement. Near a limit (and for small limits, below `BATCHED_FROM`) every hit is
counted in the database at once, so a limit still holds exactly where it matters; far from it, other replicas'
unflushed hits (a flush interval's worth) are what the headroom absorbs.

Every response of a limited route carries the IETF draft headers RateLimit-Limit / RateLimit-Remaining /
RateLimit-Reset (seconds) of the tightest limit; a refused request is a 429 problem with Retry-After.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from typing import Any

from limits import RateLimitItem, RateLimitItemPerMinute, parse

from crm_gateway.problems import ProblemError
from crm_gateway.store import GatewayDatabase

log = logging.getLogger("crm.gateway.ratelimit")

# Counts n hits on each (bucket, window length, n) and answers each bucket's count and seconds to its reset.
HIT = """
INSERT INTO rate_limit_counters AS c (bucket, window_no, hits, window_end)
SELECT b, w, n, to_timestamp((w + 1) * s)
FROM (SELECT b, s, n, floor(extract(epoch FROM now()) / s)::bigint AS w
      FROM unnest($1::text[], $2::int[], $3::int[]) AS t(b, s, n)) AS x
ON CONFLICT (bucket, window_no) DO UPDATE SET hits = c.hits + excluded.hits
RETURNING bucket, window_no, hits, extract(epoch FROM c.window_end - now())::float8 AS reset
"""
# Limits at least this large are counted in memory between flushes while far from their end.
BATCHED_FROM = 100
# The share of a limit that must be left (by the last shared count) for a hit to be counted in memory.
HEADROOM = 0.2
FLUSH_SECONDS = 0.05
# A request refused by one limit is not charged to the others (a key over its limit leaves its tenant's alone).
UNDO = """
UPDATE rate_limit_counters AS c SET hits = c.hits - 1
FROM unnest($1::text[], $2::bigint[]) AS u(b, w) WHERE c.bucket = u.b AND c.window_no = u.w
"""
PEEK = """
SELECT hits, extract(epoch FROM window_end - now())::float8 AS reset FROM rate_limit_counters
WHERE bucket = $1 AND window_no = floor(extract(epoch FROM now()) / $2)::bigint
"""


class LocalStorage:
    """Fixed-window counters in a dict, for one asyncio process, used only while the database is unreachable:
    no locks, no expiry thread; expired windows are dropped when touched, and swept when the dict grows large."""

    MAX_KEYS = 100_000

    def __init__(self) -> None:
        self.counters: dict[str, list[float]] = {}  # key -> [count, expires_at]

    def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        now = time.time()
        window = self.counters.get(key)
        if window is None or window[1] <= now:
            if len(self.counters) >= self.MAX_KEYS:
                self.counters = {k: w for k, w in self.counters.items() if w[1] > now}
            window = self.counters[key] = [0, now + expiry]
        window[0] += amount
        return int(window[0])

    def get(self, key: str) -> int:
        window = self.counters.get(key)
        return int(window[0]) if window is not None and window[1] > time.time() else 0

    def get_expiry(self, key: str) -> float:
        window = self.counters.get(key)
        return window[1] if window is not None else time.time()


class _Bucket:
    """What this replica knows of one shared counter: its count at the last sync, its own hits since, and when
    its window ends (monotonic clock)."""

    __slots__ = ("ends", "known", "pending", "seconds")

    def __init__(self, seconds: int) -> None:
        self.seconds = seconds
        self.known = 0
        self.pending = 0
        self.ends = 0.0

    def take(self) -> int:
        """The hits to send now (they are in flight until the answer says the shared count)."""
        n, self.pending = self.pending, 0
        return n

    def learn(self, hits: int, reset: float) -> None:
        self.known = hits
        self.ends = time.monotonic() + reset


class RateLimits:
    def __init__(
        self,
        database: GatewayDatabase | None,
        *,
        per_tenant: str,
        public: str,
        api_key_default_per_minute: int,
        invalid_api_keys: str = "",
    ):
        self.database = database
        self.storage = LocalStorage()  # only while the database is unreachable
        self.tenant_item = parse(per_tenant)
        self.public_item: RateLimitItem | None = parse(public) if public.strip() else None
        self.invalid_key_item: RateLimitItem | None = (
            parse(invalid_api_keys) if invalid_api_keys.strip() else None
        )
        self._warned = 0.0
        self.api_key_default = api_key_default_per_minute
        self._per_minute: dict[int, RateLimitItem] = {}
        self._buckets: dict[str, _Bucket] = {}
        self._flusher: asyncio.Task[None] | None = None

    def _key_item(self, per_minute: int) -> RateLimitItem:
        per_minute = per_minute or self.api_key_default
        item = self._per_minute.get(per_minute)
        if item is None:
            item = self._per_minute[per_minute] = RateLimitItemPerMinute(per_minute)
        return item

    async def check(
        self, tenant_id: str, api_key_id: str = "", api_key_per_minute: int = 0
    ) -> dict[str, str]:
        """Counts one request of the caller; returns the RateLimit headers or raises a 429 problem."""
        checks = []
        if api_key_id:
            checks.append((self._key_item(api_key_per_minute), "key", api_key_id, "API key"))
        checks.append((self.tenant_item, "tenant", tenant_id, "tenant"))
        return await self._run(checks)

    async def check_public(self, client_ip: str) -> dict[str, str]:
        if self.public_item is None:
            return {}
        return await self._run([(self.public_item, "ip", client_ip, "client address")])

    async def check_invalid_api_keys(self, client_ip: str) -> None:
        """Before identity is asked about an unknown API key: 429 when this address already had too many
        refused this window (counted by `count_invalid_api_key`)."""
        item = self.invalid_key_item
        if item is None:
            return
        key = item.key_for("badkey", client_ip)
        try:
            row = await self._pool().fetchrow(PEEK, key, item.get_expiry())
            hits, reset = (row["hits"], row["reset"]) if row else (0, 0.0)
        except Exception as exc:
            self._fallback(exc)
            hits, reset = self.storage.get(key), self.storage.get_expiry(key) - time.time()
        if hits >= item.amount:
            raise _too_many(item, "API keys refused from this client address", max(1, math.ceil(reset)))

    async def count_invalid_api_key(self, client_ip: str) -> None:
        if self.invalid_key_item is not None:
            await self._counts([(self.invalid_key_item, "badkey", client_ip)])

    def _pool(self) -> Any:
        if self.database is None:
            raise RuntimeError("no database")
        return self.database.pool

    async def _counts(self, checks: list[tuple[RateLimitItem, str, str]]) -> list[tuple[int, float]]:
        """Counts one hit against each limit (with this replica's unflushed hits on it): (count in the window,
        seconds to its reset) for each. When one limit is exceeded, the hit is taken back from the others."""
        keys = [item.key_for(kind, ident) for item, kind, ident in checks]
        buckets = [self._buckets.get(k) for k in keys]
        sent = [1 + (b.take() if b is not None else 0) for b in buckets]
        try:
            rows = await self._pool().fetch(HIT, keys, [item.get_expiry() for item, _, _ in checks], sent)
            found = {r["bucket"]: r for r in rows}
            counts = [(found[k]["hits"], found[k]["reset"]) for k in keys]
            over = [c[0] > item.amount for c, (item, _, _) in zip(counts, checks, strict=True)]
            if any(over) and not all(over):
                kept = [k for k, o in zip(keys, over, strict=True) if not o]
                await self._pool().execute(UNDO, kept, [found[k]["window_no"] for k in kept])
            undone = any(over) and not all(over)
            for key, (item, _, _), (hits, reset), o in zip(keys, checks, counts, over, strict=True):
                if item.amount >= BATCHED_FROM:
                    bucket = self._buckets.get(key)
                    if bucket is None:
                        bucket = self._buckets[key] = _Bucket(item.get_expiry())
                    bucket.learn(hits - (1 if undone and not o else 0), reset)
            return counts
        except Exception as exc:
            self._fallback(exc)
            now = time.time()
            counts = [
                (self.storage.incr(k, item.get_expiry()), self.storage.get_expiry(k) - now)
                for k, (item, _, _) in zip(keys, checks, strict=True)
            ]
            if any(c[0] > item.amount for c, (item, _, _) in zip(counts, checks, strict=True)):
                for k, c, (item, _, _) in zip(keys, counts, checks, strict=True):
                    if c[0] <= item.amount:
                        self.storage.incr(k, item.get_expiry(), -1)
            return counts

    def _fallback(self, exc: Exception) -> None:
        if time.monotonic() - self._warned > 10:
            self._warned = time.monotonic()
            log.warning("rate limits counted in this replica only: the gateway database failed (%s)", exc)

    async def _run(self, checks: list[tuple[RateLimitItem, str, str, str]]) -> dict[str, str]:
        tightest: tuple[int, int, int] | None = None  # remaining, limit, reset
        counts = self._count_in_memory(checks)
        if counts is None:
            counts = await self._counts([(item, kind, ident) for item, kind, ident, _ in checks])
        for (item, _, _, label), (count, until) in zip(checks, counts, strict=True):
            remaining = max(0, item.amount - count)
            reset = max(1, math.ceil(until))
            if count > item.amount:
                raise _too_many(item, label, reset)
            if tightest is None or remaining < tightest[0]:
                tightest = (remaining, item.amount, reset)
        assert tightest is not None
        return _headers(tightest[1], tightest[0], tightest[2])

    # ------------------------------------------------------------ hits counted between flushes

    def _count_in_memory(
        self, checks: list[tuple[RateLimitItem, str, str, str]]
    ) -> list[tuple[int, float]] | None:
        """The counts after this hit when every limit is far from its end: counted here, flushed later."""
        if self.database is None:
            return None
        now = time.monotonic()
        buckets = []
        for item, kind, ident, _ in checks:
            if item.amount < BATCHED_FROM:
                return None
            bucket = self._buckets.get(item.key_for(kind, ident))
            if bucket is None or bucket.ends <= now:
                return None  # a new window: learn it from the database first
            if item.amount - (bucket.known + bucket.pending + 1) < item.amount * HEADROOM:
                return None
            buckets.append(bucket)
        for bucket in buckets:
            bucket.pending += 1
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(
                self._flush_soon(), name="rate limit flush"
            )
        return [(b.known + b.pending, b.ends - now) for b in buckets]

    async def _flush_soon(self) -> None:
        await asyncio.sleep(FLUSH_SECONDS)
        await self.flush()

    async def flush(self) -> None:
        """Adds the hits counted in memory to the shared counters (one statement for all)."""
        pending = [(key, b) for key, b in self._buckets.items() if b.pending > 0]
        if not pending:
            return
        sent = [b.take() for _, b in pending]
        try:
            rows = await self._pool().fetch(
                HIT, [k for k, _ in pending], [b.seconds for _, b in pending], sent
            )
        except Exception as exc:
            self._fallback(exc)
            for (
                _,
                bucket,
            ) in pending:  # counted per replica from now on, like any hit while the database is down
                bucket.ends = 0.0
            return
        found = {r["bucket"]: r for r in rows}
        for key, bucket in pending:
            bucket.learn(found[key]["hits"], found[key]["reset"])
        if len(self._buckets) > LocalStorage.MAX_KEYS:
            now = time.monotonic()
            self._buckets = {k: b for k, b in self._buckets.items() if b.ends > now or b.pending}

    async def close(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        with contextlib.suppress(Exception):
            await self.flush()


def _too_many(item: RateLimitItem, label: str, reset: int) -> ProblemError:
    headers = _headers(item.amount, 0, reset)
    headers["Retry-After"] = str(reset)
    return ProblemError(
        429,
        "rate_limited",
        f"the limit of {item.amount} requests per {_window(item)} for the {label} is used up; retry in {reset} s",
        headers=headers,
    )


def _headers(limit: int, remaining: int, reset: int) -> dict[str, str]:
    return {
        "RateLimit-Limit": str(limit),
        "RateLimit-Remaining": str(remaining),
        "RateLimit-Reset": str(reset),
    }


def _window(item: RateLimitItem) -> str:
    seconds = item.get_expiry()
    return {1: "second", 60: "minute", 3600: "hour", 86400: "day"}.get(seconds, f"{seconds} s")
