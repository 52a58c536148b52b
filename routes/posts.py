"""Posts: list, read, write, publish."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Query, Request, Response, status

import crud
import idempotency
from cache import CachedPost, etag_of
from deps import CurrentUser, OptionalUser, SessionDep, database_of
from effects import EffectsDep, PostReaderDep, effects_of, post_reader_of
from errors import (
    InvalidQuery,
    NotAuthenticated,
    PostNotFound,
    PreconditionFailed,
    error_responses,
)
from idempotency import IdempotencyKey, answer_response
from models import Post, as_utc
from openapi_document import (
    ETAG,
    IDEMPOTENT_REPLAYED,
    LINK,
    LOCATION,
    X_CACHE,
    X_TOTAL_COUNT,
)
from pagination import next_link
from post_json import dumps_posts
from rendering import SLUG_FORM, SLUG_MAX_LENGTH
from schemas import (
    MAX_ID,
    MAX_TAGS,
    TAG_INPUT_PATTERN,
    DateBound,
    Limit,
    ObjectId,
    PostCreate,
    PostFilters,
    PostRead,
    PostSort,
    PostUpdate,
    Skip,
    header_schema,
    normalise_tag,
)

router = APIRouter(prefix="/posts", tags=["posts"])


def _listed_etags(header: str) -> list[str]:
    return [tag.strip() for tag in header.split(",") if tag.strip()]


# The exact spelling etag_of() produces: no leading zeros, ASCII digits only.
STRONG_ETAG = re.compile(r'^"(?P<post>[1-9][0-9]{0,9})-(?P<version>[1-9][0-9]{0,9})"$')


def expected_versions(if_match: str | None, post_id: int) -> set[int] | None:
    """The versions an If-Match header accepts; None when it does not constrain (absent, `*`)."""
    if if_match is None:
        return None
    tags = _listed_etags(if_match)
    if "*" in tags:
        return None
    versions = set()
    for tag in tags:
        match = STRONG_ETAG.match(tag)  # weak or malformed validators never match strongly
        if match and int(match["post"]) == post_id and int(match["version"]) <= MAX_ID:
            versions.add(int(match["version"]))
    if not versions:
        raise PreconditionFailed()
    return versions


def _created(post: Post) -> idempotency.Answer:
    body = PostRead.model_validate(post).model_dump_json().encode()
    return idempotency.Answer(201, body, f"/posts/{post.id}", created=post)


def _post_response(post: Post, response: Response) -> PostRead:
    response.headers["ETag"] = etag_of(post)
    return PostRead.model_validate(post)


NO_NUL = r"^[^\x00]*$"  # PostgreSQL text cannot hold NUL: 422, not a driver error


def _utc_bound(value: datetime | None, name: str) -> datetime | None:
    """A date filter in UTC; 422 when the conversion leaves the calendar (year 1 or 9999)."""
    if value is None:
        return None
    try:
        return as_utc(value)
    except OverflowError:
        raise InvalidQuery(["query", name], f"{name} is out of range") from None


def normalised_tags(tags: list[str], name: str = "tag") -> list[str]:
    """Query `tag` values as posts store them (trimmed, lower-case), deduplicated; 422 else."""
    try:
        return sorted({normalise_tag(tag) for tag in tags})
    except ValueError as exc:
        raise InvalidQuery(["query", name], str(exc)) from None


TagFilter = Annotated[
    list[str],
    Query(
        max_length=MAX_TAGS,
        json_schema_extra={"items": {"type": "string", "pattern": TAG_INPUT_PATTERN}},
        description="Repeatable: posts carrying every tag given (trimmed, case-insensitive).",
    ),
]


def if_none_match_matches(entry_etag: str, if_none_match: str | None) -> bool:
    # If-None-Match compares weakly (RFC 9110 13.1.2): W/"x" matches "x".
    return if_none_match is not None and (
        entry_etag in [tag.removeprefix("W/") for tag in _listed_etags(if_none_match)]
        or if_none_match.strip() == "*"
    )


IfMatch = Annotated[
    str | None,
    Header(description="An ETag from GET /posts/{id}; the write happens only if it still matches."),
    header_schema(),
]
IfNoneMatch = Annotated[
    str | None,
    Header(description="ETags the caller holds; 304 when one still matches (compared weakly)."),
    header_schema(),
]


@router.get(
    "",
    response_model=list[PostRead],
    operation_id="list_posts",
    responses={200: {"headers": {"Link": LINK, "X-Total-Count": X_TOTAL_COUNT}}},
)
async def list_posts(
    request: Request,
    viewer: OptionalUser,
    skip: Skip = None,
    limit: Limit = 10,
    count: Annotated[bool, Query(description="Also answer X-Total-Count.")] = False,
    cursor: Annotated[
        str | None, Query(max_length=512, description="From the previous page's Link header.")
    ] = None,
    author: Annotated[
        str | None,
        Query(min_length=1, max_length=50, pattern=NO_NUL, description="Username substring."),
    ] = None,
    author_id: Annotated[
        int | None, Query(ge=1, le=MAX_ID, description="Exactly this author's posts.")
    ] = None,
    tag: TagFilter = [],  # noqa: B006  (FastAPI copies defaults; never mutated)
    min_date: Annotated[DateBound, Query(description="created_at ≥ this (UTC if naive).")] = None,
    max_date: Annotated[DateBound, Query(description="created_at ≤ this (UTC if naive).")] = None,
    q: Annotated[
        str | None,
        Query(min_length=1, max_length=200, pattern=NO_NUL, description="Full-text search."),
    ] = None,
    published: Annotated[
        bool, Query(description="false: your own drafts (admins: all drafts); needs a token.")
    ] = True,
    sort: PostSort = PostSort.CREATED_DESC,
) -> Response:
    """List posts, newest first by default, with filters, search and paging."""
    if cursor is not None and skip is not None:
        raise InvalidQuery(["query", "skip"], "skip cannot be combined with cursor")
    if cursor is not None and count:
        raise InvalidQuery(["query", "count"], "count cannot be combined with cursor")
    if not published and viewer is None:
        raise NotAuthenticated("Sign in to list drafts")
    filters = PostFilters(
        author=author,
        author_id=author_id,
        tag=normalised_tags(tag),
        min_date=_utc_bound(min_date, "min_date"),
        max_date=_utc_bound(max_date, "max_date"),
        q=q,
        published=published,
        sort=sort,
    )
    if filters.min_date and filters.max_date and filters.min_date > filters.max_date:
        raise InvalidQuery(["query", "min_date"], "min_date must not be after max_date")
    page = await crud.list_posts(
        database_of(request),
        viewer,
        filters,
        skip=skip or 0,
        limit=limit,
        cursor=cursor,
        with_count=count,
    )
    headers = {}
    if page.total is not None:
        headers["X-Total-Count"] = str(page.total)
    if page.next_cursor is not None:
        params: dict[str, Any] = {"limit": limit, **filters.model_dump()}
        params["published"] = None if published else False
        params["sort"] = sort.value
        headers["Link"] = next_link("/posts", params, page.next_cursor)
    return Response(dumps_posts(page.posts), media_type="application/json", headers=headers)


# GET /posts/{id} and GET /posts/slug/{slug} answer alike: from the cache, with ETag and 304.
CACHED_POST_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"headers": {"ETag": ETAG, "X-Cache": X_CACHE}},
    304: {
        "description": "If-None-Match matched the current ETag.",
        "headers": {"ETag": ETAG, "X-Cache": X_CACHE},
    },
    **error_responses(404, _404="POST_NOT_FOUND"),
}


@router.get(
    "/{post_id}",
    response_model=PostRead,
    operation_id="get_post",
    responses=CACHED_POST_RESPONSES,
)
async def get_post(
    request: Request,
    post_id: ObjectId,
    viewer: OptionalUser,
    if_none_match: IfNoneMatch = None,
) -> Response:
    """Read one post (cached; `X-Cache: HIT|MISS`); drafts only for their owner and admins."""
    entry, hit = await post_reader_of(request).read(post_id, viewer)
    return _cached_post_response(entry, hit, if_none_match)


def _cached_post_response(entry: CachedPost, hit: bool, if_none_match: str | None) -> Response:
    headers = {"ETag": entry.etag, "X-Cache": "HIT" if hit else "MISS"}
    if if_none_match_matches(entry.etag, if_none_match):
        return Response(status_code=status.HTTP_304_NOT_MODIFIED, headers=headers)
    return Response(entry.body, media_type="application/json", headers=headers)


@router.get(
    "/slug/{slug}",
    response_model=PostRead,
    operation_id="get_post_by_slug",
    responses=CACHED_POST_RESPONSES,
)
async def get_post_by_slug(
    slug: Annotated[str, Path(max_length=200, description="Matched case-insensitively.")],
    viewer: OptionalUser,
    reader: PostReaderDep,
    if_none_match: IfNoneMatch = None,
) -> Response:
    """Read one post by its slug: the same answer as GET /posts/{id} (ETag, cache, drafts)."""
    slug = slug.lower()
    if len(slug) > SLUG_MAX_LENGTH or not SLUG_FORM.fullmatch(slug):
        raise PostNotFound()  # no post can have it
    entry, hit = await reader.read_by_slug(slug, viewer)
    return _cached_post_response(entry, hit, if_none_match)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=PostRead,
    operation_id="create_post",
    responses={
        201: {"headers": {"Location": LOCATION, "Idempotent-Replayed": IDEMPOTENT_REPLAYED}},
        **error_responses(
            409,
            413,
            _409="POST_TITLE_EXISTS, SLUG_TAKEN (a slug sent that another post has), or "
            "IDEMPOTENCY_KEY_IN_USE while a retry runs",
        ),
    },
)
async def create_post(
    data: PostCreate,
    request: Request,
    user: CurrentUser,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    """Create a post; its title and slug must be unique (case-insensitively)."""
    database, effects = database_of(request), effects_of(request)
    scope = await idempotency.scope_for(request, user, idempotency_key)
    if scope is None:
        answer = _created(await crud.create_post(database, user, data))
    else:  # the post and its recorded answer commit together
        async with database.sessionmaker() as session:

            async def write() -> idempotency.Answer:
                return _created(await crud.create_post(database, user, data, session=session))

            answer = await idempotency.run(session, scope, write)
    if answer.created is not None:
        await effects.post_created(answer.created)
    return answer_response(answer)


async def _update(
    post_id: ObjectId,
    data: PostUpdate,
    response: Response,
    session: SessionDep,
    user: CurrentUser,
    effects: EffectsDep,
    if_match: str | None,
) -> PostRead:
    changes = data.model_dump(exclude_unset=True)
    versions = expected_versions(if_match, post_id)
    post, changed = await crud.update_post(session, post_id, user, changes, versions)
    await effects.post_changed(post, changed)
    return _post_response(post, response)


@router.put(
    "/{post_id}",
    response_model=PostRead,
    operation_id="replace_post",
    responses={
        200: {"headers": {"ETag": ETAG}},
        **error_responses(403, 404, 409, 412, 413, _409="POST_TITLE_EXISTS or SLUG_TAKEN"),
    },
)
async def replace_post(
    post_id: ObjectId,
    data: PostUpdate,
    response: Response,
    session: SessionDep,
    user: CurrentUser,
    effects: EffectsDep,
    if_match: IfMatch = None,
) -> PostRead:
    """Update a post; only the fields sent change (same as PATCH)."""
    return await _update(post_id, data, response, session, user, effects, if_match)


@router.patch(
    "/{post_id}",
    response_model=PostRead,
    operation_id="update_post",
    responses={
        200: {"headers": {"ETag": ETAG}},
        **error_responses(403, 404, 409, 412, 413, _409="POST_TITLE_EXISTS or SLUG_TAKEN"),
    },
)
async def update_post(
    post_id: ObjectId,
    data: PostUpdate,
    response: Response,
    session: SessionDep,
    user: CurrentUser,
    effects: EffectsDep,
    if_match: IfMatch = None,
) -> PostRead:
    """Update some fields of a post."""
    return await _update(post_id, data, response, session, user, effects, if_match)


@router.delete(
    "/{post_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    operation_id="delete_post",
    responses=error_responses(403, 404, 412),
)
async def delete_post(
    post_id: ObjectId,
    session: SessionDep,
    user: CurrentUser,
    effects: EffectsDep,
    if_match: IfMatch = None,
) -> None:
    """Delete a post and its comments."""
    await crud.delete_post(session, post_id, user, expected_versions(if_match, post_id))
    await effects.post_deleted(post_id)


@router.post(
    "/{post_id}/publish",
    response_model=PostRead,
    operation_id="publish_post",
    responses={200: {"headers": {"ETag": ETAG}}, **error_responses(403, 404, 412)},
)
async def publish_post(
    post_id: ObjectId,
    response: Response,
    session: SessionDep,
    user: CurrentUser,
    effects: EffectsDep,
    if_match: IfMatch = None,
) -> PostRead:
    """Publish a draft (a published post is returned unchanged)."""
    versions = expected_versions(if_match, post_id)
    post, changed = await crud.update_post(session, post_id, user, {"published": True}, versions)
    await effects.post_changed(post, changed)
    return _post_response(post, response)
