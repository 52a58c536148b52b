"""Posts: create, read, update (PUT and PATCH), delete, publish, ETags and preconditions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from conftest import create_post
from core_helpers import POST_FIELDS, assert_error, me, parse_time

METHODS = ["PUT", "PATCH"]


async def get_post(
    client: httpx.AsyncClient, post_id: int, headers: dict[str, str] | None = None
) -> httpx.Response:
    return await client.get(f"/posts/{post_id}", headers=headers)


async def current(
    client: httpx.AsyncClient, post_id: int, headers: dict[str, str]
) -> tuple[dict[str, Any], str]:
    """The post as its owner sees it now, and its ETag."""
    response = await get_post(client, post_id, headers)
    assert response.status_code == 200, response.text
    return response.json(), response.headers["etag"]


async def count_posts(client: httpx.AsyncClient) -> int:
    response = await client.get("/posts", params={"count": "true", "limit": 1})
    return int(response.headers["x-total-count"])


# --- create --------------------------------------------------------------------------------------


async def test_create_post(client: httpx.AsyncClient, user_headers: dict[str, str]) -> None:
    alice = await me(client, user_headers)
    response = await client.post(
        "/posts", json={"title": "First post", "content": "Hello there"}, headers=user_headers
    )
    assert response.status_code == 201, response.text
    post = response.json()
    assert set(post) == POST_FIELDS
    assert response.headers["location"] == f"/posts/{post['id']}"
    assert post["title"] == "First post"
    assert post["content"] == "Hello there"
    assert post["author"] == "alice"
    assert post["author_id"] == alice["id"]
    assert post["published"] is True
    created = parse_time(post["created_at"])
    assert parse_time(post["updated_at"]) == created
    assert abs(datetime.now(UTC) - created) < timedelta(minutes=1)
    fetched = await client.get(response.headers["location"])
    assert fetched.status_code == 200
    assert fetched.json() == post


async def test_create_draft(client: httpx.AsyncClient, user_headers: dict[str, str]) -> None:
    post = await create_post(client, user_headers, "A draft", published=False)
    assert post["published"] is False
    assert (await get_post(client, post["id"])).status_code == 404


async def test_create_needs_a_token(client: httpx.AsyncClient) -> None:
    response = await client.post("/posts", json={"title": "Anon", "content": "text"})
    assert_error(response, 401, "NOT_AUTHENTICATED")
    assert response.headers["www-authenticate"] == "Bearer"
    assert await count_posts(client) == 0


async def test_create_trims_the_title(
    client: httpx.AsyncClient, user_headers: dict[str, str]
) -> None:
    post = await create_post(client, user_headers, "  \t Spaced out title \n ")
    assert post["title"] == "Spaced out title"
    assert (await get_post(client, post["id"])).json()["title"] == "Spaced out title"
    # 255 characters once trimmed is fine, even with surrounding blanks
    long_post = await create_post(client, user_headers, "   " + "t" * 255 + "   ")
    assert long_post["title"] == "t" * 255


INVALID_FIELDS: list[tuple[str, Any]] = [
    ("title", ""),
    ("title", "   "),
    ("title", "\t\n "),
    ("title", "x" * 256),
    ("title", 123),
    ("title", None),
    ("title", "nul\x00inside"),
    ("content", ""),
    ("content", "nul \x00 inside"),
    ("content", "  \n\t  "),
    ("content", "c" * 100_001),
    ("content", None),
    ("published", "maybe"),
    ("published", None),
]


async def test_create_rejects_invalid_fields(
    client: httpx.AsyncClient, user_headers: dict[str, str], subtests: pytest.Subtests
) -> None:
    for field, value in INVALID_FIELDS:
        with subtests.test(field=field, value=str(value)[:20]):
            body = {"title": "Valid title", "content": "Valid content", field: value}
            response = await client.post("/posts", json=body, headers=user_headers)
            error = assert_error(response, 422, "VALIDATION_ERROR")
            assert any(item["loc"][:2] == ["body", field] for item in error["detail"]), error
    assert await count_posts(client) == 0


async def test_create_requires_title_and_content(
    client: httpx.AsyncClient, user_headers: dict[str, str]
) -> None:
    response = await client.post("/posts", json={}, headers=user_headers)
    error = assert_error(response, 422, "VALIDATION_ERROR")
    locs = {tuple(item["loc"]) for item in error["detail"]}
    assert {("body", "title"), ("body", "content")} <= locs


async def test_create_accepts_maximum_lengths(
    client: httpx.AsyncClient, user_headers: dict[str, str]
) -> None:
    post = await create_post(client, user_headers, "T" * 255, content="c" * 100_000)
    assert len(post["title"]) == 255
    assert len(post["content"]) == 100_000


async def test_create_ignores_unknown_and_server_owned_fields(
    client: httpx.AsyncClient, user_headers: dict[str, str], other_headers: dict[str, str]
) -> None:
    alice = await me(client, user_headers)
    bob = await me(client, other_headers)
    before = datetime.now(UTC) - timedelta(seconds=5)
    response = await client.post(
        "/posts",
        json={
            "title": "Sneaky",
            "content": "content",
            "id": 4242,
            "author": "bob",
            "author_id": bob["id"],
            "created_at": "2000-01-01T00:00:00Z",
            "updated_at": "2000-01-01T00:00:00Z",
            "version": 99,
            "tags": ["x"],
            "nonsense": {"deep": True},
        },
        headers=user_headers,
    )
    assert response.status_code == 201, response.text
    post = response.json()
    assert set(post) == POST_FIELDS
    assert post["id"] != 4242
    assert post["author"] == "alice"
    assert post["author_id"] == alice["id"]
    assert parse_time(post["created_at"]) > before
    assert parse_time(post["updated_at"]) > before
    assert (await get_post(client, 4242)).status_code == 404
    assert (await get_post(client, post["id"])).json() == post


async def test_create_title_taken(
    client: httpx.AsyncClient, user_headers: dict[str, str], other_headers: dict[str, str]
) -> None:
    await create_post(client, user_headers, "Hello World")
    for clash in ("Hello World", "hello world", "HELLO WORLD", "  hello World \t"):
        for headers in (user_headers, other_headers):
            response = await client.post(
                "/posts", json={"title": clash, "content": "again"}, headers=headers
            )
            assert_error(response, 409, "POST_TITLE_EXISTS")
    assert await count_posts(client) == 1


async def test_draft_titles_are_taken_too(
    client: httpx.AsyncClient, user_headers: dict[str, str], other_headers: dict[str, str]
) -> None:
    await create_post(client, user_headers, "Secret plan", published=False)
    response = await client.post(
        "/posts", json={"title": "secret PLAN", "content": "mine"}, headers=other_headers
    )
    assert_error(response, 409, "POST_TITLE_EXISTS")


# --- read ----------------------------------------------------------------------------------------


async def test_get_post_and_its_etag(
    client: httpx.AsyncClient, user_headers: dict[str, str]
) -> None:
    post = await create_post(client, user_headers, "Readable")
    response = await get_post(client, post["id"])
    assert response.status_code == 200
    assert response.json() == post
    etag = response.headers["etag"]
    assert etag.startswith('"') and etag.endswith('"') and len(etag) > 2  # strong
    again = await get_post(client, post["id"], user_headers)
    assert again.headers["etag"] == etag


async def test_get_unknown_post(client: httpx.AsyncClient) -> None:
    assert_error(await get_post(client, 987654), 404, "POST_NOT_FOUND")
    assert_error(await client.get("/posts/not-a-number"), 422, "VALIDATION_ERROR")


async def test_drafts_are_hidden_from_others(
    client: httpx.AsyncClient,
    user_headers: dict[str, str],
    other_headers: dict[str, str],
    admin_headers: dict[str, str],
) -> None:
    draft = await create_post(client, user_headers, "Work in progress", published=False)
    absent = await get_post(client, 987654)
    for headers in (None, other_headers):
        response = await get_post(client, draft["id"], headers)
        assert_error(response, 404, "POST_NOT_FOUND")
        assert response.json() == absent.json()  # exactly as if absent
    for headers in (user_headers, admin_headers):
        response = await get_post(client, draft["id"], headers)
        assert response.status_code == 200
        assert response.json() == draft
    # and still hidden after the owner's read (a cached copy must not leak)
    for headers in (None, other_headers):
        assert_error(await get_post(client, draft["id"], headers), 404, "POST_NOT_FOUND")


# --- update --------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
async def test_update_changes_only_the_fields_sent(
    client: httpx.AsyncClient, user_headers: dict[str, str], method: str
) -> None:
    post = await create_post(client, user_headers, "Original", content="Old content")
    _, etag = await current(client, post["id"], user_headers)

    response = await client.request(
        method, f"/posts/{post['id']}", json={"content": "New content"}, headers=user_headers
    )
    assert response.status_code == 200, response.text
    updated = response.json()
    assert updated["content"] == "New content"
    assert updated["title"] == "Original"
    assert updated["published"] is True
    assert updated["created_at"] == post["created_at"]
    assert parse_time(updated["updated_at"]) > parse_time(post["updated_at"])
    assert response.headers["etag"] != etag
    assert (await get_post(client, post["id"])).json() == updated

    response = await client.request(
        method, f"/posts/{post['id']}", json={"title": "  Renamed  "}, headers=user_headers
    )
    renamed = response.json()
    assert renamed["title"] == "Renamed"
    assert renamed["content"] == "New content"
    assert parse_time(renamed["updated_at"]) > parse_time(updated["updated_at"])

    response = await client.request(
        method, f"/posts/{post['id']}", json={"published": False}, headers=user_headers
    )
    assert response.json()["published"] is False
    assert response.json()["title"] == "Renamed"
    assert (await get_post(client, post["id"])).status_code == 404


@pytest.mark.parametrize("method", METHODS)
async def test_update_with_the_same_values_changes_nothing(
    client: httpx.AsyncClient, user_headers: dict[str, str], method: str
) -> None:
    post = await create_post(client, user_headers, "Stable", content="Same")
    _, etag = await current(client, post["id"], user_headers)
    for body in (
        {},
        {"title": "Stable"},
        {"title": "  Stable  "},  # trimmed, so the same title
        {"content": "Same", "published": True},
        {"title": "Stable", "content": "Same", "published": True},
    ):
        response = await client.request(
            method, f"/posts/{post['id']}", json=body, headers=user_headers
        )
        assert response.status_code == 200, (body, response.text)
        assert response.json() == post, body
        assert response.headers["etag"] == etag, body
    assert (await current(client, post["id"], user_headers)) == (post, etag)


@pytest.mark.parametrize("method", METHODS)
async def test_update_may_change_the_case_of_its_own_title(
    client: httpx.AsyncClient, user_headers: dict[str, str], method: str
) -> None:
    post = await create_post(client, user_headers, "lower case")
    response = await client.request(
        method, f"/posts/{post['id']}", json={"title": "Lower Case"}, headers=user_headers
    )
    assert response.status_code == 200, response.text
    assert response.json()["title"] == "Lower Case"
    assert parse_time(response.json()["updated_at"]) > parse_time(post["updated_at"])


INVALID_UPDATES: list[dict[str, Any]] = [
    {"title": None},
    {"content": None},
    {"published": None},
    {"title": "   "},
    {"content": " \n "},
    {"title": "x" * 256},
    {"content": "c" * 100_001},
    {"published": "sometimes"},
    {"title": "nul\x00"},
    {"content": "\x00"},
]


@pytest.mark.parametrize("method", METHODS)
async def test_update_rejects_invalid_values(
    client: httpx.AsyncClient, user_headers: dict[str, str], method: str, subtests: pytest.Subtests
) -> None:
    post = await create_post(client, user_headers, "Valid")
    url = f"/posts/{post['id']}"
    for body in INVALID_UPDATES:
        ((field, value),) = body.items()
        with subtests.test(field=field, value=str(value)[:20]):
            response = await client.request(method, url, json=body, headers=user_headers)
            error = assert_error(response, 422, "VALIDATION_ERROR")
            assert any(item["loc"][:2] == ["body", field] for item in error["detail"]), error
    assert (await get_post(client, post["id"])).json() == post


@pytest.mark.parametrize("method", METHODS)
async def test_update_to_a_taken_title_changes_nothing(
    client: httpx.AsyncClient,
    user_headers: dict[str, str],
    other_headers: dict[str, str],
    method: str,
) -> None:
    await create_post(client, other_headers, "Taken Title")
    post = await create_post(client, user_headers, "Mine", content="unchanged")
    before = await current(client, post["id"], user_headers)
    for title in ("Taken Title", "taken title", "  TAKEN title "):
        response = await client.request(
            method,
            f"/posts/{post['id']}",
            json={"title": title, "content": "should not be stored", "published": False},
            headers=user_headers,
        )
        assert_error(response, 409, "POST_TITLE_EXISTS")
    assert await current(client, post["id"], user_headers) == before


@pytest.mark.parametrize("method", METHODS)
async def test_update_by_another_user(
    client: httpx.AsyncClient,
    user_headers: dict[str, str],
    other_headers: dict[str, str],
    method: str,
) -> None:
    published = await create_post(client, user_headers, "Alice's post")
    draft = await create_post(client, user_headers, "Alice's draft", published=False)
    response = await client.request(
        method, f"/posts/{published['id']}", json={"content": "hacked"}, headers=other_headers
    )
    assert_error(response, 403, "INSUFFICIENT_PERMISSIONS")
    response = await client.request(
        method, f"/posts/{draft['id']}", json={"content": "hacked"}, headers=other_headers
    )
    assert_error(response, 404, "POST_NOT_FOUND")
    response = await client.request(method, f"/posts/{published['id']}", json={"content": "hacked"})
    assert_error(response, 401, "NOT_AUTHENTICATED")
    assert (await current(client, published["id"], user_headers))[0] == published
    assert (await current(client, draft["id"], user_headers))[0] == draft


@pytest.mark.parametrize("method", METHODS)
async def test_admin_may_update_any_post(
    client: httpx.AsyncClient,
    user_headers: dict[str, str],
    admin_headers: dict[str, str],
    method: str,
) -> None:
    alice = await me(client, user_headers)
    for published in (True, False):
        post = await create_post(client, user_headers, f"Post {published}", published=published)
        response = await client.request(
            method,
            f"/posts/{post['id']}",
            json={"content": "moderated"},
            headers=admin_headers,
        )
        assert response.status_code == 200, response.text
        assert response.json()["content"] == "moderated"
        assert response.json()["author"] == "alice"
        assert response.json()["author_id"] == alice["id"]


@pytest.mark.parametrize("method", METHODS)
async def test_update_unknown_post(
    client: httpx.AsyncClient, user_headers: dict[str, str], method: str
) -> None:
    response = await client.request(
        method, "/posts/987654", json={"content": "x"}, headers=user_headers
    )
    assert_error(response, 404, "POST_NOT_FOUND")


@pytest.mark.parametrize("method", METHODS)
async def test_update_ignores_server_owned_fields(
    client: httpx.AsyncClient,
    user_headers: dict[str, str],
    other_headers: dict[str, str],
    method: str,
) -> None:
    bob = await me(client, other_headers)
    post = await create_post(client, user_headers, "Owned")
    response = await client.request(
        method,
        f"/posts/{post['id']}",
        json={
            "id": 999,
            "author": "bob",
            "author_id": bob["id"],
            "created_at": "2000-01-01T00:00:00Z",
            "updated_at": "2000-01-01T00:00:00Z",
        },
        headers=user_headers,
    )
    assert response.status_code == 200, response.text
    assert response.json() == post


# --- delete --------------------------------------------------------------------------------------


async def test_delete_post(client: httpx.AsyncClient, user_headers: dict[str, str]) -> None:
    post = await create_post(client, user_headers, "Doomed")
    response = await client.delete(f"/posts/{post['id']}", headers=user_headers)
    assert response.status_code == 204
    assert response.content == b""
    assert_error(await get_post(client, post["id"], user_headers), 404, "POST_NOT_FOUND")
    again = await client.delete(f"/posts/{post['id']}", headers=user_headers)
    assert_error(again, 404, "POST_NOT_FOUND")
    # the title is free again
    await create_post(client, user_headers, "doomed")


async def test_delete_by_others(
    client: httpx.AsyncClient,
    user_headers: dict[str, str],
    other_headers: dict[str, str],
    admin_headers: dict[str, str],
) -> None:
    published = await create_post(client, user_headers, "Keep me")
    draft = await create_post(client, user_headers, "Keep my draft", published=False)
    assert_error(
        await client.delete(f"/posts/{published['id']}", headers=other_headers),
        403,
        "INSUFFICIENT_PERMISSIONS",
    )
    assert_error(
        await client.delete(f"/posts/{draft['id']}", headers=other_headers),
        404,
        "POST_NOT_FOUND",
    )
    assert_error(await client.delete(f"/posts/{published['id']}"), 401, "NOT_AUTHENTICATED")
    assert (await get_post(client, published["id"])).status_code == 200
    assert (await get_post(client, draft["id"], user_headers)).status_code == 200
    for post in (published, draft):
        response = await client.delete(f"/posts/{post['id']}", headers=admin_headers)
        assert response.status_code == 204
        assert (await get_post(client, post["id"], user_headers)).status_code == 404


# --- publish -------------------------------------------------------------------------------------


async def test_publish_a_draft(client: httpx.AsyncClient, user_headers: dict[str, str]) -> None:
    draft = await create_post(client, user_headers, "Soon", published=False)
    response = await client.post(f"/posts/{draft['id']}/publish", headers=user_headers)
    assert response.status_code == 200, response.text
    post = response.json()
    assert post["published"] is True
    assert post["title"] == draft["title"]
    assert post["content"] == draft["content"]
    assert post["created_at"] == draft["created_at"]
    assert parse_time(post["updated_at"]) > parse_time(draft["updated_at"])
    assert (await get_post(client, draft["id"])).json() == post
    listed = (await client.get("/posts")).json()
    assert [item["id"] for item in listed] == [draft["id"]]


async def test_publish_twice_changes_nothing(
    client: httpx.AsyncClient, user_headers: dict[str, str]
) -> None:
    post = await create_post(client, user_headers, "Already out")
    _, etag = await current(client, post["id"], user_headers)
    for _ in range(2):
        response = await client.post(f"/posts/{post['id']}/publish", headers=user_headers)
        assert response.status_code == 200
        assert response.json() == post
        assert response.headers["etag"] == etag


async def test_publish_by_others(
    client: httpx.AsyncClient,
    user_headers: dict[str, str],
    other_headers: dict[str, str],
    admin_headers: dict[str, str],
) -> None:
    published = await create_post(client, user_headers, "Out there")
    draft = await create_post(client, user_headers, "Not yet", published=False)
    assert_error(
        await client.post(f"/posts/{published['id']}/publish", headers=other_headers),
        403,
        "INSUFFICIENT_PERMISSIONS",
    )
    assert_error(
        await client.post(f"/posts/{draft['id']}/publish", headers=other_headers),
        404,
        "POST_NOT_FOUND",
    )
    assert_error(await client.post(f"/posts/{draft['id']}/publish"), 401, "NOT_AUTHENTICATED")
    assert_error(
        await client.post("/posts/987654/publish", headers=user_headers), 404, "POST_NOT_FOUND"
    )
    assert (await get_post(client, draft["id"])).status_code == 404
    response = await client.post(f"/posts/{draft['id']}/publish", headers=admin_headers)
    assert response.status_code == 200
    assert response.json()["published"] is True
    assert response.json()["author"] == "alice"
    assert (await get_post(client, draft["id"])).status_code == 200


# --- ETags and preconditions ---------------------------------------------------------------------


async def test_if_none_match(client: httpx.AsyncClient, user_headers: dict[str, str]) -> None:
    post = await create_post(client, user_headers, "Cached")
    url = f"/posts/{post['id']}"
    etag = (await client.get(url)).headers["etag"]
    for header in (etag, f'"0-0", {etag}', "*"):
        response = await client.get(url, headers={"If-None-Match": header})
        assert response.status_code == 304, header
        assert response.content == b""
        assert response.headers["etag"] == etag
    response = await client.get(url, headers={"If-None-Match": '"0-0"'})
    assert response.status_code == 200
    assert response.json() == post
    await client.patch(url, json={"content": "changed"}, headers=user_headers)
    response = await client.get(url, headers={"If-None-Match": etag})
    assert response.status_code == 200
    assert response.json()["content"] == "changed"
    assert response.headers["etag"] != etag


async def test_if_none_match_does_not_reveal_drafts(
    client: httpx.AsyncClient, user_headers: dict[str, str], other_headers: dict[str, str]
) -> None:
    draft = await create_post(client, user_headers, "Hidden", published=False)
    _, etag = await current(client, draft["id"], user_headers)
    for headers in ({"If-None-Match": etag}, {"If-None-Match": etag, **other_headers}):
        response = await client.get(f"/posts/{draft['id']}", headers=headers)
        assert_error(response, 404, "POST_NOT_FOUND")


@pytest.mark.parametrize("method", METHODS)
async def test_if_match_on_update(
    client: httpx.AsyncClient, user_headers: dict[str, str], method: str
) -> None:
    post = await create_post(client, user_headers, "Guarded", content="v1")
    other = await create_post(client, user_headers, "Other")
    url = f"/posts/{post['id']}"
    before, etag = await current(client, post["id"], user_headers)
    _, other_etag = await current(client, other["id"], user_headers)

    stale = '"0-0"'
    for if_match in (stale, other_etag, "garbage", f"W/{etag}"):
        response = await client.request(
            method,
            url,
            json={"content": "v2"},
            headers={**user_headers, "If-Match": if_match},
        )
        assert_error(response, 412, "PRECONDITION_FAILED")
    assert await current(client, post["id"], user_headers) == (before, etag)

    response = await client.request(
        method, url, json={"content": "v2"}, headers={**user_headers, "If-Match": etag}
    )
    assert response.status_code == 200, response.text
    new_etag = response.headers["etag"]
    assert new_etag != etag
    assert response.json()["content"] == "v2"
    assert await current(client, post["id"], user_headers) == (response.json(), new_etag)

    # the old ETag is now stale
    response = await client.request(
        method, url, json={"content": "v3"}, headers={**user_headers, "If-Match": etag}
    )
    assert_error(response, 412, "PRECONDITION_FAILED")
    assert (await current(client, post["id"], user_headers))[0]["content"] == "v2"

    # a list containing the current tag matches, and so does `*`
    response = await client.request(
        method,
        url,
        json={"content": "v3"},
        headers={**user_headers, "If-Match": f"{stale}, {new_etag}"},
    )
    assert response.status_code == 200
    response = await client.request(
        method, url, json={"content": "v4"}, headers={**user_headers, "If-Match": "*"}
    )
    assert response.status_code == 200
    assert response.json()["content"] == "v4"


async def test_if_match_on_delete(client: httpx.AsyncClient, user_headers: dict[str, str]) -> None:
    post = await create_post(client, user_headers, "Delete carefully")
    url = f"/posts/{post['id']}"
    _, etag = await current(client, post["id"], user_headers)
    response = await client.delete(url, headers={**user_headers, "If-Match": '"0-0"'})
    assert_error(response, 412, "PRECONDITION_FAILED")
    assert (await get_post(client, post["id"])).status_code == 200
    await client.patch(url, json={"content": "edited"}, headers=user_headers)
    response = await client.delete(url, headers={**user_headers, "If-Match": etag})
    assert_error(response, 412, "PRECONDITION_FAILED")
    assert (await get_post(client, post["id"])).status_code == 200
    _, etag = await current(client, post["id"], user_headers)
    response = await client.delete(url, headers={**user_headers, "If-Match": etag})
    assert response.status_code == 204
    assert (await get_post(client, post["id"])).status_code == 404


async def test_if_match_on_publish(client: httpx.AsyncClient, user_headers: dict[str, str]) -> None:
    draft = await create_post(client, user_headers, "Publish carefully", published=False)
    url = f"/posts/{draft['id']}/publish"
    _, etag = await current(client, draft["id"], user_headers)
    response = await client.post(url, headers={**user_headers, "If-Match": '"0-0"'})
    assert_error(response, 412, "PRECONDITION_FAILED")
    assert (await current(client, draft["id"], user_headers)) == (draft, etag)
    response = await client.post(url, headers={**user_headers, "If-Match": etag})
    assert response.status_code == 200
    assert response.json()["published"] is True
    assert response.headers["etag"] != etag
    assert (await get_post(client, draft["id"])).headers["etag"] == response.headers["etag"]
