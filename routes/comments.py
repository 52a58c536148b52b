"""Comments on a post."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response, status

import crud
import idempotency
from deps import CurrentUser, OptionalUser, SessionDep
from effects import EffectsDep
from errors import InvalidQuery, error_responses
from idempotency import IdempotencyKey, answer_response
from openapi_document import IDEMPOTENT_REPLAYED, LINK
from pagination import next_link
from schemas import CommentCreate, CommentRead, Limit, ObjectId, Skip

router = APIRouter(prefix="/posts/{post_id}/comments", tags=["comments"])


@router.get(
    "",
    response_model=list[CommentRead],
    operation_id="list_comments",
    responses={200: {"headers": {"Link": LINK}}, **error_responses(404, _404="POST_NOT_FOUND")},
)
async def list_comments(
    post_id: ObjectId,
    response: Response,
    session: SessionDep,
    viewer: OptionalUser,
    skip: Skip = None,
    limit: Limit = 10,
    cursor: Annotated[
        str | None, Query(max_length=512, description="From the previous page's Link header.")
    ] = None,
) -> list[CommentRead]:
    """A post's comments, oldest first."""
    if cursor is not None and skip is not None:
        raise InvalidQuery(["query", "skip"], "skip cannot be combined with cursor")
    page = await crud.list_comments(
        session, post_id, viewer, skip=skip or 0, limit=limit, cursor=cursor
    )
    if page.next_cursor is not None:
        response.headers["Link"] = next_link(
            f"/posts/{post_id}/comments", {"limit": limit}, page.next_cursor
        )
    return [CommentRead.model_validate(comment) for comment in page.comments]


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=CommentRead,
    operation_id="create_comment",
    responses={
        201: {"headers": {"Idempotent-Replayed": IDEMPOTENT_REPLAYED}},
        **error_responses(
            404, 409, 413, _404="POST_NOT_FOUND", _409="IDEMPOTENCY_KEY_IN_USE while a retry runs"
        ),
    },
)
async def create_comment(
    post_id: ObjectId,
    data: CommentCreate,
    request: Request,
    session: SessionDep,
    user: CurrentUser,
    effects: EffectsDep,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    """Comment on a post you may see."""

    async def write() -> idempotency.Answer:
        comment, post = await crud.create_comment(session, post_id, user, data.text, commit=False)
        body = CommentRead.model_validate(comment).model_dump_json().encode()
        return idempotency.Answer(201, body, created=(comment, post))

    scope = await idempotency.scope_for(request, user, idempotency_key, post_id=post_id)
    answer = await idempotency.run(session, scope, write)
    if answer.created is not None:
        await effects.comment_created(*answer.created)
    return answer_response(answer)


@router.delete(
    "/{comment_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    operation_id="delete_comment",
    responses=error_responses(403, 404, _404="POST_NOT_FOUND or COMMENT_NOT_FOUND"),
)
async def delete_comment(
    post_id: ObjectId,
    comment_id: ObjectId,
    session: SessionDep,
    user: CurrentUser,
    effects: EffectsDep,
) -> None:
    """Delete a comment (its author, the post's owner, or an admin)."""
    await crud.delete_comment(session, post_id, comment_id, user)
    await effects.comment_deleted(post_id, comment_id)
