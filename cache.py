"""The `GET /posts/{id}` cache: encoded response bytes, in Redis or in process.

Staleness is closed with a generation per post: a reader notes the generation *before* reading
the database and fills the cache only if it is still the same; every write bumps it after its
commit. So a slow reader holding an old row can never put it back after a writer's invalidation.
Concurrent misses for one post share one database read per process (single-flight).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

import crud
import observability
from database import Database, Row
from errors import PostNotFound
from models import Post, User
from post_json import dumps_post
from redis_backend import RedisBackend

logger = logging.getLogger("blog.cache")

GENERATION_TTL_SECONDS = 86_400
# A generation is kept at least this long after its bump: far longer than any database read.
GENERATION_MIN_AGE_SECONDS = 120.0

FILL_IF_UNCHANGED = """
if (redis.call('GET', KEYS[2]) or '0') == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
  return 1
end
return 0
"""


@dataclass(frozen=True)
class CachedPost:
    """A post's encoded JSON body and its ETag."""

    etag: str
    body: bytes

    def encode(self) -> bytes:
        return self.etag.encode() + b"\n" + self.body

    @classmethod
    def decode(cls, raw: bytes) -> CachedPost:
        etag, _, body = raw.partition(b"\n")
        return cls(etag.decode(), body)


class PostCache:
    """No caching (CACHE_TTL_SECONDS=0); the base of the real caches."""

    async def lookup(self, post_id: int) -> tuple[CachedPost | None, str]:
        """The cached entry (or None) and the generation to fill with after a miss."""
        return None, "0"

    async def fill(self, post_id: int, generation: str, entry: CachedPost) -> None:
        return None

    async def invalidate(self, post_id: int) -> None:
        return None


class InProcessPostCache(PostCache):
    """A bounded LRU with a TTL, for the embedded default."""

    def __init__(self, ttl_seconds: int, max_entries: int) -> None:
        self.ttl = ttl_seconds
        self.max_entries = max_entries
        self.entries: OrderedDict[int, tuple[float, CachedPost]] = OrderedDict()
        self.generations: dict[int, tuple[str, float]] = {}
        self._counter = itertools.count(1)

    async def lookup(self, post_id: int) -> tuple[CachedPost | None, str]:
        generation = self.generations.get(post_id, ("0", 0.0))[0]
        item = self.entries.get(post_id)
        if item is None:
            return None, generation
        expires, entry = item
        if expires < time.monotonic():
            del self.entries[post_id]
            return None, generation
        self.entries.move_to_end(post_id)
        return entry, generation

    async def fill(self, post_id: int, generation: str, entry: CachedPost) -> None:
        if self.generations.get(post_id, ("0", 0.0))[0] != generation:
            return
        self.entries[post_id] = (time.monotonic() + self.ttl, entry)
        self.entries.move_to_end(post_id)
        while len(self.entries) > self.max_entries:
            self.entries.popitem(last=False)

    async def invalidate(self, post_id: int) -> None:
        now = time.monotonic()
        self.entries.pop(post_id, None)
        self.generations[post_id] = (str(next(self._counter)), now)
        if len(self.generations) > self.max_entries:
            cutoff = now - GENERATION_MIN_AGE_SECONDS
            self.generations = {k: v for k, v in self.generations.items() if v[1] >= cutoff}


class RedisPostCache(PostCache):
    """Shared by every worker; bypassed (never failing a request) while Redis is down."""

    def __init__(self, redis: RedisBackend, ttl_seconds: int) -> None:
        self.redis = redis
        self.ttl = ttl_seconds
        self._fill_script = redis.client.register_script(FILL_IF_UNCHANGED)
        # Invalidations that could not reach Redis, replayed before the cache is used again.
        self.pending: set[int] = set()

    @staticmethod
    def _keys(post_id: int) -> tuple[str, str]:
        return f"blog:post:{post_id}:body", f"blog:post:{post_id}:gen"

    async def _call(
        self,
        operation: Callable[[Redis], Awaitable[Any]],
        fallback: Any,
        *,
        always_try: bool = False,
    ) -> Any:
        async def bypass() -> Any:
            return fallback

        async def with_pending_replayed(client: Redis) -> Any:
            if self.pending:
                for post_id in list(self.pending):
                    await self._bump(client, post_id)
                    self.pending.discard(post_id)
            return await operation(client)

        return await self.redis.call("cache", with_pending_replayed, bypass, always_try=always_try)

    async def lookup(self, post_id: int) -> tuple[CachedPost | None, str]:
        body_key, gen_key = self._keys(post_id)

        async def read(_client: Redis) -> tuple[CachedPost | None, str]:
            raw, generation = await self.redis.pipelined("MGET", body_key, gen_key)
            entry = CachedPost.decode(_as_bytes(raw)) if raw is not None else None
            return entry, _as_bytes(generation).decode() if generation is not None else "0"

        result: tuple[CachedPost | None, str] = await self._call(read, (None, ""))
        return result

    async def fill(self, post_id: int, generation: str, entry: CachedPost) -> None:
        if not generation:  # the lookup itself failed: do not fill blindly
            return

        async def write(client: Redis) -> None:
            await self._fill_script(
                keys=list(self._keys(post_id)), args=[generation, entry.encode(), self.ttl]
            )

        await self._call(write, None)

    async def invalidate(self, post_id: int) -> None:
        async def bump(client: Redis) -> bool:
            await self._bump(client, post_id)
            return True

        # Tried even while this worker believes Redis is down: another worker may already be
        # reading from it again, and must not keep serving the old entry.
        if not await self._call(bump, False, always_try=True):
            self.pending.add(post_id)

    async def _bump(self, client: Redis, post_id: int) -> None:
        body_key, gen_key = self._keys(post_id)
        async with client.pipeline(transaction=True) as pipe:
            pipe.incr(gen_key)
            pipe.expire(gen_key, GENERATION_TTL_SECONDS)
            pipe.delete(body_key)
            await pipe.execute()


def _as_bytes(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode()


def create_post_cache(redis: RedisBackend | None, ttl_seconds: int, max_entries: int) -> PostCache:
    """The cache for this configuration: Redis when configured, in process otherwise."""
    if ttl_seconds <= 0:
        return PostCache()
    if redis is not None:
        return RedisPostCache(redis, ttl_seconds)
    return InProcessPostCache(ttl_seconds, max_entries)


class SingleFlight:
    """Concurrent calls for one key in this process share the first call's result."""

    def __init__(self) -> None:
        self._flights: dict[Any, asyncio.Task[Any]] = {}

    async def run(self, key: Any, work: Callable[[], Awaitable[Any]]) -> Any:
        task = self._flights.get(key)
        if task is None:
            task = asyncio.ensure_future(work())
            self._flights[key] = task
            task.add_done_callback(lambda _: self._flights.pop(key, None))
        # shield: one caller going away must not cancel the read the others wait for
        return await asyncio.shield(task)


@dataclass(frozen=True)
class LoadedPost:
    """What the cached read path needs to decide visibility without another query."""

    author_id: int
    published: bool
    entry: CachedPost


def etag_of(post: Post | Row) -> str:
    """A strong validator that changes with every change of the post."""
    if isinstance(post, Post):
        return f'"{post.id}-{post.version}"'
    return f'"{post["id"]}-{post["version"]}"'


def encode_post(row: Row) -> CachedPost:
    return CachedPost(etag_of(row), dumps_post(row))


MAX_SLUG_HINTS = 10_000


def _carries_slug(entry: CachedPost, slug: str) -> bool:
    # A slug is [a-z0-9-] and JSON escapes every quote inside a string, so this byte sequence
    # occurs in the body only as the post's own "slug" member.
    return b'"slug":"' + slug.encode() + b'"' in entry.body


class PostReader:
    """`GET /posts/{id}`: cache first, then one shared database read per post and generation."""

    def __init__(self, cache: PostCache, database: Database) -> None:
        self.cache = cache
        self.database = database
        self.flights = SingleFlight()
        # slug -> post id, learnt from the database; only a hint: an answer is given only when
        # the post's (fresh) body still carries the slug asked for, else it is looked up again.
        self.slug_ids: dict[str, int] = {}

    async def read(self, post_id: int, viewer: User | None) -> tuple[CachedPost, bool]:
        """The post's encoded body for this viewer and whether it came from the cache."""
        entry, generation = await self.cache.lookup(post_id)
        if entry is not None:
            observability.record_cache(hit=True)
            return entry, True
        observability.record_cache(hit=False)
        if generation and type(self.cache) is not PostCache:
            loaded = await self.flights.run(
                (post_id, generation), lambda: self._load(post_id, generation)
            )
        else:  # no generation to tie a shared read to: read on our own
            loaded = await self._load(post_id, "")
        if loaded is None or not (
            loaded.published
            or (viewer is not None and (viewer.role == "admin" or viewer.id == loaded.author_id))
        ):
            raise PostNotFound()
        return loaded.entry, False

    async def read_by_slug(self, slug: str, viewer: User | None) -> tuple[CachedPost, bool]:
        """As `read`, for the post that has this slug now."""
        post_id = self.slug_ids.get(slug)
        if post_id is not None:
            try:
                entry, hit = await self.read(post_id, viewer)
            except PostNotFound:
                entry = None
            if entry is not None and _carries_slug(entry, slug):
                return entry, hit
            self.slug_ids.pop(slug, None)
        post_id = await crud.post_id_by_slug(self.database, slug)
        if post_id is None:
            raise PostNotFound()
        entry, hit = await self.read(post_id, viewer)
        if not _carries_slug(entry, slug):  # the slug moved on meanwhile
            raise PostNotFound()
        if len(self.slug_ids) >= MAX_SLUG_HINTS:
            self.slug_ids.clear()
        self.slug_ids[slug] = post_id
        return entry, hit

    async def _load(self, post_id: int, generation: str) -> LoadedPost | None:
        row = await crud.get_post_row(self.database, post_id)
        if row is None:
            return None
        entry = encode_post(row)
        if row["published"]:  # drafts are never cached
            await self.cache.fill(post_id, generation, entry)
        return LoadedPost(row["author_id"], row["published"], entry)
