"""Coordination state in Redis: leases, rate limits, counters and the cached
current round. Nothing here is needed to recover accepted updates or models:
losing Redis costs at most a lease hand-over and some counters."""

from __future__ import annotations

import time
from typing import Any

from redis import asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.exceptions import WatchError

RedisClient = aioredis.Redis


# A command on a pooled connection that Redis dropped (it restarted, or a firewall
# forgot the flow) fails once and succeeds on a new connection: retry it, briefly,
# so that a Redis that is back never costs a request. While Redis is down the
# retries give up within a second and the request is answered 503.
REDIS_RETRIES = 2
REDIS_BACKOFF = ExponentialWithJitterBackoff(base=0.05, cap=0.5)
# Every command here is O(1): two seconds means Redis is hung, and the call should fail rather than wait.
REDIS_TIMEOUT_S = 2.0
# Idle connections are PINGed before use after this long (redis-py reconnects one that fails the PING).
REDIS_HEALTH_CHECK_S = 30


def make_redis(url: str | None) -> RedisClient:
    """A real Redis when a URL is given; otherwise an in-process stand-in."""
    if url:
        return aioredis.from_url(
            url, decode_responses=True, health_check_interval=REDIS_HEALTH_CHECK_S,
            retry=Retry(REDIS_BACKOFF, REDIS_RETRIES, supported_errors=(RedisConnectionError, RedisTimeoutError)),
            socket_connect_timeout=REDIS_TIMEOUT_S, socket_timeout=REDIS_TIMEOUT_S,
        )
    import fakeredis

    return fakeredis.FakeAsyncRedis(decode_responses=True)


class CoordinationState:
    def __init__(self, redis: RedisClient, prefix: str = "fedface:") -> None:
        self.redis = redis
        self.prefix = prefix

    def _k(self, *parts: object) -> str:
        return self.prefix + ":".join(str(p) for p in parts)

    # Leases ------------------------------------------------------------
    async def acquire_or_renew_lease(self, name: str, holder: str, ttl_s: float) -> bool:
        """True while `holder` owns the lease. Safe against two holders:
        renewal happens under WATCH, so a lease taken over meanwhile is not extended."""
        key = self._k("lease", name)
        ttl_ms = max(1, int(ttl_s * 1000))
        if await self.redis.set(key, holder, nx=True, px=ttl_ms):
            return True
        async with self.redis.pipeline(transaction=True) as pipe:
            try:
                await pipe.watch(key)
                if await pipe.get(key) != holder:
                    await pipe.unwatch()
                    return False
                pipe.multi()
                pipe.set(key, holder, px=ttl_ms)
                await pipe.execute()
                return True
            except WatchError:
                return False

    async def release_lease(self, name: str, holder: str) -> None:
        key = self._k("lease", name)
        async with self.redis.pipeline(transaction=True) as pipe:
            try:
                await pipe.watch(key)
                if await pipe.get(key) == holder:
                    pipe.multi()
                    pipe.delete(key)
                    await pipe.execute()
                else:
                    await pipe.unwatch()
            except WatchError:
                pass

    async def lease_holder(self, name: str) -> str | None:
        value = await self.redis.get(self._k("lease", name))
        return str(value) if value is not None else None

    # Rate limits and counters -------------------------------------------
    async def hit_rate_limit(self, scope: str, who: str, limit: int, window_s: int = 60) -> bool:
        """Fixed-window counter; True when `who` is over `limit` in this window."""
        window = int(time.time() // window_s)
        key = self._k("rate", scope, who, window)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.incr(key)
            pipe.expire(key, window_s * 2)
            count, _ = await pipe.execute()
        return int(count) > limit

    async def incr(self, *parts: object, by: int = 1) -> int:
        return int(await self.redis.incrby(self._k("count", *parts), by))

    async def get_count(self, *parts: object) -> int:
        value = await self.redis.get(self._k("count", *parts))
        return int(value) if value is not None else 0

    # Rejected submissions by problem code -------------------------------------
    async def count_refusal(self, round_id: int, code: str, keep_s: int = 90 * 24 * 3600) -> None:
        """One more submission to ROUND_ID refused with CODE (a hash per round, so any code can be listed)."""
        key = self._k("refusals", "round", round_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hincrby(key, code, 1)
            pipe.expire(key, keep_s)
            await pipe.execute()

    async def refusals(self, round_id: int) -> dict[str, int]:
        raw: dict[Any, Any] = await self.redis.hgetall(self._k("refusals", "round", round_id))
        return {str(code): int(n) for code, n in raw.items()}

    # Replicas ------------------------------------------------------------------
    async def heartbeat(self, replica: str, forget_after_s: float = 3600.0) -> None:
        """REPLICA is alive now. Replicas silent for FORGET_AFTER_S are dropped from the set."""
        key, now = self._k("replicas"), time.time()
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.zadd(key, {replica: now})
            pipe.zremrangebyscore(key, "-inf", now - forget_after_s)
            await pipe.execute()

    async def forget_replica(self, replica: str) -> None:
        await self.redis.zrem(self._k("replicas"), replica)

    async def replicas(self) -> list[tuple[str, float]]:
        """(replica, seconds since its last heartbeat), most recent first."""
        now = time.time()
        rows: list[Any] = await self.redis.zrange(self._k("replicas"), 0, -1, desc=True, withscores=True)
        return [(str(row[0]), max(0.0, now - float(row[1]))) for row in rows]

    # Console sessions ended before their expiry ------------------------------
    async def end_console_session(self, session_id: str, ttl_s: float) -> None:
        await self.redis.set(self._k("console", "ended", session_id), "1", px=max(1, int(ttl_s * 1000)))

    async def console_session_ended(self, session_id: str) -> bool:
        return bool(await self.redis.exists(self._k("console", "ended", session_id)))

    # Cached current round ---------------------------------------------------
    async def cache_current_round(self, payload: str | None, ttl_s: float = 2.0) -> None:
        key = self._k("current_round")
        if payload is None:
            await self.redis.delete(key)
        else:
            await self.redis.set(key, payload, px=int(ttl_s * 1000))

    async def cached_current_round(self) -> str | None:
        value: Any = await self.redis.get(self._k("current_round"))
        return str(value) if value is not None else None

    async def ping(self) -> None:
        await self.redis.ping()
