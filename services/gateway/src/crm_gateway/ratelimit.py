"""Rate limits per tenant, per API key, per client address on the routes without a credential, and per client
address for API keys identity refused.

Counters are fixed windows (limits' notation, "1200/minute") in the gateway's PostgreSQL database (table
`rate_limit_counters`, UNLOGGED), shared by every replica: however far the gateway scales out, a limit is one
limit. One statement counts a request against all its limits at once; windows are numbered by the database's
clock, so replicas agree on them. While the database is unreachable each replica falls back to counting in
its own memory (a limit per replica rather than none) and says so in its log.

Every response of a limited route carries the IETF draft headers RateLimit-Limit / RateLimit-Remaining /
RateLimit-Reset (seconds) of the tightest limit; a refused request is a 429 problem with Retry-After.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

from limits import RateLimitItem, RateLimitItemPerMinute, parse

from crm_gateway.problems import ProblemError
from crm_gateway.store import GatewayDatabase

log = logging.getLogger("crm.gateway.ratelimit")

# Counts one hit on each (bucket, window length) and answers each bucket's count and seconds to its reset.
HIT = """
INSERT INTO rate_limit_counters AS c (bucket, window_no, hits, window_end)
SELECT b, w, 1, to_timestamp((w + 1) * s)
FROM (SELECT b, s, floor(extract(epoch FROM now()) / s)::bigint AS w
      FROM unnest($1::text[], $2::int[]) AS t(b, s)) AS x
ON CONFLICT (bucket, window_no) DO UPDATE SET hits = c.hits + 1
RETURNING bucket, window_no, hits, extract(epoch FROM c.window_end - now())::float8 AS reset
"""
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
        """Counts one hit against each limit: (count in the window, seconds to its reset) for each. When one
        limit is exceeded, the hit is taken back from the others."""
        keys = [item.key_for(kind, ident) for item, kind, ident in checks]
        try:
            rows = await self._pool().fetch(HIT, keys, [item.get_expiry() for item, _, _ in checks])
            found = {r["bucket"]: r for r in rows}
            counts = [(found[k]["hits"], found[k]["reset"]) for k in keys]
            over = [c[0] > item.amount for c, (item, _, _) in zip(counts, checks, strict=True)]
            if any(over) and not all(over):
                kept = [k for k, o in zip(keys, over, strict=True) if not o]
                await self._pool().execute(UNDO, kept, [found[k]["window_no"] for k in kept])
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
