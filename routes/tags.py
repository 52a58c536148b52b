"""Tags, public profiles and the Atom feed: what a blog's front end reads besides posts."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request, Response, status
from pydantic import TypeAdapter

import crud
import feeds
from deps import DatabaseDep, SettingsDep
from errors import InvalidQuery, UserNotFound, error_responses
from openapi_document import LINK, header
from pagination import next_link
from routes.posts import IfNoneMatch, TagFilter, if_none_match_matches, normalised_tags
from schemas import PostFilters, Skip, TagCount, UserProfile

router = APIRouter()

TAG_LIST = TypeAdapter(list[TagCount])


@router.get(
    "/tags",
    response_model=list[TagCount],
    operation_id="list_tags",
    tags=["tags"],
    responses={200: {"headers": {"Link": LINK}}},
)
async def list_tags(
    database: DatabaseDep,
    skip: Skip = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 50,
    cursor: Annotated[
        str | None, Query(max_length=512, description="From the previous page's Link header.")
    ] = None,
) -> Response:
    """Tags of published posts with their counts, most used first (ties by name)."""
    if cursor is not None and skip is not None:
        raise InvalidQuery(["query", "skip"], "skip cannot be combined with cursor")
    page = await crud.list_tags(database, skip=skip or 0, limit=limit, cursor=cursor)
    headers = {}
    if page.next_cursor is not None:
        headers["Link"] = next_link("/tags", {"limit": limit}, page.next_cursor)
    body = TAG_LIST.dump_json(TAG_LIST.validate_python(page.tags))
    return Response(body, media_type="application/json", headers=headers)


@router.get(
    "/users/{username}",
    response_model=UserProfile,
    operation_id="read_profile",
    tags=["users"],
    responses=error_responses(404, _404="USER_NOT_FOUND"),
)
async def read_profile(
    username: Annotated[str, Path(description="Matched case-insensitively.")],
    database: DatabaseDep,
) -> object:
    """A user's public profile: never email or role."""
    profile = await crud.get_profile(database, username)
    if profile is None:
        raise UserNotFound()
    return profile


ATOM = "application/atom+xml; charset=utf-8"
FEED_ETAG = header("Strong validator of the feed document.", required=True)


@router.get(
    "/feed.atom",
    operation_id="feed",
    tags=["feed"],
    response_class=Response,
    responses={
        200: {
            "content": {ATOM: {"schema": {"type": "string"}}},
            "description": f"Atom 1.0: the {feeds.FEED_SIZE} newest published posts.",
            "headers": {"ETag": FEED_ETAG},
        },
        304: {
            "description": "If-None-Match matched the current ETag.",
            "headers": {"ETag": FEED_ETAG},
        },
    },
)
async def feed(
    request: Request,
    database: DatabaseDep,
    settings: SettingsDep,
    tag: TagFilter = [],  # noqa: B006  (FastAPI copies defaults; never mutated)
    if_none_match: IfNoneMatch = None,
) -> Response:
    """The newest published posts as an Atom feed, optionally only those with every tag given."""
    tags = normalised_tags(tag)
    page = await crud.list_posts(database, None, PostFilters(tag=tags), limit=feeds.FEED_SIZE)
    base_url = settings.public_base_url or str(request.base_url).rstrip("/")
    etag = feeds.feed_etag(base_url, tags, page.posts)
    if if_none_match_matches(etag, if_none_match):
        return Response(status_code=status.HTTP_304_NOT_MODIFIED, headers={"ETag": etag})
    body = feeds.build_feed(base_url, tags, page.posts)
    return Response(body, media_type=ATOM, headers={"ETag": etag})
