"""The answer cache shared by several gateway replicas through one Redis.

Redis holds the answers; every replica holds its own copy of the semantic index in memory (Redis 7 has
no vector search), and the replicas keep their copies in step through a Redis stream of events.

Keys, all under the store's prefix:

- `e:{namespace}:{key}`: one hash per entry, fields `b` (the body), `m` (the other fields as JSON),
  `c` (the context key) and, when the question was embedded, `v` (its vector as a little-endian
  float32 scale followed by 384 int8 codes: 388 bytes). Redis expires it at the answer's `expires_at`.
  Namespaces may contain ':' but keys may not, so a name splits at its last ':'.
- `lru`: a sorted set of `{namespace}:{key}` scored by the last use (Redis's clock, in microseconds),
  for the cap on entries across all namespaces.
- `events`: a stream (trimmed to about `events_kept` entries) of what changed, as fields `t` (the
  kind) and its arguments: `put` (n, k, c, v, x = expires_at in ms; an empty `v` takes the entry out
  of the index), `drop` (n, k), `drop-namespace` (n) and `drop-all`.
- `epoch`: a token set once by the first replica to load; when it is missing or changed, Redis lost its
  data (restarted without persistence, flushed) and the replicas rebuild their indexes.

`put` is one Lua script: it replaces the entry, scores it in `lru`, appends the `put` event and, while
`lru` holds more than `max_entries` members, pops the least recently used, deletes their entries and
appends a `drop` event for each. A hit (`get`) is also one script: it reads the entry and moves it to
the young end of `lru`. Entries that expire leave `lru` lazily, when they come to its old end. (The
put script deletes evicted entries by names it builds itself, which a single Redis allows but Redis
Cluster would not.)

Each replica applies its own changes to its index at once, and its background task reads the stream
(a blocking XREAD from the last event seen) and applies everyone's, its own again included: every
event is idempotent. Because nothing tells the replicas that an entry expired, a `get` that finds
nothing drops the key from this replica's index; to do that without knowing the context key, the
store keeps, per namespace, a dict from each indexed key to its context.

`start` loads the index: it notes the stream's position, then scans the entries (so an event written
during the scan is replayed afterwards rather than lost), builds a new index and swaps it in, then
follows the stream from the noted position. It rebuilds the same way whenever events may have been
missed: after Redis errors in the follower, when the epoch changed, or when the stream was trimmed past
what this replica had read.

A Redis outage never raises out of the store: `get` answers None, `put` and `invalidate` do nothing
(so the cache is bypassed), `nearest` keeps answering from memory, and `available` is False until the
follower reaches Redis again (and has rebuilt the index). One warning is logged per outage. While
`available` is False and the follower runs, or while the process's `RedisGuard` says Redis is away
(its probe has not seen it answer, or a request's call of any Redis user failed a moment ago), requests
do not even try Redis, so a dead Redis costs them nothing; the follower retries with a backoff of up to
two seconds whatever the guard says. A request's failed call is noted by the guard; the follower's are
not (a blocking read that times out under a burst says little: the probe is the background's judge).

The Redis client is the caller's: `aclose` stops the follower but leaves the client open. Its
`socket_timeout` bounds the follower's blocking read (half of it, at most one second), and it must
not decode responses (bodies and vectors are bytes).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import orjson
import redis.asyncio
import redis.exceptions

from gateway.cache.semantic_index import (
    CANDIDATE_FLOOR,
    DIMENSION,
    Neighbour,
    SemanticIndex,
    Vectors,
    dequantise,
    quantise,
)
from gateway.cache.store import CachedAnswer
from gateway.state.redis_guard import REDIS_ERRORS, RedisGuard

logger = logging.getLogger("gateway.cache")

VECTOR_BYTES = 4 + DIMENSION
# Entries read per pipeline while loading the index, and events per read of the stream.
LOAD_BATCH = 500
EVENT_BATCH = 500
# The follower's backoff after a Redis error: doubles from the first to the last.
FIRST_RETRY = 0.1
LAST_RETRY = 2.0
LONGEST_BLOCK_MS = 1000

# KEYS: entry, lru, events. ARGV: member, body, meta, context, vector, expires_at (ms), max_entries,
# events_kept, entry key prefix, namespace, key. Returns the members evicted.
PUT_SCRIPT = """
local now = redis.call('TIME')
local score = now[1] .. string.sub('00000' .. now[2], -6)
redis.call('DEL', KEYS[1])
if tonumber(ARGV[6]) * 1000 <= tonumber(score) then
  redis.call('ZREM', KEYS[2], ARGV[1])
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[8], '*', 't', 'drop', 'n', ARGV[10], 'k', ARGV[11])
  return {}
end
redis.call('HSET', KEYS[1], 'b', ARGV[2], 'm', ARGV[3], 'c', ARGV[4])
if ARGV[5] ~= '' then
  redis.call('HSET', KEYS[1], 'v', ARGV[5])
end
redis.call('PEXPIREAT', KEYS[1], ARGV[6])
redis.call('ZADD', KEYS[2], score, ARGV[1])
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[8], '*',
  't', 'put', 'n', ARGV[10], 'k', ARGV[11], 'c', ARGV[4], 'v', ARGV[5], 'x', ARGV[6])
local evicted = {}
local over = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[7])
if over > 0 then
  local popped = redis.call('ZPOPMIN', KEYS[2], over)
  for i = 1, #popped, 2 do
    local member = popped[i]
    redis.call('DEL', ARGV[9] .. member)
    local namespace, key = string.match(member, '^(.*):([^:]*)$')
    if namespace then
      redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[8], '*', 't', 'drop', 'n', namespace, 'k', key)
    end
    evicted[#evicted + 1] = member
  end
end
return evicted
"""

# KEYS: entry, lru. ARGV: member. The entry's body, meta and context, or nil.
GET_SCRIPT = """
local found = redis.call('HMGET', KEYS[1], 'b', 'm', 'c')
if not found[1] then
  return false
end
local now = redis.call('TIME')
redis.call('ZADD', KEYS[2], now[1] .. string.sub('00000' .. now[2], -6), ARGV[1])
return found
"""

_GLOB_SPECIALS = re.compile(r"([*?\[\]\\])")


def encode_vector(vector: Vectors) -> bytes:
    """The vector as its int8 codes' scale (float32, little-endian) followed by the codes."""
    codes, scale = quantise(np.asarray(vector, dtype=np.float32))
    return np.asarray(scale, dtype="<f4").tobytes() + codes.tobytes()


def decode_vector(data: bytes | None) -> Vectors | None:
    """None for anything that is not an encoded vector (an entry stored without one)."""
    if data is None or len(data) != VECTOR_BYTES:
        return None
    scale = np.frombuffer(data, dtype="<f4", count=1).astype(np.float32)
    codes = np.frombuffer(data, dtype=np.int8, offset=4)
    vector: Vectors = dequantise(codes[None, :], scale)[0]
    return vector


def _glob_escape(text: str) -> str:
    return _GLOB_SPECIALS.sub(r"\\\1", text)


def _check_key(key: str) -> None:
    if ":" in key:
        raise ValueError(f"a cache key may not contain ':' (the namespace may): {key!r}")


def _split(member: str) -> tuple[str, str]:
    """`{namespace}:{key}` as (namespace, key)."""
    namespace, _, key = member.rpartition(":")
    return namespace, key


def _stream_entries(response: Any) -> list[tuple[bytes, dict[bytes, bytes]]]:
    """XREAD's answer for one stream as (id, fields), whether the client speaks RESP2 or RESP3."""
    if not response:
        return []
    streams = response.values() if isinstance(response, dict) else [entries for _, entries in response]
    found: list[tuple[bytes, dict[bytes, bytes]]] = []
    for entries in streams:
        for item in entries:
            # RESP3 wraps a stream's entries in one more list.
            found.extend(item if isinstance(item, list) else [item])
    return found


class _LocalIndex:
    """This replica's semantic index, and per namespace the context of each key in it (the index cannot
    find a key without its context). Each context string is kept once however many keys share it: a
    context key is 113 bytes as a str."""

    def __init__(self) -> None:
        self.vectors = SemanticIndex()
        self._contexts: dict[str, dict[str, str]] = {}
        # Per namespace, each context in use: the one string kept for it, and how many keys have it.
        self._shared: dict[str, dict[str, tuple[str, int]]] = {}

    def __len__(self) -> int:
        return sum(len(contexts) for contexts in self._contexts.values())

    def add(self, namespace: str, context: str, key: str, vector: Vectors) -> None:
        previous = self._pop(namespace, key)
        shared = self._shared.setdefault(namespace, {})
        kept, count = shared.get(context, (context, 0))
        shared[kept] = (kept, count + 1)
        self._contexts.setdefault(namespace, {})[key] = kept
        if previous is not None and previous != kept:
            self.vectors.remove(namespace, previous, key)
        self.vectors.add(namespace, kept, key, vector)

    def forget(self, namespace: str, key: str) -> None:
        context = self._pop(namespace, key)
        if context is not None:
            self.vectors.remove(namespace, context, key)

    def drop(self, namespace: str | None = None) -> None:
        """Forget a namespace, or everything."""
        if namespace is None:
            self._contexts.clear()
            self._shared.clear()
        else:
            self._contexts.pop(namespace, None)
            self._shared.pop(namespace, None)
        self.vectors.drop(namespace)

    def _pop(self, namespace: str, key: str) -> str | None:
        contexts = self._contexts.get(namespace)
        context = contexts.pop(key, None) if contexts is not None else None
        if contexts is None or context is None:
            return None
        if not contexts:
            del self._contexts[namespace]
        shared = self._shared[namespace]
        kept, count = shared[context]
        if count > 1:
            shared[context] = (kept, count - 1)
        else:
            del shared[context]
            if not shared:
                del self._shared[namespace]
        return context


class RedisCacheStore:
    """A `CacheStore` over Redis, shared by replicas; see the module's docstring."""

    def __init__(
        self,
        client: redis.asyncio.Redis,
        prefix: str = "gw:cache:",
        max_entries: int = 10_000,
        *,
        events_kept: int = 20_000,
        guard: RedisGuard | None = None,
    ) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be at least 1, not {max_entries}")
        options = client.connection_pool.connection_kwargs
        if options.get("decode_responses"):
            raise ValueError("the cache's Redis client must not decode responses (bodies are bytes)")
        self._client = client
        # The process's one outage strategy (a guard of the store's own when none is given).
        self._guard = guard if guard is not None else RedisGuard()
        self._prefix = prefix
        self._entry_prefix = f"{prefix}e:"
        self._lru = f"{prefix}lru"
        self._events = f"{prefix}events"
        self._epoch_key = f"{prefix}epoch"
        self._max = max_entries
        self._events_kept = events_kept
        timeout = options.get("socket_timeout")
        # A blocking read longer than the socket timeout would time out as an error.
        self._block_ms = (
            LONGEST_BLOCK_MS if timeout is None else max(10, min(LONGEST_BLOCK_MS, int(timeout * 500)))
        )
        self._put_script = client.register_script(PUT_SCRIPT)
        self._get_script = client.register_script(GET_SCRIPT)
        # Replaced, not edited, by a rebuild.
        self._local = _LocalIndex()
        self.available = True
        self._stale = True
        self._epoch: bytes | None = None
        self._last_id: bytes = b"0-0"
        # Events up to `_last_id` ever added to the stream, as far as this replica knows (None: unknown).
        self._seen: int | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def index(self) -> SemanticIndex:
        """This replica's semantic index (a new object after each rebuild)."""
        return self._local.vectors

    async def start(self) -> None:
        """Load the index from Redis (if it answers) and start following the stream."""
        if self._task is not None:
            return
        try:
            await self._rebuild()
            self._mark_available()
        except REDIS_ERRORS as exc:
            self._lost("loading the semantic index", exc)
        self._task = asyncio.create_task(self._follow_forever(), name="redis-cache-follower")

    async def aclose(self) -> None:
        """Stop following the stream; the client stays open (it is the caller's)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def get(self, namespace: str, key: str) -> CachedAnswer | None:
        _check_key(key)
        if self._bypassed():
            return None
        try:
            found = await self._get_script(
                keys=[self._entry(namespace, key), self._lru], args=[f"{namespace}:{key}"]
            )
        except REDIS_ERRORS as exc:
            self._guard.failed()  # a request met the failure: the next ones skip Redis
            self._lost("reading an entry", exc)
            return None
        self._answered()
        if found is None:
            # Expired, evicted or dropped, perhaps without this replica hearing of it yet.
            self._local.forget(namespace, key)
            return None
        body, meta, context = found
        try:
            fields = orjson.loads(meta)
            return CachedAnswer(
                body=bytes(body),
                prompt_tokens=int(fields["pt"]),
                completion_tokens=int(fields["ct"]),
                route=str(fields["r"]),
                deployment=str(fields["d"]),
                expires_at=float(fields["x"]),
                context=bytes(context).decode(),
                question=str(fields["q"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            logger.warning("cache entry %s in namespace %s is unreadable, ignored: %r", key, namespace, exc)
            return None

    async def put(
        self, namespace: str, key: str, answer: CachedAnswer, vector: Vectors | None = None
    ) -> None:
        _check_key(key)
        if vector is not None and np.shape(vector) != (DIMENSION,):
            raise ValueError(f"a question's vector has shape ({DIMENSION},), not {np.shape(vector)}")
        encoded = b"" if vector is None else encode_vector(vector)
        if self._bypassed():
            return
        meta = orjson.dumps(
            {
                "pt": answer.prompt_tokens,
                "ct": answer.completion_tokens,
                "r": answer.route,
                "d": answer.deployment,
                "x": answer.expires_at,
                "q": answer.question,
            }
        )
        expires_ms = math.ceil(answer.expires_at * 1000)
        try:
            evicted = await self._put_script(
                keys=[self._entry(namespace, key), self._lru, self._events],
                args=[
                    f"{namespace}:{key}",
                    answer.body,
                    meta,
                    answer.context,
                    encoded,
                    expires_ms,
                    self._max,
                    self._events_kept,
                    self._entry_prefix,
                    namespace,
                    key,
                ],
            )
        except REDIS_ERRORS as exc:
            self._guard.failed()  # a request met the failure: the next ones skip Redis
            self._lost("storing an entry", exc)
            return
        self._answered()
        # The same as the events this put appended, applied now rather than when the follower reads them.
        decoded = decode_vector(encoded)
        if decoded is None or expires_ms <= time.time() * 1000:
            self._local.forget(namespace, key)
        else:
            self._local.add(namespace, answer.context, key, decoded)
        for member in evicted:
            self._local.forget(*_split(bytes(member).decode()))

    def nearest(self, namespace: str, context: str, vector: Vectors, count: int = 4) -> list[Neighbour]:
        return self.index.nearest(namespace, context, vector, count, CANDIDATE_FLOOR)

    async def invalidate(self, namespace: str | None = None, key: str | None = None) -> int:
        if namespace is None and key is not None:
            raise ValueError("an entry's key needs its namespace")
        if namespace is not None and key is not None:
            _check_key(key)
        what = "everything" if namespace is None else namespace if key is None else f"{key} in {namespace}"
        if self._bypassed():
            logger.warning("cache invalidation of %s skipped: Redis is unavailable", what)
            return 0
        try:
            if namespace is None:
                dropped = await self._drop_all()
            elif key is None:
                dropped = await self._drop_namespace(namespace)
            else:
                dropped = await self._drop_entry(namespace, key)
        except REDIS_ERRORS as exc:
            self._guard.failed()  # a request met the failure: the next ones skip Redis
            self._lost("invalidating entries", exc)
            logger.warning("cache invalidation of %s failed (it may be partly done): %r", what, exc)
            return 0
        self._answered()
        return dropped

    # Redis

    def _entry(self, namespace: str, key: str) -> str:
        return f"{self._entry_prefix}{namespace}:{key}"

    def _parse_entry(self, name: bytes) -> tuple[str, str] | None:
        """An entry's Redis key as (namespace, key); None for anything else."""
        try:
            text = name.decode()
        except UnicodeDecodeError:
            return None
        if not text.startswith(self._entry_prefix) or ":" not in text[len(self._entry_prefix) :]:
            return None
        return _split(text[len(self._entry_prefix) :])

    async def _drop_entry(self, namespace: str, key: str) -> int:
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.delete(self._entry(namespace, key))
            pipe.zrem(self._lru, f"{namespace}:{key}")
            self._append(pipe, {"t": "drop", "n": namespace, "k": key})
            deleted, *_ = await pipe.execute()
        self._local.forget(namespace, key)
        return int(deleted)

    async def _drop_namespace(self, namespace: str) -> int:
        # The pattern also matches namespaces that merely start with `namespace:`; the parse tells.
        pattern = f"{_glob_escape(self._entry_prefix)}{_glob_escape(namespace)}:*"
        dropped = await self._delete_matching(pattern, namespace)
        await self._append(self._client, {"t": "drop-namespace", "n": namespace})
        self._local.drop(namespace)
        return dropped

    async def _drop_all(self) -> int:
        dropped = await self._delete_matching(f"{_glob_escape(self._entry_prefix)}*", None)
        await self._client.delete(self._lru)
        await self._append(self._client, {"t": "drop-all"})
        self._local.drop()
        return dropped

    async def _delete_matching(self, pattern: str, namespace: str | None) -> int:
        dropped = 0
        names: list[bytes] = []
        members: list[str] = []

        async def delete() -> int:
            async with self._client.pipeline(transaction=False) as pipe:
                pipe.delete(*names)
                pipe.zrem(self._lru, *members)
                deleted, _ = await pipe.execute()
            names.clear()
            members.clear()
            return int(deleted)

        async for name in self._client.scan_iter(match=pattern, count=1000):
            parsed = self._parse_entry(name)
            if parsed is None or (namespace is not None and parsed[0] != namespace):
                continue
            names.append(name)
            members.append(f"{parsed[0]}:{parsed[1]}")
            if len(names) >= LOAD_BATCH:
                dropped += await delete()
        if names:
            dropped += await delete()
        return dropped

    def _append(self, target: Any, fields: Mapping[str, str]) -> Any:
        """XADD an event on the client (to await) or a pipeline (queued)."""
        return target.xadd(self._events, dict(fields), maxlen=self._events_kept, approximate=True)

    # Following the stream

    def _apply(self, fields: Mapping[bytes, bytes]) -> None:
        """One event from the stream; events from other versions or garbage are skipped."""
        kind = fields.get(b"t")
        try:
            if kind == b"put":
                namespace, key = fields[b"n"].decode(), fields[b"k"].decode()
                vector = decode_vector(fields.get(b"v"))
                if vector is None or int(fields[b"x"]) <= time.time() * 1000:
                    self._local.forget(namespace, key)
                else:
                    self._local.add(namespace, fields[b"c"].decode(), key, vector)
            elif kind == b"drop":
                self._local.forget(fields[b"n"].decode(), fields[b"k"].decode())
            elif kind == b"drop-namespace":
                self._local.drop(fields[b"n"].decode())
            elif kind == b"drop-all":
                self._local.drop()
        except (KeyError, ValueError) as exc:
            logger.debug("cache event skipped: %r (%r)", fields, exc)

    async def _rebuild(self) -> None:
        """Load a new index from the entries in Redis and swap it in; then follow from before the scan."""
        async with self._client.pipeline(transaction=False) as pipe:
            pipe.set(self._epoch_key, uuid.uuid4().hex, nx=True)
            pipe.get(self._epoch_key)
            _, epoch = await pipe.execute()
        last_id, seen = await self._stream_position()
        local = _LocalIndex()
        names: list[bytes] = []
        async for name in self._client.scan_iter(match=f"{_glob_escape(self._entry_prefix)}*", count=1000):
            names.append(name)
            if len(names) >= LOAD_BATCH:
                await self._load(names, local)
                names = []
        if names:
            await self._load(names, local)
        self._local = local
        self._epoch, self._last_id, self._seen = epoch, last_id, seen
        self._stale = False
        logger.debug("semantic cache index loaded from Redis: %d questions", len(local))

    async def _stream_position(self) -> tuple[bytes, int | None]:
        """The stream's last id and how many events were ever added to it (None if Redis does not say)."""
        try:
            info = await self._client.xinfo_stream(self._events)
        except redis.exceptions.ResponseError as exc:
            if "no such key" not in str(exc).lower():
                raise
            return b"0-0", 0
        added = info.get("entries-added")
        return bytes(info["last-generated-id"]), None if added is None else int(added)

    async def _load(self, names: Sequence[bytes], local: _LocalIndex) -> None:
        async with self._client.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.hmget(name, ["c", "v"])
            found: Iterable[list[bytes | None]] = await pipe.execute()
        for name, (context, encoded) in zip(names, found, strict=True):
            parsed = self._parse_entry(name)
            vector = decode_vector(encoded)
            if parsed is None or context is None or vector is None:
                continue
            namespace, key = parsed
            local.add(namespace, context.decode(), key, vector)

    async def _follow_forever(self) -> None:
        delay = FIRST_RETRY
        while True:
            try:
                if self._stale:
                    await self._rebuild()
                    self._mark_available()
                await self._follow()
                self._mark_available()
                delay = FIRST_RETRY
                continue
            except REDIS_ERRORS as exc:
                self._stale = True
                self._lost("following the cache's events", exc)
            except Exception:
                self._stale = True
                logger.exception("semantic cache follower failed; it will reload the index")
            await asyncio.sleep(delay)
            delay = min(2 * delay, LAST_RETRY)

    async def _follow(self) -> None:
        """One blocking read of the stream, its events applied."""
        async with self._client.pipeline(transaction=False) as pipe:
            pipe.get(self._epoch_key)
            pipe.xread({self._events: self._last_id}, count=EVENT_BATCH, block=self._block_ms)
            epoch, response = await pipe.execute()
        if epoch != self._epoch:
            logger.info("semantic cache: Redis lost its data (restarted or flushed); reloading the index")
            self._stale = True
            return
        entries = _stream_entries(response)
        for entry_id, fields in entries:
            self._apply(fields)
            self._last_id = bytes(entry_id)
        if self._seen is None:
            return
        self._seen += len(entries)
        # Only a replica that fell behind by more than the stream keeps can have missed events, and
        # then the read returns a full batch (the stream keeps at least `events_kept`, all unread).
        if len(entries) >= min(EVENT_BATCH, self._events_kept):
            # Has the stream been trimmed past events this replica has not read?
            info = await self._client.xinfo_stream(self._events)
            if int(info["entries-added"]) - int(info["length"]) > self._seen:
                logger.info("semantic cache: fell behind the event stream; reloading the index")
                self._stale = True

    # Availability

    def _bypassed(self) -> bool:
        """During an outage requests skip Redis: while the guard says it is away, and while this store
        is unavailable with the follower there to notice its return."""
        if self._guard.away is not None:
            return True
        return not self.available and self._task is not None and not self._task.done()

    def _answered(self) -> None:
        """A request reached Redis; without a follower that is the only sign an outage is over."""
        if not self.available and self._task is None:
            self._mark_available()

    def _lost(self, doing: str, exc: BaseException) -> None:
        if self.available:
            self.available = False
            logger.warning(
                "Redis unavailable while %s: the answer cache is bypassed until it answers again: %r",
                doing,
                exc,
            )
        else:
            logger.debug("Redis still unavailable while %s: %r", doing, exc)

    def _mark_available(self) -> None:
        if not self.available:
            self.available = True
            logger.warning("Redis answers again: the answer cache is back")
