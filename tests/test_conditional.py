"""Conditional requests on posts: strong ETags, If-None-Match → 304, If-Match → 412."""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from typing import Any

import httpx
import pytest
from conftest import create_post
from core_helpers import assert_error

import redis_backend


@pytest.fixture(autouse=True)
def _patient_redis(monkeypatch: pytest.MonkeyPatch) -> None:
    """A loaded test machine can exceed the production Redis timeout (0.5 s), which would
    bypass the cache for a moment and upset the X-Cache expectations; autouse, so it applies
    before the app fixture builds its RedisBackend."""
    monkeypatch.setattr(redis_backend, "SOCKET_TIMEOUT_SECONDS", 5.0)


STRONG_ETAG = re.compile(r'^"[^"\s]+"$')
OPERATIONS = ["PUT", "PATCH", "DELETE", "publish"]
SUCCESS = {"PUT": 200, "PATCH": 200, "DELETE": 204, "publish": 200}


async def current(
    client: httpx.AsyncClient, post_id: int, headers: dict[str, str] | None = None
) -> tuple[dict[str, Any], str]:
    """The post as these headers see it now, and its ETag."""
    response = await client.get(f"/posts/{post_id}", headers=headers)
    assert response.status_code == 200, response.text
    return response.json(), response.headers["etag"]


async def operate(
    client: httpx.AsyncClient, operation: str, post_id: int, headers: dict[str, str]
) -> httpx.Response:
    url = f"/posts/{post_id}"
    if operation == "PUT":
        return await client.put(
            url, json={"title": f"Replaced {post_id}", "content": "put"}, headers=headers
        )
    if operation == "PATCH":
        return await client.patch(url, json={"content": "patched"}, headers=headers)
    if operation == "DELETE":
        return await client.delete(url, headers=headers)
    return await client.post(f"{url}/publish", headers=headers)


async def assert_operation_applied(
    client: httpx.AsyncClient, operation: str, post_id: int, headers: dict[str, str]
) -> None:
    response = await client.get(f"/posts/{post_id}", headers=headers)
    if operation == "DELETE":
        assert_error(response, 404, "POST_NOT_FOUND")
        return
    assert response.status_code == 200
    post = response.json()
    if operation == "PUT":
        assert (post["title"], post["content"]) == (f"Replaced {post_id}", "put")
    elif operation == "PATCH":
        assert post["content"] == "patched"
    else:
        assert post["published"] is True
        assert (await client.get(f"/posts/{post_id}")).status_code == 200  # anonymous, too


# --- ETag and If-None-Match --------------------------------------------------------------------


async def test_get_answers_a_strong_etag(
    client: httpx.AsyncClient, user_headers: dict[str, str]
) -> None:
    post = await create_post(client, user_headers, "Tagged")
    miss = await client.get(f"/posts/{post['id']}")
    hit = await client.get(f"/posts/{post['id']}")
    assert (miss.headers["x-cache"], hit.headers["x-cache"]) == ("MISS", "HIT")
    for response in (miss, hit):
        etag = response.headers["etag"]
        assert STRONG_ETAG.match(etag), etag
        assert not etag.startswith("W/")
    assert miss.headers["etag"] == hit.headers["etag"]
    # Writes answer the ETag of what they wrote; the next read agrees.
    patched = await client.patch(
        f"/posts/{post['id']}", json={"content": "changed"}, headers=user_headers
    )
    assert STRONG_ETAG.match(patched.headers["etag"])
    assert (await current(client, post["id"]))[1] == patched.headers["etag"]
    # Two posts never share an ETag.
    other = await create_post(client, user_headers, "Tagged too")
    assert (await current(client, other["id"]))[1] != patched.headers["etag"]


async def test_if_none_match(client: httpx.AsyncClient, user_headers: dict[str, str]) -> None:
    post = await create_post(client, user_headers, "Conditional")
    url = f"/posts/{post['id']}"
    # The very first read, a miss, already honours the condition.
    first = await client.get(url, headers={"If-None-Match": "*"})
    assert first.status_code == 304
    assert first.headers["x-cache"] == "MISS"
    assert first.content == b""
    etag = first.headers["etag"]
    assert STRONG_ETAG.match(etag)

    matching = [etag, f'"nope", {etag}', f'{etag},"nope"', f"  {etag}  ", "*", f"W/{etag}"]
    for header in matching:
        response = await client.get(url, headers={"If-None-Match": header})
        assert response.status_code == 304, header
        assert response.content == b"", header
        assert response.headers["etag"] == etag
        assert response.headers["x-cache"] == "HIT"

    stale = [f'"{post["id"]}-999"', '"0-1"', '"nope", "other"', "garbage", etag.strip('"')]
    for header in stale:
        response = await client.get(url, headers={"If-None-Match": header})
        assert response.status_code == 200, header
        assert response.json() == post
        assert response.headers["etag"] == etag

    changed = await client.patch(url, json={"content": "new"}, headers=user_headers)
    assert changed.status_code == 200
    response = await client.get(url, headers={"If-None-Match": etag})
    assert response.status_code == 200
    assert response.json()["content"] == "new"
    new_etag = response.headers["etag"]
    assert new_etag != etag
    again = await client.get(url, headers={"If-None-Match": f"{etag}, {new_etag}"})
    assert again.status_code == 304
    assert again.headers["etag"] == new_etag


async def test_if_none_match_never_reveals_a_hidden_post(
    client: httpx.AsyncClient, user_headers: dict[str, str], other_headers: dict[str, str]
) -> None:
    draft = await create_post(client, user_headers, "Hidden draft", published=False)
    url = f"/posts/{draft['id']}"
    _, etag = await current(client, draft["id"], user_headers)
    for headers in ({}, other_headers):
        for condition in (etag, "*"):
            response = await client.get(url, headers={**headers, "If-None-Match": condition})
            assert_error(response, 404, "POST_NOT_FOUND")
    response = await client.get(url, headers={**user_headers, "If-None-Match": etag})
    assert response.status_code == 304
    absent = await client.get("/posts/987654", headers={"If-None-Match": "*"})
    assert_error(absent, 404, "POST_NOT_FOUND")


async def test_etag_changes_with_every_change(
    client: httpx.AsyncClient, user_headers: dict[str, str], admin_headers: dict[str, str]
) -> None:
    post = await create_post(client, user_headers, "Changing", content="v0")
    url = f"/posts/{post['id']}"
    seen = [(await current(client, post["id"]))[1]]
    changes = [
        ("PUT", {"title": "Changing put", "content": "v1"}, user_headers),
        ("PATCH", {"content": "v2"}, user_headers),
        ("PATCH", {"published": False}, user_headers),
        ("publish", None, user_headers),
        ("PATCH", {"content": "v3"}, admin_headers),
        ("PUT", {"title": "Changing"}, user_headers),  # back to an earlier title: still new
    ]
    for method, body, headers in changes:
        if method == "publish":
            response = await client.post(f"{url}/publish", headers=headers)
        else:
            response = await client.request(method, url, json=body, headers=headers)
        assert response.status_code == 200, response.text
        etag = response.headers["etag"]
        assert etag not in seen, (method, body)
        assert (await current(client, post["id"], user_headers))[1] == etag
        seen.append(etag)
        stale = await client.get(url, headers={**user_headers, "If-None-Match": seen[-2]})
        assert stale.status_code == 200
    # Nothing changed, nothing moves: a repeated PATCH keeps the validator.
    same = await client.patch(url, json={"content": "v3"}, headers=user_headers)
    assert same.status_code == 200
    assert same.headers["etag"] == seen[-1]


# --- If-Match ----------------------------------------------------------------------------------


@pytest.mark.parametrize("operation", OPERATIONS)
async def test_if_match(
    client: httpx.AsyncClient, user_headers: dict[str, str], operation: str
) -> None:
    draft = operation == "publish"
    post = await create_post(client, user_headers, "Guarded", content="v1", published=not draft)
    other = await create_post(client, user_headers, "Bystander")
    pid = post["id"]
    _, old_etag = await current(client, pid, user_headers)
    changed = await client.patch(f"/posts/{pid}", json={"content": "v2"}, headers=user_headers)
    assert changed.status_code == 200
    before, etag = await current(client, pid, user_headers)
    if not draft:
        await current(client, pid)  # cached: a refused write must not leave it stale either
    _, other_etag = await current(client, other["id"])

    refused = [
        old_etag,  # stale
        f"W/{etag}",  # weak validators never match strongly
        "garbage",
        '"garbage"',
        '""',
        f'"{pid}-"',
        other_etag,  # another post's current ETag
        f'{old_etag}, "nope"',
    ]
    for condition in refused:
        response = await operate(client, operation, pid, {**user_headers, "If-Match": condition})
        assert_error(response, 412, "PRECONDITION_FAILED")
        assert await current(client, pid, user_headers) == (before, etag), condition
        if not draft:
            assert await current(client, pid) == (before, etag)
        else:
            assert_error(await client.get(f"/posts/{pid}"), 404, "POST_NOT_FOUND")

    response = await operate(client, operation, pid, {**user_headers, "If-Match": etag})
    assert response.status_code == SUCCESS[operation], response.text
    await assert_operation_applied(client, operation, pid, user_headers)
    if operation != "DELETE":
        assert response.headers["etag"] != etag
        # The old ETag is now stale for the next conditional write.
        retry = await operate(client, "PATCH", pid, {**user_headers, "If-Match": etag})
        assert_error(retry, 412, "PRECONDITION_FAILED")


@pytest.mark.parametrize("operation", OPERATIONS)
async def test_if_match_star_and_lists(
    client: httpx.AsyncClient, user_headers: dict[str, str], operation: str
) -> None:
    draft = operation == "publish"
    starred = await create_post(client, user_headers, "Starred", published=not draft)
    response = await operate(client, operation, starred["id"], {**user_headers, "If-Match": "*"})
    assert response.status_code == SUCCESS[operation], response.text
    await assert_operation_applied(client, operation, starred["id"], user_headers)

    listed = await create_post(client, user_headers, "Listed", published=not draft)
    _, etag = await current(client, listed["id"], user_headers)
    condition = f'"{listed["id"]}-999", {etag}'
    response = await operate(
        client, operation, listed["id"], {**user_headers, "If-Match": condition}
    )
    assert response.status_code == SUCCESS[operation], response.text
    await assert_operation_applied(client, operation, listed["id"], user_headers)


@pytest.mark.parametrize("operation", OPERATIONS)
async def test_if_match_with_odd_bytes_is_refused_not_a_crash(
    client: httpx.AsyncClient, user_headers: dict[str, str], operation: str
) -> None:
    post = await create_post(client, user_headers, "Odd bytes", published=operation != "publish")
    before, etag = await current(client, post["id"], user_headers)
    pid = str(post["id"]).encode()
    # Latin-1 header bytes: a superscript two (a "digit" to str.isdigit, not to int), a
    # fraction, an NBSP; none is an ETag this service ever made.
    for condition in (b'"' + pid + b'-\xb2"', b'"' + pid + b'-\xbd"', b'"' + pid + b'-1\xa0"'):
        headers: dict[str, Any] = {**user_headers, "If-Match": condition}
        response = await operate(client, operation, post["id"], headers)
        assert_error(response, 412, "PRECONDITION_FAILED")
    assert await current(client, post["id"], user_headers) == (before, etag)


async def test_if_match_is_no_way_around_permissions(
    client: httpx.AsyncClient, user_headers: dict[str, str], other_headers: dict[str, str]
) -> None:
    post = await create_post(client, user_headers, "Not yours")
    before, etag = await current(client, post["id"])
    for operation in OPERATIONS:
        for condition in (etag, "*"):
            response = await operate(
                client, operation, post["id"], {**other_headers, "If-Match": condition}
            )
            assert_error(response, 403, "INSUFFICIENT_PERMISSIONS")
    assert await current(client, post["id"]) == (before, etag)


# --- concurrent writers with one ETag ----------------------------------------------------------


async def test_concurrent_patches_with_one_etag_have_one_winner(
    client: httpx.AsyncClient, user_headers: dict[str, str]
) -> None:
    post = await create_post(client, user_headers, "Contended", content="original")
    url = f"/posts/{post['id']}"
    _, etag = await current(client, post["id"])
    await current(client, post["id"])  # cached before the stampede

    async def attempt(i: int) -> httpx.Response:
        return await client.patch(
            url, json={"content": f"writer {i}"}, headers={**user_headers, "If-Match": etag}
        )

    responses = await asyncio.gather(*(attempt(i) for i in range(12)))
    assert Counter(r.status_code for r in responses) == {200: 1, 412: 11}, [
        r.text for r in responses
    ]
    for response in responses:
        if response.status_code == 412:
            assert_error(response, 412, "PRECONDITION_FAILED")
    (winner,) = (r for r in responses if r.status_code == 200)
    fresh = await client.get(url)
    assert fresh.headers["x-cache"] == "MISS"
    assert fresh.json() == winner.json()
    assert fresh.json()["content"] == winner.request.content.decode().split('"')[3]
    assert fresh.headers["etag"] == winner.headers["etag"] != etag
    cached = await client.get(url)
    assert cached.headers["x-cache"] == "HIT"
    assert cached.json() == winner.json()


async def test_concurrent_mixed_writes_with_one_etag_have_one_winner(
    client: httpx.AsyncClient, user_headers: dict[str, str]
) -> None:
    post = await create_post(client, user_headers, "Mixed contention", content="original")
    _, etag = await current(client, post["id"])
    headers = {**user_headers, "If-Match": etag}
    operations = ["PUT", "PATCH", "DELETE"] * 4
    responses = await asyncio.gather(
        *(operate(client, op, post["id"], headers) for op in operations)
    )
    winners = [(op, r) for op, r in zip(operations, responses, strict=True) if r.status_code < 300]
    assert len(winners) == 1, [r.status_code for r in responses]
    ((operation, winner),) = winners
    assert winner.status_code == SUCCESS[operation]
    for response in responses:
        if response is winner:
            continue
        # A loser was refused by its precondition, or found the post already deleted.
        allowed = {412, 404} if operation == "DELETE" else {412}
        assert response.status_code in allowed, response.text
    await assert_operation_applied(client, operation, post["id"], user_headers)
    if operation != "DELETE":
        assert (await current(client, post["id"]))[0] == winner.json()
