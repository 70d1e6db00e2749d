"""The challenge store on Redis: every replica sees each challenge, each step atomic.

Layout, under the configured prefix:

    {prefix}challenge:{challenge_id}   hash (Challenge.to_fields), PX = the challenge TTL
    {prefix}challenge-node:{node_id}   hash {last_offer, open_id, speed}, 30 days

Offering and each step are one Lua script, so a challenge is started,
committed and verified once however many replicas are asked at once, and
every time (offered, started, committed) is Redis's `TIME`: one clock for all
replicas. Redis failing raises `Unavailable`: no step is taken on a guess.
"""

from __future__ import annotations

from dataclasses import replace

from redis.asyncio import Redis
from redis.exceptions import RedisError

from troop_common.errors import RateLimited, Unavailable
from troop_coordinator.challenge_store import OFFERED, Challenge, refuse

NODE_TTL_S = 30 * 86400
_NOW = "local t = redis.call('TIME') local now = tonumber(t[1]) + tonumber(t[2]) / 1e6 "

# KEYS: node, challenge. ARGV: interval_s, ttl_s, node_ttl_s, then the record's pairs.
_OFFER_LUA = (
    _NOW
    + """
local last = tonumber(redis.call('HGET', KEYS[1], 'last_offer'))
local interval = tonumber(ARGV[1])
if last and now - last < interval then
  return {'limited', string.format('%.6f', interval - (now - last))}
end
local ttl = tonumber(ARGV[2])
local id = nil
for i = 4, #ARGV, 2 do
  if ARGV[i] == 'challenge_id' then id = ARGV[i + 1] end
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
end
redis.call('HSET', KEYS[2], 'offered_at', string.format('%.6f', now),
  'expires_at', string.format('%.6f', now + ttl), 'state', 'offered')
redis.call('PEXPIRE', KEYS[2], math.ceil(ttl * 1000))
redis.call('HSET', KEYS[1], 'last_offer', string.format('%.6f', now), 'open_id', id)
redis.call('EXPIRE', KEYS[1], ARGV[3])
return {'ok', string.format('%.6f', now)}
"""
)

# KEYS: challenge, node. ARGV: id, node_id, from, to, stamp field ('' for none), pairs.
_ADVANCE_LUA = (
    _NOW
    + """
if redis.call('EXISTS', KEYS[1]) == 0 then return {'missing'} end
local rec = redis.call('HMGET', KEYS[1], 'node_id', 'expires_at', 'state')
if tonumber(rec[2]) < now then return {'missing'} end
if rec[1] ~= ARGV[2] then return {'other'} end
if redis.call('HGET', KEYS[2], 'open_id') ~= ARGV[1] then return {'superseded'} end
if rec[3] ~= ARGV[3] then return {'state', rec[3]} end
redis.call('HSET', KEYS[1], 'state', ARGV[4])
if ARGV[5] ~= '' then redis.call('HSET', KEYS[1], ARGV[5], string.format('%.6f', now)) end
for i = 6, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
local out = redis.call('HGETALL', KEYS[1])
table.insert(out, 1, 'ok')
return out
"""
)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class RedisChallengeStore:
    """ChallengeStore shared by every coordinator using the same Redis and prefix."""

    def __init__(self, redis: Redis, prefix: str = "troop:") -> None:
        self._redis = redis
        self._prefix = prefix
        self._offer = redis.register_script(_OFFER_LUA)
        self._advance = redis.register_script(_ADVANCE_LUA)

    def _challenge_key(self, challenge_id: str) -> str:
        return f"{self._prefix}challenge:{challenge_id}"

    def _node_key(self, node_id: str) -> str:
        return f"{self._prefix}challenge-node:{node_id}"

    async def _run(self, script: object, keys: list[str], args: list[object]) -> list[str]:
        try:
            answer = await script(keys=keys, args=args)  # type: ignore[operator]
        except RedisError as exc:
            raise Unavailable(f"proof-of-hardware challenges unavailable: {exc}") from exc
        return [_text(v) for v in answer]

    async def offer(self, challenge: Challenge, ttl_s: float, interval_s: float) -> Challenge:
        fields = challenge.to_fields()
        for stamped in ("offered_at", "expires_at", "state"):
            del fields[stamped]
        pairs = [x for kv in fields.items() for x in kv]
        answer = await self._run(
            self._offer,
            [self._node_key(challenge.node_id), self._challenge_key(challenge.challenge_id)],
            [interval_s, ttl_s, NODE_TTL_S, *pairs],
        )
        if answer[0] == "limited":
            raise RateLimited(
                f"a new challenge is offered at most once per {interval_s:g} s",
                float(answer[1]),
            )
        now = float(answer[1])
        return replace(challenge, offered_at=now, expires_at=now + ttl_s, state=OFFERED)

    async def advance(
        self, challenge_id: str, node_id: str, step: tuple[str, str, str], **fields: object
    ) -> Challenge:
        before, after, stamp = step
        encoded = Challenge.from_fields(
            {"challenge_id": "", "node_id": "", "rows": "0", "inner": "0", "cols": "0",
             "offered_at": "0", "expires_at": "0"}
        )  # fmt: skip
        flat = replace(encoded, **fields).to_fields()  # type: ignore[arg-type]
        pairs = [x for name in fields for x in (name, flat[name])]
        answer = await self._run(
            self._advance,
            [self._challenge_key(challenge_id), self._node_key(node_id)],
            [challenge_id, node_id, before, after, stamp, *pairs],
        )
        if answer[0] != "ok":
            refuse(answer[0], answer[1] if len(answer) > 1 else "")
        record = dict(zip(answer[1::2], answer[2::2], strict=True))
        return Challenge.from_fields(record)

    async def peek(self, challenge_id: str) -> Challenge | None:
        try:
            raw = await self._redis.hgetall(self._challenge_key(challenge_id))
        except RedisError as exc:
            raise Unavailable(f"proof-of-hardware challenges unavailable: {exc}") from exc
        if not raw:
            return None
        return Challenge.from_fields({_text(k): _text(v) for k, v in raw.items()})

    async def last_speed(self, node_id: str) -> float | None:
        try:
            raw = await self._redis.hget(self._node_key(node_id), "speed")
        except RedisError as exc:
            raise Unavailable(f"proof-of-hardware challenges unavailable: {exc}") from exc
        return None if raw is None else float(raw)

    async def record_speed(self, node_id: str, tflops: float) -> None:
        try:
            await self._redis.hset(self._node_key(node_id), "speed", repr(tflops))
            await self._redis.expire(self._node_key(node_id), NODE_TTL_S)
        except RedisError as exc:
            raise Unavailable(f"proof-of-hardware challenges unavailable: {exc}") from exc
