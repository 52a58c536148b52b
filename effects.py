"""What follows an acknowledged write (cache invalidation, live events, notifications), in one
place so that no write path forgets one; and the cached read path it keeps fresh."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends
from starlette.requests import HTTPConnection

from cache import PostCache, PostReader
from models import Comment, Post
from notifications import Notifier
from realtime import LocalHub
from schemas import CommentRead, PostRead


class Effects:
    def __init__(self, cache: PostCache, hub: LocalHub, notifier: Notifier) -> None:
        self.cache = cache
        self.hub = hub
        self.notifier = notifier

    async def post_created(self, post: Post) -> None:
        if post.published:
            self.notifier.post_published(post.title, post.id)

    async def post_changed(self, post: Post, changed: dict[str, Any]) -> None:
        """After an update or publish: tell live sockets; a fresh publication is mailed."""
        if not changed:
            return
        await self.cache.invalidate(post.id)
        event = {
            "type": "post_updated",
            "post": PostRead.model_validate(post).model_dump(mode="json"),
        }
        await self.hub.publish(post.id, event)
        if changed.get("published") is True:
            self.notifier.post_published(post.title, post.id)

    async def post_deleted(self, post_id: int) -> None:
        await self.cache.invalidate(post_id)
        await self.hub.publish(post_id, {"type": "post_deleted", "post_id": post_id})

    async def comment_created(self, comment: Comment, post: Post) -> None:
        data = CommentRead.model_validate(comment).model_dump(mode="json")
        await self.hub.publish(post.id, {"type": "comment_created", "comment": data})
        if post.author_id != comment.author_id:
            self.notifier.comment_created(
                post.owner.email, post.title, post.id, comment.author, comment.text
            )

    async def comment_deleted(self, post_id: int, comment_id: int) -> None:
        await self.hub.publish(post_id, {"type": "comment_deleted", "comment_id": comment_id})


async def get_effects(connection: HTTPConnection) -> Effects:
    effects: Effects = connection.app.state.effects
    return effects


EffectsDep = Annotated[Effects, Depends(get_effects)]


def effects_of(connection: HTTPConnection) -> Effects:
    """`EffectsDep` as a plain call, for the hot routes (deps.database_of says why)."""
    effects: Effects = connection.app.state.effects
    return effects


async def get_post_reader(connection: HTTPConnection) -> PostReader:
    reader: PostReader = connection.app.state.post_reader
    return reader


PostReaderDep = Annotated[PostReader, Depends(get_post_reader)]


def post_reader_of(connection: HTTPConnection) -> PostReader:
    """`PostReaderDep` as a plain call, for the hot routes (deps.database_of says why)."""
    reader: PostReader = connection.app.state.post_reader
    return reader
