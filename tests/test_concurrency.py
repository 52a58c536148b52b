"""Races the database must settle: one title, one compare-and-set winner."""

from __future__ import annotations

import asyncio
from collections import Counter

import httpx
from conftest import PASSWORD, create_post


async def test_concurrent_creates_of_one_title(
    client: httpx.AsyncClient, user_headers: dict[str, str], other_headers: dict[str, str]
) -> None:
    async def attempt(i: int) -> httpx.Response:
        headers = user_headers if i % 2 else other_headers
        title = "Race condition" if i % 3 else "  race CONDITION "
        return await client.post(
            "/posts", json={"title": title, "content": f"attempt {i}"}, headers=headers
        )

    responses = await asyncio.gather(*(attempt(i) for i in range(16)))
    statuses = Counter(response.status_code for response in responses)
    assert statuses == {201: 1, 409: 15}, [r.text for r in responses]
    for response in responses:
        if response.status_code == 409:
            assert response.json()["error_code"] == "POST_TITLE_EXISTS"
    (winner,) = (response.json() for response in responses if response.status_code == 201)
    listed = await client.get("/posts", params={"count": "true"})
    assert listed.headers["x-total-count"] == "1"
    assert listed.json() == [winner]
    # the losers left nothing behind: another title still works
    await create_post(client, user_headers, "After the race")


async def test_concurrent_patches_with_one_etag(
    client: httpx.AsyncClient, user_headers: dict[str, str]
) -> None:
    post = await create_post(client, user_headers, "Contended", content="original")
    url = f"/posts/{post['id']}"
    etag = (await client.get(url)).headers["etag"]

    async def attempt(i: int) -> httpx.Response:
        return await client.patch(
            url, json={"content": f"writer {i}"}, headers={**user_headers, "If-Match": etag}
        )

    responses = await asyncio.gather(*(attempt(i) for i in range(12)))
    statuses = Counter(response.status_code for response in responses)
    assert statuses == {200: 1, 412: 11}, [r.text for r in responses]
    for response in responses:
        if response.status_code == 412:
            assert response.json()["error_code"] == "PRECONDITION_FAILED"
    (winner,) = (response for response in responses if response.status_code == 200)
    current = await client.get(url)
    assert current.json() == winner.json()
    assert current.json()["content"].startswith("writer ")
    assert current.headers["etag"] == winner.headers["etag"] != etag
    # the new ETag moved exactly once: it is accepted for the next write
    follow_up = await client.patch(
        url, json={"content": "next"}, headers={**user_headers, "If-Match": current.headers["etag"]}
    )
    assert follow_up.status_code == 200


async def test_concurrent_registrations_of_one_name(client: httpx.AsyncClient) -> None:
    async def attempt(i: int) -> httpx.Response:
        username = "Carol" if i % 2 else "carol"
        return await client.post(
            "/auth/register",
            json={"username": username, "email": f"carol{i}@example.com", "password": PASSWORD},
        )

    responses = await asyncio.gather(*(attempt(i) for i in range(8)))
    assert Counter(response.status_code for response in responses) == {201: 1, 409: 7}
    codes = {response.json()["error_code"] for response in responses if response.status_code == 409}
    assert codes == {"USERNAME_TAKEN"}


async def test_concurrent_registrations_of_one_email(client: httpx.AsyncClient) -> None:
    async def attempt(i: int) -> httpx.Response:
        email = "Dave@Example.com" if i % 2 else "dave@example.com"
        return await client.post(
            "/auth/register", json={"username": f"dave{i}", "email": email, "password": PASSWORD}
        )

    responses = await asyncio.gather(*(attempt(i) for i in range(8)))
    assert Counter(response.status_code for response in responses) == {201: 1, 409: 7}
    codes = {response.json()["error_code"] for response in responses if response.status_code == 409}
    assert codes == {"EMAIL_TAKEN"}
