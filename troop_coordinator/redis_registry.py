"""NodeRegistry on Redis: every replica sees one view of who is alive.

Layout, under the configured prefix (docs/adr/0011, docs/adr/0035):

    {prefix}node:{node_id}     hash {doc: LiveNode as JSON, multiplier, checks}, PX = node TTL
    {prefix}nodes              sorted set node_id -> last_seen (unix s)
    {prefix}nodes:changes      sorted set node_id -> sequence number of its last change
    {prefix}nodes:seq          the last sequence number handed out
    {prefix}nodes:epoch        when this Redis first saw a node (changes if Redis lost its data)

A heartbeat is one script (one round trip, atomic): rewrite the node's hash with a
fresh TTL, bump its last_seen, and give it the next sequence number. The hash's
`checks` (the node's verification record, "version|JSON", docs/adr/0053) is kept when
it is later than the beat's: a replica that has not yet re-read the node's row cannot
put back a record older than a verdict another replica applied (`set_checks`). Liveness is the
hash existing (Redis expires it; nobody deletes a silent node) and its last_seen within
the TTL.

Reads never scan Redis: each replica keeps a mirror of the live nodes in a
`NodeIndex` (ranked per model, as the in-process registry does) and brings it up to
date at most every `refresh_s` with one script that returns only the nodes changed
since the sequence number it last saw (all of them on the first read, or when the
epoch changed). Its own heartbeats enter its mirror at once; other replicas' within
`refresh_s`. Redis failing raises `Unavailable("discovery unavailable")`: the
coordinator answers UNAVAILABLE, and no ledger write has happened yet on any path that
asks the registry. `redis_down()` (from the health monitor) makes the next read ask
Redis again, so discovery refuses as soon as Redis is known to be away.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import time
from collections.abc import Collection
from dataclasses import replace
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from troop_common.errors import Unavailable
from troop_coordinator.node_checks import NodeChecks
from troop_coordinator.registry import LiveNode, NodeHardware, NodeIndex, NodeLoad

# How stale a replica's view of other replicas' heartbeats may be.
DISCOVERY_REFRESH_S = 0.1

# The epoch names this Redis's copy of the registry: set once, lost with the data.
_EPOCH_LUA = """
local epoch = redis.call('GET', KEYS[1])
if not epoch then
  local now = redis.call('TIME')
  epoch = now[1] .. '.' .. now[2]
  redis.call('SET', KEYS[1], epoch)
end
"""

# KEYS: node hash, nodes, changes, seq, epoch. ARGV: node id, doc, multiplier,
# last_seen, TTL in ms, checks ("version|JSON"), its version. Returns the change's
# sequence number and the checks kept.
_HEARTBEAT_LUA = (
    _EPOCH_LUA.replace("KEYS[1]", "KEYS[5]")
    + """
local checks = ARGV[6]
local old = redis.call('HGET', KEYS[1], 'checks')
if old then
  local version = tonumber(string.match(old, '^(%d+)|'))
  if version and version > tonumber(ARGV[7]) then checks = old end
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'doc', ARGV[2], 'multiplier', ARGV[3], 'checks', checks)
redis.call('PEXPIRE', KEYS[1], ARGV[5])
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[1])
local seq = redis.call('INCR', KEYS[4])
redis.call('ZADD', KEYS[3], seq, ARGV[1])
return {seq, checks}
"""
)

# Set the multiplier only on a node that is still alive (never resurrect a key
# without its TTL). KEYS: node hash, changes, seq. ARGV: node id, multiplier.
_SET_MULTIPLIER_LUA = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HSET', KEYS[1], 'multiplier', ARGV[2])
  local seq = redis.call('INCR', KEYS[3])
  redis.call('ZADD', KEYS[2], seq, ARGV[1])
  return seq
end
return 0
"""

# A verdict's record on a node that is still alive, unless a later one is there.
# KEYS: node hash, changes, seq. ARGV: node id, checks ("version|JSON"), its version.
_SET_CHECKS_LUA = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  local old = redis.call('HGET', KEYS[1], 'checks')
  if old then
    local version = tonumber(string.match(old, '^(%d+)|'))
    if version and version > tonumber(ARGV[3]) then return 0 end
  end
  redis.call('HSET', KEYS[1], 'checks', ARGV[2])
  local seq = redis.call('INCR', KEYS[3])
  redis.call('ZADD', KEYS[2], seq, ARGV[1])
  return seq
end
return 0
"""

# What changed since a replica last looked. KEYS: epoch, nodes, changes, seq.
# ARGV: the epoch and sequence number the replica knows, the TTL cutoff (unix s), the
# node key prefix, the most changes to return with their documents. Forgets ids silent
# past the cutoff, then returns, as one JSON text (one bulk reply: parsed in C, not
# element by element), {epoch, seq, docs, changes: [[id, its seq, doc, multiplier], ...]}:
# the ids changed after the known seq, or every id if the epoch is not the known one;
# doc, multiplier (and checks) false for an expired node, or left out past the most (`docs`
# false: the caller reads them in slices, so a first look never stalls either side).
_CHANGES_LUA = (
    _EPOCH_LUA
    + """
local dead = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', '(' .. ARGV[3])
for i = 1, #dead do
  redis.call('ZREM', KEYS[2], dead[i])
  redis.call('ZREM', KEYS[3], dead[i])
end
local since = '(' .. ARGV[2]
if epoch ~= ARGV[1] then since = '-inf' end
local changed = redis.call('ZRANGEBYSCORE', KEYS[3], since, '+inf', 'WITHSCORES')
local docs = #changed <= 2 * tonumber(ARGV[5])
local changes = {}
for i = 1, #changed, 2 do
  local change = {changed[i], changed[i + 1]}
  if docs then
    local fields = redis.call('HMGET', ARGV[4] .. changed[i], 'doc', 'multiplier', 'checks')
    change[3] = fields[1]
    change[4] = fields[2]
    change[5] = fields[3]
  end
  changes[#changes + 1] = change
end
return cjson.encode({
  epoch = epoch, seq = redis.call('GET', KEYS[4]) or '0', docs = docs, changes = changes
})
"""
)
# The documents of the nodes whose keys are KEYS, as JSON: [[doc, multiplier, checks],
# ...], false for an expired node.
_DOCS_LUA = """
local out = {}
for i = 1, #KEYS do
  local fields = redis.call('HMGET', KEYS[i], 'doc', 'multiplier', 'checks')
  out[i] = {fields[1], fields[2], fields[3]}
end
return cjson.encode(out)
"""
# Changes returned with their documents by one sync at most; a larger catch-up (a
# replica's first look) reads the documents this many at a time.
_SYNC_DOCS = 500


def _encode(node: LiveNode) -> str:
    # What dataclasses.asdict gives, without its deep copies (a heartbeat's hot path);
    # the checks travel in their own hash field (`_encode_checks`).
    doc = {**vars(node), "load": vars(node.load), "hardware": vars(node.hardware)}
    del doc["checks"]
    return json.dumps(doc, separators=(",", ":"))


def _encode_checks(checks: NodeChecks) -> str:
    """The hash's `checks` field: "version|JSON" (the scripts compare the version)."""
    return f"{checks.version}|{json.dumps(checks.to_json(), separators=(',', ':'))}"


def _decode_checks(field: str | None) -> NodeChecks:
    if not field:
        return NodeChecks()
    return NodeChecks.from_json(json.loads(field.partition("|")[2]))


def _decode(doc: str, multiplier: str | None, checks: str | None = None) -> LiveNode:
    """The LiveNode in `doc`, with the hash's own `multiplier` (set_multiplier) if any,
    and its `checks` (set_checks, or kept by a heartbeat)."""
    data: dict[str, Any] = json.loads(doc)
    return LiveNode(
        node_id=data["node_id"],
        node_public_key=data["node_public_key"],
        endpoint=data["endpoint"],
        models=tuple(data["models"]),
        load=NodeLoad(**data["load"]),
        hardware=NodeHardware(**data["hardware"]),
        multiplier=float(data["multiplier"] if multiplier is None else multiplier),
        last_seen=float(data["last_seen"]),
        reputation=float(data.get("reputation", 1.0)),
        tls=bool(data.get("tls", False)),
        checks=_decode_checks(checks),
    )


class RedisNodeRegistry:
    """NodeRegistry shared by every coordinator using the same Redis and prefix."""

    def __init__(
        self,
        redis: Redis,
        ttl_s: float,
        *,
        prefix: str = "troop:",
        rng: random.Random | None = None,
        refresh_s: float = DISCOVERY_REFRESH_S,
    ) -> None:
        self.ttl_s = ttl_s
        self.refresh_s = refresh_s
        self._redis = redis
        self._prefix = prefix
        self._rng = rng or random.Random()
        self._heartbeat = redis.register_script(_HEARTBEAT_LUA)
        self._set_multiplier = redis.register_script(_SET_MULTIPLIER_LUA)
        self._set_checks = redis.register_script(_SET_CHECKS_LUA)
        self._changes = redis.register_script(_CHANGES_LUA)
        self._docs = redis.register_script(_DOCS_LUA)
        # The mirror: the index, and per node the sequence number and the (doc,
        # multiplier, checks) it was built from; the epoch and sequence number it is
        # current to.
        self._index = NodeIndex()
        self._seqs: dict[str, int] = {}
        self._raw: dict[str, tuple[str, str, str]] = {}
        self._epoch = ""
        self._seq = 0
        self._synced_at = -math.inf  # time.monotonic() when the last sync began
        self._sync_lock = asyncio.Lock()

    def _node_key(self, node_id: str) -> str:
        return f"{self._prefix}node:{node_id}"

    def _key(self, name: str) -> str:
        return f"{self._prefix}{name}"

    def redis_down(self) -> None:
        """Redis was found away: the next read asks it again instead of the mirror."""
        self._synced_at = -math.inf

    async def heartbeat(self, node: LiveNode) -> None:
        ttl_ms = max(1, math.ceil(self.ttl_s * 1000))
        doc, multiplier = _encode(node), repr(float(node.multiplier))
        checks = _encode_checks(node.checks)
        try:
            seq, kept = await self._heartbeat(
                keys=[
                    self._node_key(node.node_id),
                    self._key("nodes"),
                    self._key("nodes:changes"),
                    self._key("nodes:seq"),
                    self._key("nodes:epoch"),
                ],
                args=[
                    node.node_id,
                    doc,
                    multiplier,
                    repr(node.last_seen),
                    ttl_ms,
                    checks,
                    node.checks.version,
                ],
            )
        except RedisError as exc:
            raise Unavailable(f"discovery unavailable: {exc}") from exc
        kept = kept.decode() if isinstance(kept, bytes) else str(kept)
        if kept != checks:  # a later verdict's record stays
            node = replace(node, checks=_decode_checks(kept))
        self._learn(node.node_id, int(seq), doc, multiplier, kept, node)

    def _learn(
        self,
        node_id: str,
        seq: int,
        doc: str,
        multiplier: str,
        checks: str,
        node: LiveNode | None = None,
    ) -> None:
        """Put one node's change into the mirror, unless a later one is there already."""
        if seq < self._seqs.get(node_id, 0):
            return
        self._seqs[node_id] = seq
        if self._raw.get(node_id) == (doc, multiplier, checks):
            return  # this replica's own heartbeat, coming back
        self._raw[node_id] = (doc, multiplier, checks)
        self._index.put(node or _decode(doc, multiplier, checks))

    def _forget(self, node_id: str) -> None:
        self._seqs.pop(node_id, None)
        self._raw.pop(node_id, None)
        self._index.remove(node_id)

    async def _fresh(self, now: float) -> None:
        """Bring the mirror up to date if it is older than `refresh_s`, then drop nodes
        silent past the TTL (at `now`, and by the wall clock: Redis expires keys by it)."""
        if time.monotonic() - self._synced_at >= self.refresh_s:
            async with self._sync_lock:
                if time.monotonic() - self._synced_at >= self.refresh_s:
                    await self._sync()
        for node_id in self._index.prune(max(now, time.time()) - self.ttl_s):
            self._seqs.pop(node_id, None)
            self._raw.pop(node_id, None)

    async def _sync(self) -> None:
        began = time.monotonic()
        try:
            reply = await self._changes(
                keys=[
                    self._key("nodes:epoch"),
                    self._key("nodes"),
                    self._key("nodes:changes"),
                    self._key("nodes:seq"),
                ],
                args=[
                    self._epoch,
                    self._seq,
                    repr(time.time() - self.ttl_s),
                    self._node_key(""),
                    _SYNC_DOCS,
                ],
            )
        except RedisError as exc:
            raise Unavailable(f"discovery unavailable: {exc}") from exc
        payload = json.loads(reply)
        epoch, changes = payload["epoch"], list(payload["changes"] or ())
        if self._epoch and epoch != self._epoch:  # Redis lost its data: start afresh
            self._index.clear()
            self._seqs.clear()
            self._raw.clear()
        if payload["docs"]:
            for change in changes:
                self._apply(*_unpacked(change))
        else:
            for start in range(0, len(changes), _SYNC_DOCS):
                chunk = changes[start : start + _SYNC_DOCS]
                try:
                    found = await self._docs(keys=[self._node_key(c[0]) for c in chunk])
                except RedisError as exc:
                    raise Unavailable(f"discovery unavailable: {exc}") from exc
                for (node_id, seq), fields in zip(chunk, json.loads(found), strict=True):
                    self._apply(*_unpacked([node_id, seq, *fields]))
        self._epoch, self._seq = epoch, int(payload["seq"])
        self._synced_at = began

    def _apply(
        self, node_id: str, seq: int, doc: str | bool, multiplier: str | bool, checks: str | bool
    ) -> None:
        if not isinstance(doc, str):  # expired: silent past its TTL
            if seq >= self._seqs.get(node_id, 0):
                self._forget(node_id)
        else:
            self._learn(
                node_id,
                seq,
                doc,
                multiplier if isinstance(multiplier, str) else "1.0",
                checks if isinstance(checks, str) else "",
            )

    async def live_nodes(self, now: float, model: str = "") -> list[LiveNode]:
        await self._fresh(now)
        return self._index.by_id(model)

    async def ranked(
        self, now: float, model: str, offset: int, size: int
    ) -> tuple[list[LiveNode], int]:
        await self._fresh(now)
        return self._index.ranked(model, offset, size)

    async def pick(self, model: str, now: float, exclude: Collection[str] = ()) -> LiveNode | None:
        await self._fresh(now)
        return self._index.best(model, self._rng, exclude)

    async def set_multiplier(self, node_id: str, multiplier: float) -> None:
        value = repr(float(multiplier))
        try:
            seq = await self._set_multiplier(
                keys=[self._node_key(node_id), self._key("nodes:changes"), self._key("nodes:seq")],
                args=[node_id, value],
            )
        except RedisError as exc:
            raise Unavailable(f"discovery unavailable: {exc}") from exc
        node, raw = self._index.get(node_id), self._raw.get(node_id)
        if seq and node is not None and raw is not None:
            self._learn(
                node_id, int(seq), raw[0], value, raw[2], replace(node, multiplier=multiplier)
            )

    async def set_checks(self, node_id: str, checks: NodeChecks) -> None:
        value = _encode_checks(checks)
        try:
            seq = await self._set_checks(
                keys=[self._node_key(node_id), self._key("nodes:changes"), self._key("nodes:seq")],
                args=[node_id, value, checks.version],
            )
        except RedisError as exc:
            raise Unavailable(f"discovery unavailable: {exc}") from exc
        node, raw = self._index.get(node_id), self._raw.get(node_id)
        if seq and node is not None and raw is not None:
            self._learn(node_id, int(seq), raw[0], raw[1], value, replace(node, checks=checks))

    async def node(self, node_id: str, now: float) -> LiveNode | None:
        await self._fresh(now)
        return self._index.get(node_id)


def _unpacked(change: list[Any]) -> tuple[str, int, Any, Any, Any]:
    """[id, seq, doc, multiplier, checks] from a script (a trailing nil is left out)."""
    node_id, seq, *fields = change
    doc, multiplier, checks = (*fields, False, False, False)[:3]
    return str(node_id), int(seq), doc, multiplier, checks
