"""Rendered content, slugs, tags, the author_id and tag filters, /tags and public profiles,
through HTTP on the embedded default and on PostgreSQL + Redis."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from conftest import create_post, register
from core_helpers import assert_error, follow_pages, me, next_link
from fastapi import FastAPI
from sqlalchemy import text
from test_rendering import assert_safe


def ids(response: httpx.Response) -> list[int]:
    assert response.status_code == 200, response.text
    return [post["id"] for post in response.json()]


# --- rendered content ----------------------------------------------------------------------------


async def test_post_carries_its_rendering(
    client: httpx.AsyncClient, user_headers: dict[str, str]
) -> None:
    content = "# Hi\n\nSome **bold** <script>alert(1)</script> [x](javascript:alert(1))\n"
    post = await create_post(client, user_headers, "Rendered", content=content)
    assert post["content"] == content
    assert "<strong>bold</strong>" in post["content_html"]
    assert_safe(post["content_html"])
    assert "alert" not in post["content_html"].replace("javascript:alert(1)", "")
    assert post["excerpt"] == "Hi Some bold [x](javascript:alert(1))" or post["excerpt"].startswith(
        "Hi Some bold"
    )
    assert post["reading_time_minutes"] == 1
    fetched = (await client.get(f"/posts/{post['id']}")).json()
    assert fetched == post


async def test_content_update_renders_again(
    client: httpx.AsyncClient, user_headers: dict[str, str]
) -> None:
    post = await create_post(client, user_headers, "Will change", content="*old*")
    long = " ".join(["word"] * 500)
    response = await client.patch(
        f"/posts/{post['id']}", json={"content": long}, headers=user_headers
    )
    assert response.status_code == 200, response.text
    updated = response.json()
    assert updated["content_html"] == f"<p>{long}</p>\n"
    assert updated["reading_time_minutes"] == 3
    assert len(updated["excerpt"]) <= 200 and updated["excerpt"].endswith("…")
    assert (await client.get(f"/posts/{post['id']}")).json() == updated
    listed = (await client.get("/posts")).json()
    assert listed[0] == updated


# --- slugs ---------------------------------------------------------------------------------------


async def test_slug_made_from_title_and_numbered_on_collision(
    client: httpx.AsyncClient, user_headers: dict[str, str]
) -> None:
    first = await create_post(client, user_headers, "Crème brûlée à Paris")
    assert first["slug"] == "creme-brulee-a-paris"
    second = await create_post(client, user_headers, "Creme Brulee: a Paris!")
    assert second["slug"] == "creme-brulee-a-paris-2"
    third = await create_post(client, user_headers, "crème BRÛLÉE à paris?")
    assert third["slug"] == "creme-brulee-a-paris-3"
    nothing = await create_post(client, user_headers, "!!!")
    assert nothing["slug"] == "post"


async def test_slug_is_stable_when_the_title_changes(
    client: httpx.AsyncClient, user_headers: dict[str, str]
) -> None:
    post = await create_post(client, user_headers, "Original title")
    response = await client.patch(
        f"/posts/{post['id']}", json={"title": "Brand new title"}, headers=user_headers
    )
    assert response.status_code == 200, response.text
    assert response.json()["slug"] == "original-title"
    assert response.json()["title"] == "Brand new title"


async def test_client_slug_on_create_and_update(
    client: httpx.AsyncClient, user_headers: dict[str, str]
) -> None:
    post = await create_post(client, user_headers, "Mine", slug="My-Own-Slug")
    assert post["slug"] == "my-own-slug"
    other = await create_post(client, user_headers, "Other")
    response = await client.post(
        "/posts",
        json={"title": "Third", "content": "x", "slug": "MY-OWN-slug"},
        headers=user_headers,
    )
    assert_error(response, 409, "SLUG_TAKEN")
    response = await client.patch(
        f"/posts/{other['id']}", json={"slug": "my-own-SLUG"}, headers=user_headers
    )
    assert_error(response, 409, "SLUG_TAKEN")
    assert (await client.get(f"/posts/{other['id']}")).json()["slug"] == "other"
    response = await client.patch(
        f"/posts/{other['id']}", json={"slug": "renamed"}, headers=user_headers
    )
    assert response.status_code == 200, response.text
    assert response.json()["slug"] == "renamed"
    assert (await client.get("/posts/slug/renamed")).json()["id"] == other["id"]
    assert_error(await client.get("/posts/slug/other"), 404, "POST_NOT_FOUND")
    # a title clash still says so, not SLUG_TAKEN
    response = await client.post(
        "/posts", json={"title": "mine", "content": "x", "slug": "fresh"}, headers=user_headers
    )
    assert_error(response, 409, "POST_TITLE_EXISTS")


async def test_bad_slugs_are_422(client: httpx.AsyncClient, user_headers: dict[str, str]) -> None:
    post = await create_post(client, user_headers, "Target")
    for bad in ["", "-a", "a-", "a--b", "a b", "a_b", "é", "a" * 81, "a/b", "abc\n", None]:
        response = await client.post(
            "/posts",
            json={"title": f"Bad {bad!r}", "content": "x", "slug": bad},
            headers=user_headers,
        )
        if bad is None:  # left to the title
            assert response.status_code == 201, response.text
            continue
        assert_error(response, 422, "VALIDATION_ERROR")
        response = await client.patch(
            f"/posts/{post['id']}", json={"slug": bad}, headers=user_headers
        )
        assert_error(response, 422, "VALIDATION_ERROR")
    assert (await client.get(f"/posts/{post['id']}")).json()["slug"] == "target"


async def test_concurrent_same_slug_creates_get_distinct_slugs(
    client: httpx.AsyncClient, user_headers: dict[str, str]
) -> None:
    """Titles that differ but slugify alike, created at once: the unique index decides and the
    losers retry with the next free number."""
    titles = [f"Race{'!' * n}" for n in range(1, 7)]
    responses = await asyncio.gather(
        *(
            client.post("/posts", json={"title": t, "content": "x"}, headers=user_headers)
            for t in titles
        )
    )
    assert [r.status_code for r in responses] == [201] * len(titles), [r.text for r in responses]
    slugs = sorted(r.json()["slug"] for r in responses)
    assert slugs == sorted(["race", *(f"race-{n}" for n in range(2, 7))])


async def test_get_by_slug_answers_as_get_by_id(
    client: httpx.AsyncClient, user_headers: dict[str, str], other_headers: dict[str, str]
) -> None:
    post = await create_post(client, user_headers, "Slugged post", tags=["a"])
    by_id = await client.get(f"/posts/{post['id']}")
    by_slug = await client.get("/posts/slug/slugged-post")
    assert by_slug.status_code == 200
    assert by_slug.json() == by_id.json()
    assert by_slug.headers["etag"] == by_id.headers["etag"]
    assert by_slug.headers["x-cache"] == "HIT"  # the same cache entry
    assert (await client.get("/posts/slug/SLUGGED-Post")).json()["id"] == post["id"]
    not_modified = await client.get(
        "/posts/slug/slugged-post", headers={"If-None-Match": by_id.headers["etag"]}
    )
    assert not_modified.status_code == 304
    assert not_modified.headers["etag"] == by_id.headers["etag"]
    # an edit shows at once through the slug as well (no stale read)
    await client.patch(f"/posts/{post['id']}", json={"tags": ["b"]}, headers=user_headers)
    fresh = await client.get("/posts/slug/slugged-post")
    assert fresh.json()["tags"] == ["b"]
    assert fresh.headers["etag"] != by_id.headers["etag"]
    for missing in ("no-such-post", "Not A Slug", "a" * 81, "%00"):
        assert_error(await client.get(f"/posts/slug/{missing}"), 404, "POST_NOT_FOUND")
    # drafts: owner and admins only, 404 for others, as by id
    draft = await create_post(client, user_headers, "Secret draft", published=False)
    assert_error(await client.get("/posts/slug/secret-draft"), 404, "POST_NOT_FOUND")
    response = await client.get("/posts/slug/secret-draft", headers=other_headers)
    assert_error(response, 404, "POST_NOT_FOUND")
    owner_view = await client.get("/posts/slug/secret-draft", headers=user_headers)
    assert owner_view.status_code == 200 and owner_view.json()["id"] == draft["id"]
    # a slug handed over to another post follows it
    await client.patch(f"/posts/{post['id']}", json={"slug": "moved"}, headers=user_headers)
    await client.patch(
        f"/posts/{draft['id']}",
        json={"slug": "slugged-post", "published": True},
        headers=user_headers,
    )
    assert (await client.get("/posts/slug/slugged-post")).json()["id"] == draft["id"]
    await client.delete(f"/posts/{draft['id']}", headers=user_headers)
    assert_error(await client.get("/posts/slug/slugged-post"), 404, "POST_NOT_FOUND")


# --- tags ----------------------------------------------------------------------------------------


async def test_tags_are_normalised_sorted_and_replaced(
    client: httpx.AsyncClient, user_headers: dict[str, str]
) -> None:
    post = await create_post(
        client, user_headers, "Tagged", tags=["Python", " python ", "async", "WEB-dev"]
    )
    assert post["tags"] == ["async", "python", "web-dev"]
    response = await client.patch(
        f"/posts/{post['id']}", json={"tags": ["Zeta"]}, headers=user_headers
    )
    assert response.status_code == 200 and response.json()["tags"] == ["zeta"]
    assert response.json()["updated_at"] != post["updated_at"]
    same = await client.patch(f"/posts/{post['id']}", json={"tags": ["zeta"]}, headers=user_headers)
    assert same.json()["updated_at"] == response.json()["updated_at"]  # nothing changed
    untouched = await client.patch(
        f"/posts/{post['id']}", json={"title": "Tagged 2"}, headers=user_headers
    )
    assert untouched.json()["tags"] == ["zeta"]
    cleared = await client.patch(f"/posts/{post['id']}", json={"tags": []}, headers=user_headers)
    assert cleared.json()["tags"] == []
    assert ids(await client.get("/posts", params={"tag": "zeta"})) == []


async def test_bad_tags_are_422(client: httpx.AsyncClient, user_headers: dict[str, str]) -> None:
    for bad in [
        [""],
        ["   "],
        ["a b"],
        ["ü"],
        ["x" * 31],
        ["a\nb"],
        [f"t{n}" for n in range(11)],
        [1],
        "a",
    ]:
        response = await client.post(
            "/posts", json={"title": "Bad tags", "content": "x", "tags": bad}, headers=user_headers
        )
        assert_error(response, 422, "VALIDATION_ERROR")
    ten = [f"t{n}" for n in range(10)]
    post = await create_post(client, user_headers, "Ten", tags=[*ten, "T1", " t2"])
    assert post["tags"] == sorted(ten)
    response = await client.patch(f"/posts/{post['id']}", json={"tags": None}, headers=user_headers)
    assert_error(response, 422, "VALIDATION_ERROR")


async def test_tag_and_author_id_filters(
    client: httpx.AsyncClient, user_headers: dict[str, str], other_headers: dict[str, str]
) -> None:
    alice, bob = await me(client, user_headers), await me(client, other_headers)
    both = await create_post(client, user_headers, "Both", tags=["python", "async"])
    py = await create_post(client, user_headers, "Py", tags=["python"])
    bobs = await create_post(client, other_headers, "Bobs", tags=["python", "async"])
    await create_post(client, user_headers, "Hidden", tags=["python"], published=False)

    async def listed(**params: Any) -> list[int]:
        return ids(await client.get("/posts", params=params))

    assert await listed(tag="python") == [bobs["id"], py["id"], both["id"]]
    assert await listed(tag=["python", "async"]) == [bobs["id"], both["id"]]
    assert await listed(tag=["PYTHON", " Async "]) == [bobs["id"], both["id"]]
    assert await listed(tag=["python", "nope"]) == []
    assert await listed(author_id=alice["id"]) == [py["id"], both["id"]]
    assert await listed(author_id=bob["id"], tag="async") == [bobs["id"]]
    assert await listed(author_id=999999) == []
    response = await client.get(
        "/posts", params={"tag": "python", "count": "true", "author_id": alice["id"]}
    )
    assert response.headers["x-total-count"] == "2"
    mine = await client.get(
        "/posts", params={"tag": "python", "published": "false"}, headers=user_headers
    )
    assert [p["title"] for p in mine.json()] == ["Hidden"]
    for bad in ({"tag": "a b"}, {"tag": ""}, {"tag": "x" * 31}, {"author_id": 0}):
        assert_error(await client.get("/posts", params=bad), 422, "VALIDATION_ERROR")
    assert_error(
        await client.get("/posts", params={"tag": [f"t{n}" for n in range(11)]}),
        422,
        "VALIDATION_ERROR",
    )


async def test_tag_filter_pages_keep_every_tag(
    client: httpx.AsyncClient, user_headers: dict[str, str]
) -> None:
    for n in range(5):
        await create_post(client, user_headers, f"Paged {n}", tags=["a", "b"])
    await create_post(client, user_headers, "Only a", tags=["a"])
    response = await client.get("/posts", params={"tag": ["a", "b"], "limit": 2})
    link = next_link(response)
    assert link is not None and "tag=a" in link and "tag=b" in link
    pages = await follow_pages(client, "/posts", params={"tag": ["a", "b"], "limit": 2})
    titles = [post["title"] for page in pages for post in page]
    assert titles == [f"Paged {n}" for n in reversed(range(5))]


async def test_deleting_a_post_removes_its_tags(
    client: httpx.AsyncClient, user_headers: dict[str, str], app: FastAPI
) -> None:
    post = await create_post(client, user_headers, "Gone soon", tags=["x", "y"])
    await client.delete(f"/posts/{post['id']}", headers=user_headers)
    async with app.state.database.sessionmaker() as session:
        left = (await session.execute(text("SELECT count(*) FROM post_tags"))).scalar_one()
    assert left == 0
    assert (await client.get("/tags")).json() == []


async def test_tags_endpoint_counts_published_posts(
    client: httpx.AsyncClient, user_headers: dict[str, str]
) -> None:
    await create_post(client, user_headers, "P1", tags=["python", "web"])
    await create_post(client, user_headers, "P2", tags=["python", "async"])
    await create_post(client, user_headers, "P3", tags=["python", "web"])
    draft = await create_post(
        client, user_headers, "D", tags=["draftonly", "async"], published=False
    )
    response = await client.get("/tags")
    assert response.status_code == 200
    assert response.json() == [
        {"name": "python", "post_count": 3},
        {"name": "web", "post_count": 2},
        {"name": "async", "post_count": 1},
    ]
    await client.post(f"/posts/{draft['id']}/publish", headers=user_headers)
    response = await client.get("/tags")
    assert response.json() == [
        {"name": "python", "post_count": 3},
        {"name": "async", "post_count": 2},
        {"name": "web", "post_count": 2},
        {"name": "draftonly", "post_count": 1},
    ]


async def test_tags_endpoint_paging(
    client: httpx.AsyncClient, user_headers: dict[str, str]
) -> None:
    # counts 3, 2, 2, 2, 1, 1: ties ordered by name, across page edges
    layout = [["c", "b", "d", "a", "e"], ["c", "b", "d"], ["c", "d", "b", "f"]]
    for n, tags in enumerate(layout):
        await create_post(client, user_headers, f"T{n}", tags=tags)
    expected = [("b", 3), ("c", 3), ("d", 3), ("a", 1), ("e", 1), ("f", 1)]
    seen: list[tuple[str, int]] = []
    response = await client.get("/tags", params={"limit": 2})
    while True:
        assert response.status_code == 200, response.text
        seen += [(t["name"], t["post_count"]) for t in response.json()]
        link = response.headers.get("link")
        if link is None:
            break
        target = link.split(";")[0].strip("<>")
        assert target.startswith("/tags?") and "cursor=" in target
        response = await client.get(target)
    assert seen == expected
    offset = await client.get("/tags", params={"skip": 4, "limit": 5})
    assert [t["name"] for t in offset.json()] == ["e", "f"]
    assert "link" not in offset.headers
    bad = await client.get("/tags", params={"cursor": "garbage"})
    assert_error(bad, 422, "INVALID_CURSOR")
    posts_cursor = (await client.get("/posts", params={"limit": 1})).headers["link"]
    foreign = posts_cursor.split("cursor=")[1].split(">")[0]
    assert_error(await client.get("/tags", params={"cursor": foreign}), 422, "INVALID_CURSOR")
    both = await client.get("/tags", params={"cursor": foreign, "skip": 1})
    assert_error(both, 422, "VALIDATION_ERROR")
    for bad_limit in (0, 101):
        assert_error(
            await client.get("/tags", params={"limit": bad_limit}), 422, "VALIDATION_ERROR"
        )


# --- public profiles -----------------------------------------------------------------------------


async def test_public_profile(client: httpx.AsyncClient, user_headers: dict[str, str]) -> None:
    alice = await me(client, user_headers)
    await create_post(client, user_headers, "One")
    await create_post(client, user_headers, "Two")
    await create_post(client, user_headers, "Draft", published=False)
    response = await client.get("/users/ALICE")
    assert response.status_code == 200
    assert response.json() == {
        "id": alice["id"],
        "username": "alice",
        "created_at": alice["created_at"],
        "post_count": 2,
    }
    await register(client, "Quiet.One")
    quiet = (await client.get("/users/quiet.one")).json()
    assert quiet["username"] == "Quiet.One" and quiet["post_count"] == 0
    assert "email" not in quiet and "role" not in quiet
    for missing in ("nobody", "x" * 51, "a%00b", "al"):
        assert_error(await client.get(f"/users/{missing}"), 404, "USER_NOT_FOUND")
    assert (await client.get("/users/me", headers=user_headers)).json()["email"]


# --- idempotent creates (the session path) -------------------------------------------------------


async def test_idempotent_create_with_tags_and_a_taken_slug(
    client: httpx.AsyncClient, user_headers: dict[str, str], app: FastAPI
) -> None:
    await create_post(client, user_headers, "Keyed")
    body = {"title": "Keyed!", "content": "x", "tags": ["One", "two"]}
    headers = {**user_headers, "Idempotency-Key": "keyed-1"}
    first = await client.post("/posts", json=body, headers=headers)
    assert first.status_code == 201, first.text
    assert first.json()["slug"] == "keyed-2"  # retried inside the transaction
    assert first.json()["tags"] == ["one", "two"]
    again = await client.post("/posts", json=body, headers=headers)
    assert again.status_code == 201 and again.json() == first.json()
    assert ids(await client.get("/posts", params={"tag": "two"})) == [first.json()["id"]]
    taken = await client.post(
        "/posts",
        json={"title": "Keyed again", "content": "x", "slug": "keyed"},
        headers={**user_headers, "Idempotency-Key": "keyed-2"},
    )
    assert_error(taken, 409, "SLUG_TAKEN")
    async with app.state.database.sessionmaker() as session:
        count = (await session.execute(text("SELECT count(*) FROM posts"))).scalar_one()
    assert count == 2


# --- the OpenAPI document ------------------------------------------------------------------------


async def test_openapi_describes_the_new_fields_and_endpoints(client: httpx.AsyncClient) -> None:
    document = (await client.get("/openapi.json")).json()
    schemas = document["components"]["schemas"]
    post = schemas["PostRead"]["properties"]
    assert {"slug", "content_html", "excerpt", "reading_time_minutes", "tags"} <= set(post)
    assert post["tags"]["type"] == "array"
    assert {"tags", "slug"} <= set(schemas["PostCreate"]["properties"])
    assert {"tags", "slug"} <= set(schemas["PostUpdate"]["properties"])
    paths = document["paths"]
    assert {"/posts/slug/{slug}", "/tags", "/users/{username}", "/feed.atom"} <= set(paths)
    list_params = {p["name"] for p in paths["/posts"]["get"]["parameters"]}
    assert {"author_id", "tag"} <= list_params
    feed_params = {p["name"] for p in paths["/feed.atom"]["get"]["parameters"]}
    assert "tag" in feed_params
    assert (
        "application/atom+xml; charset=utf-8"
        in paths["/feed.atom"]["get"]["responses"]["200"]["content"]
    )
    assert "USER_NOT_FOUND" in paths["/users/{username}"]["get"]["responses"]["404"]["description"]
    assert "SLUG_TAKEN" in paths["/posts"]["post"]["responses"]["409"]["description"]
    assert "SLUG_TAKEN" in paths["/posts/{post_id}"]["patch"]["responses"]["409"]["description"]
    assert "POST_NOT_FOUND" in paths["/posts/slug/{slug}"]["get"]["responses"]["404"]["description"]
    profile = schemas["UserProfile"]["properties"]
    assert set(profile) == {"id", "username", "created_at", "post_count"}
