"""Ids are never reused, on either backend: a deleted post's ETag, an old If-Match or a replayed
idempotent answer can never describe another object."""

from __future__ import annotations

import httpx
from conftest import create_post, login, register
from fastapi import FastAPI
from sqlalchemy import text


async def test_a_deleted_posts_id_is_never_given_again(
    client: httpx.AsyncClient, user_headers: dict[str, str]
) -> None:
    first = await client.post(
        "/posts",
        json={"title": "First", "content": "The first post"},
        headers={**user_headers, "Idempotency-Key": "first-post"},
    )
    assert first.status_code == 201, first.text
    first_id = first.json()["id"]
    old_etag = (await client.get(f"/posts/{first_id}")).headers["ETag"]
    assert (await client.delete(f"/posts/{first_id}", headers=user_headers)).status_code == 204

    second = await create_post(client, user_headers, "Second")
    assert second["id"] > first_id

    # The old ETag never matches the new post, on a read or as a precondition.
    read = await client.get(f"/posts/{second['id']}", headers={"If-None-Match": old_etag})
    assert read.status_code == 200 and read.headers["ETag"] != old_etag
    patch = await client.patch(
        f"/posts/{second['id']}",
        json={"content": "Overwritten"},
        headers={**user_headers, "If-Match": old_etag},
    )
    assert patch.status_code == 412
    # Under the old id there is nothing, so the old tag answers 404, never a 304.
    gone = await client.get(f"/posts/{first_id}", headers={"If-None-Match": old_etag})
    assert gone.status_code == 404

    # The replay is the first answer, and its Location still names the deleted post only.
    replay = await client.post(
        "/posts",
        json={"title": "First", "content": "The first post"},
        headers={**user_headers, "Idempotency-Key": "first-post"},
    )
    assert replay.status_code == 201
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert replay.headers["Location"] == f"/posts/{first_id}"
    assert replay.json()["id"] == first_id
    assert (await client.get(replay.headers["Location"])).status_code == 404


async def test_ids_keep_growing_after_the_newest_rows_are_deleted(
    client: httpx.AsyncClient, user_headers: dict[str, str]
) -> None:
    ids = []
    for round_ in range(3):
        post = await create_post(client, user_headers, f"Round {round_}")
        ids.append(post["id"])
        assert (
            await client.delete(f"/posts/{post['id']}", headers=user_headers)
        ).status_code == 204
    assert ids[0] < ids[1] < ids[2]


async def test_a_deleted_comments_id_is_never_given_again(
    client: httpx.AsyncClient, user_headers: dict[str, str]
) -> None:
    post = await create_post(client, user_headers, "Commented")
    url = f"/posts/{post['id']}/comments"
    first = await client.post(
        url, json={"text": "first"}, headers={**user_headers, "Idempotency-Key": "c-1"}
    )
    assert first.status_code == 201
    first_id = first.json()["id"]
    deleted = await client.delete(f"{url}/{first_id}", headers=user_headers)
    assert deleted.status_code == 204

    second = await client.post(url, json={"text": "second"}, headers=user_headers)
    assert second.status_code == 201
    assert second.json()["id"] > first_id
    replay = await client.post(
        url, json={"text": "first"}, headers={**user_headers, "Idempotency-Key": "c-1"}
    )
    assert replay.json()["id"] == first_id
    listed = (await client.get(url)).json()
    assert [comment["id"] for comment in listed] == [second.json()["id"]]


async def test_a_deleted_users_token_never_signs_in_a_newer_user(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    """The token's subject is the user id: a new account must not inherit a deleted one's."""
    old = await register(client, "departed")
    old_headers = await login(client, "departed")
    async with app.state.database.sessionmaker() as session:
        await session.execute(text("DELETE FROM users WHERE id = :id"), {"id": old["id"]})
        await session.commit()
    new = await register(client, "newcomer")
    assert new["id"] > old["id"]
    response = await client.get("/users/me", headers=old_headers)
    assert response.status_code == 401
