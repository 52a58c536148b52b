"""GET /posts: order, offset and keyset paging, counts, links, filters and search."""

from __future__ import annotations

import base64
import json
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from conftest import PASSWORD, create_post, login, register
from core_helpers import (
    assert_error,
    follow_pages,
    link_params,
    next_link,
    parse_time,
    set_post_times,
)
from fastapi import FastAPI
from sqlalchemy import select

import security
from models import Post, User

SORTS = ["-created_at", "created_at", "-updated_at", "updated_at", "title", "-title"]
BASE = datetime(2026, 1, 1, tzinfo=UTC)


def ids(response: httpx.Response) -> list[int]:
    assert response.status_code == 200, response.text
    return [post["id"] for post in response.json()]


def encode_cursor(raw: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(raw).encode()).decode().rstrip("=")


async def make_posts(
    client: httpx.AsyncClient, headers: dict[str, str], titles: list[str], **fields: Any
) -> list[dict[str, Any]]:
    return [await create_post(client, headers, title, **fields) for title in titles]


# --- order ---------------------------------------------------------------------------------------


async def test_newest_first_by_default(
    client: httpx.AsyncClient, user_headers: dict[str, str]
) -> None:
    posts = await make_posts(client, user_headers, ["one", "two", "three"])
    response = await client.get("/posts")
    assert ids(response) == [post["id"] for post in reversed(posts)]
    assert response.json()[0] == posts[-1]
    assert "x-total-count" not in response.headers
    assert "link" not in response.headers


async def test_ties_are_broken_by_id(
    client: httpx.AsyncClient, app: FastAPI, user_headers: dict[str, str]
) -> None:
    posts = await make_posts(client, user_headers, [f"tie {i}" for i in range(5)])
    order = [post["id"] for post in posts]
    # shuffle the insertion order against the ids by giving everyone the same instant
    for post in posts:
        await set_post_times(app, post["id"], created_at=BASE, updated_at=BASE)
    assert ids(await client.get("/posts")) == sorted(order, reverse=True)
    assert ids(await client.get("/posts", params={"sort": "created_at"})) == sorted(order)
    assert ids(await client.get("/posts", params={"sort": "-updated_at"})) == sorted(
        order, reverse=True
    )
    assert ids(await client.get("/posts", params={"sort": "updated_at"})) == sorted(order)
    # and keyset paging through the tie loses nothing
    for sort, expected in (("-created_at", sorted(order, reverse=True)), ("updated_at", order)):
        pages = await follow_pages(client, "/posts", params={"sort": sort, "limit": 2})
        assert [len(page) for page in pages] == [2, 2, 1]
        assert [post["id"] for page in pages for post in page] == expected


# --- offset paging and counts --------------------------------------------------------------------


async def test_skip_and_limit(client: httpx.AsyncClient, user_headers: dict[str, str]) -> None:
    posts = await make_posts(client, user_headers, [f"post {i:02d}" for i in range(12)])
    newest_first = [post["id"] for post in reversed(posts)]
    assert ids(await client.get("/posts")) == newest_first[:10]
    assert ids(await client.get("/posts", params={"limit": 5, "skip": 10})) == newest_first[10:]
    assert ids(await client.get("/posts", params={"limit": 3, "skip": 4})) == newest_first[4:7]
    assert ids(await client.get("/posts", params={"skip": 12})) == []
    assert ids(await client.get("/posts", params={"limit": 100})) == newest_first
    assert ids(await client.get("/posts", params={"limit": 1})) == newest_first[:1]


BAD_LIST_PARAMETERS: list[tuple[dict[str, Any], str]] = [
    ({"limit": 0}, "limit"),
    ({"limit": 101}, "limit"),
    ({"limit": -1}, "limit"),
    ({"limit": "ten"}, "limit"),
    ({"skip": -1}, "skip"),
    ({"sort": "author"}, "sort"),
    ({"sort": "+title"}, "sort"),
    ({"published": "perhaps"}, "published"),
    ({"count": "sure"}, "count"),
    ({"min_date": "yesterday"}, "min_date"),
    # ISO 8601 only: pydantic alone would read these as Unix times
    ({"min_date": "1700000000"}, "min_date"),
    ({"max_date": "-1.4e-45"}, "max_date"),
    ({"max_date": "20260101"}, "max_date"),
]


async def test_bad_list_parameters(client: httpx.AsyncClient, subtests: pytest.Subtests) -> None:
    for params, name in BAD_LIST_PARAMETERS:
        with subtests.test(**params):
            response = await client.get("/posts", params=params)
            error = assert_error(response, 422, "VALIDATION_ERROR")
            assert any(item["loc"] == ["query", name] for item in error["detail"]), error


async def test_count(
    client: httpx.AsyncClient, user_headers: dict[str, str], other_headers: dict[str, str]
) -> None:
    await make_posts(client, user_headers, [f"alice {i}" for i in range(7)])
    await make_posts(client, other_headers, [f"bob {i}" for i in range(4)])
    await make_posts(client, user_headers, ["alice draft"], published=False)

    response = await client.get("/posts", params={"count": "true", "limit": 3})
    assert response.headers["x-total-count"] == "11"
    assert len(response.json()) == 3
    response = await client.get("/posts", params={"count": "true", "author": "bob"})
    assert response.headers["x-total-count"] == "4"
    response = await client.get("/posts", params={"count": "true", "skip": 5, "author": "ALI"})
    assert response.headers["x-total-count"] == "7"
    assert len(response.json()) == 2
    response = await client.get("/posts", params={"count": "true", "author": "nobody"})
    assert response.headers["x-total-count"] == "0"
    response = await client.get(
        "/posts", params={"count": "true", "published": "false"}, headers=user_headers
    )
    assert response.headers["x-total-count"] == "1"
    response = await client.get("/posts", params={"count": "false"})
    assert "x-total-count" not in response.headers


async def test_skip_or_count_with_cursor_is_refused(
    client: httpx.AsyncClient, user_headers: dict[str, str]
) -> None:
    await make_posts(client, user_headers, ["a1", "a2", "a3"])
    link = next_link(await client.get("/posts", params={"limit": 1}))
    assert link is not None
    cursor = link_params(link)["cursor"]
    for skip in (0, 1):
        params = {"cursor": cursor, "skip": str(skip)}
        error = assert_error(await client.get("/posts", params=params), 422, "VALIDATION_ERROR")
        assert error["detail"][0]["loc"] == ["query", "skip"]
    error = assert_error(
        await client.get("/posts", params={"cursor": cursor, "count": "true"}),
        422,
        "VALIDATION_ERROR",
    )
    assert error["detail"][0]["loc"] == ["query", "count"]
    assert set(error["detail"][0]) == {"loc", "msg", "type"}


# --- next links ----------------------------------------------------------------------------------


async def test_link_only_when_there_is_a_next_page(
    client: httpx.AsyncClient, user_headers: dict[str, str]
) -> None:
    posts = await make_posts(client, user_headers, ["l1", "l2", "l3", "l4"])
    assert next_link(await client.get("/posts", params={"limit": 4})) is None
    assert next_link(await client.get("/posts", params={"limit": 5})) is None
    assert next_link(await client.get("/posts", params={"limit": 2, "skip": 2})) is None
    first = await client.get("/posts", params={"limit": 3})
    link = next_link(first)
    assert link is not None
    params = link_params(link)
    assert params["limit"] == "3"
    assert params["cursor"]
    assert "skip" not in params
    last = await client.get(link)
    assert ids(last) == [posts[0]["id"]]
    assert next_link(last) is None


async def test_link_after_an_offset_page_uses_a_cursor(
    client: httpx.AsyncClient, user_headers: dict[str, str]
) -> None:
    posts = await make_posts(client, user_headers, [f"o{i}" for i in range(6)])
    newest_first = [post["id"] for post in reversed(posts)]
    response = await client.get("/posts", params={"skip": 2, "limit": 2})
    assert ids(response) == newest_first[2:4]
    link = next_link(response)
    assert link is not None
    params = link_params(link)
    assert "skip" not in params and params["cursor"]
    rest = await follow_pages(client, link)
    assert [post["id"] for page in rest for post in page] == newest_first[4:]


async def test_link_carries_the_filters(
    client: httpx.AsyncClient, app: FastAPI, user_headers: dict[str, str]
) -> None:
    posts = await make_posts(
        client,
        user_headers,
        [f"zebra note {i}" for i in range(5)],
        content="about the zebra",
        published=False,
    )
    await make_posts(client, user_headers, ["unrelated draft"], published=False)
    for i, post in enumerate(posts):
        await set_post_times(app, post["id"], created_at=BASE + timedelta(days=i))
    query: dict[str, str | int] = {
        "limit": 2,
        "author": "lic",
        "q": "zebra",
        "min_date": "2026-01-02T00:00:00+00:00",
        "max_date": "2026-01-05T00:00:00Z",
        "published": "false",
        "sort": "created_at",
    }
    response = await client.get("/posts", params=query, headers=user_headers)
    assert ids(response) == [posts[1]["id"], posts[2]["id"]]
    link = next_link(response)
    assert link is not None
    params = link_params(link)
    assert params["cursor"]
    assert params["limit"] == "2"
    assert params["author"] == "lic"
    assert params["q"] == "zebra"
    assert params["published"] == "false"
    assert params["sort"] == "created_at"
    assert parse_time(params["min_date"]) == BASE + timedelta(days=1)
    assert parse_time(params["max_date"]) == BASE + timedelta(days=4)
    second = await client.get(link, headers=user_headers)
    assert ids(second) == [posts[3]["id"], posts[4]["id"]]
    assert next_link(second) is None


async def test_link_after_a_counted_page_can_be_followed(
    client: httpx.AsyncClient, user_headers: dict[str, str]
) -> None:
    """count is not carried over: with a cursor it would be refused."""
    posts = await make_posts(client, user_headers, ["n1", "n2", "n3"])
    first = await client.get("/posts", params={"count": "true", "limit": 2})
    assert first.headers["x-total-count"] == "3"
    link = next_link(first)
    assert link is not None
    assert "count" not in link_params(link)
    second = await client.get(link)
    assert ids(second) == [posts[0]["id"]]


async def build_paging_fixture(
    client: httpx.AsyncClient,
    app: FastAPI,
    user_headers: dict[str, str],
    other_headers: dict[str, str],
) -> list[dict[str, Any]]:
    """Published posts with clashing timestamps and awkward titles, plus drafts in between."""
    titles = [
        "mango",
        "Apple pie",
        "apple",
        "banana split",
        "Zulu",
        "  cherry",
        "ZZ top",
        "a b c",
        "a-b-c",
        "a_b_c",
        "Émile",
        "émile zola",
        "123 numbers",
        "quotes \"'",
        "kiwi",
    ]
    published = []
    for i, title in enumerate(titles):
        headers = user_headers if i % 2 else other_headers
        published.append(await create_post(client, headers, title))
        if i % 4 == 0:
            await create_post(client, headers, f"draft {i}", published=False)
    for i, post in enumerate(published):
        # groups of three share created_at; updated_at runs in another order, with ties too
        await set_post_times(
            app,
            post["id"],
            created_at=BASE + timedelta(seconds=i // 3),
            updated_at=BASE + timedelta(minutes=(7 * i) % 5, microseconds=i % 2),
        )
    response = await client.get("/posts", params={"limit": 100})
    listed: list[dict[str, Any]] = response.json()
    assert len(listed) == len(titles)
    return listed


@pytest.mark.parametrize("sort", SORTS)
async def test_following_links_visits_every_post_once(
    client: httpx.AsyncClient,
    app: FastAPI,
    user_headers: dict[str, str],
    other_headers: dict[str, str],
    sort: str,
) -> None:
    posts = await build_paging_fixture(client, app, user_headers, other_headers)
    everything = await client.get("/posts", params={"limit": 100, "sort": sort})
    full_order = ids(everything)
    assert sorted(full_order) == sorted(post["id"] for post in posts)

    field = sort.lstrip("-")
    descending = sort.startswith("-")
    if field != "title":
        key = {post["id"]: (parse_time(post[field]), post["id"]) for post in posts}
        assert full_order == sorted(key, key=lambda i: key[i], reverse=descending)
    else:
        # the database's collation decides the order; ties cannot happen (unique titles)
        titles = [post["title"] for post in everything.json()]
        ascii_titles = [t for t in titles if t.isascii() and t.replace(" ", "").islower()]
        expected = sorted(ascii_titles, reverse=descending)
        if [t.replace(" ", "") for t in expected] == sorted(
            (t.replace(" ", "") for t in ascii_titles), reverse=descending
        ):
            assert ascii_titles == expected

    for limit in (1, 4):
        pages = await follow_pages(client, "/posts", params={"sort": sort, "limit": limit})
        seen = [post["id"] for page in pages for post in page]
        assert seen == full_order, (limit, seen)
        assert all(len(page) == limit for page in pages[:-1])
        assert 1 <= len(pages[-1]) <= limit
    # also when the first page is an offset page
    pages = await follow_pages(client, "/posts", params={"sort": sort, "limit": 3, "skip": 5})
    assert [post["id"] for page in pages for post in page] == full_order[5:]


async def test_cursor_paging_over_drafts_for_admin(
    client: httpx.AsyncClient,
    user_headers: dict[str, str],
    other_headers: dict[str, str],
    admin_headers: dict[str, str],
) -> None:
    drafts = await make_posts(client, user_headers, [f"ad{i}" for i in range(3)], published=False)
    drafts += await make_posts(client, other_headers, [f"bd{i}" for i in range(3)], published=False)
    await make_posts(client, user_headers, ["visible"])
    pages = await follow_pages(
        client,
        "/posts",
        params={"published": "false", "limit": 4, "sort": "title"},
        headers=admin_headers,
    )
    assert [len(page) for page in pages] == [4, 2]
    assert [post["title"] for page in pages for post in page] == sorted(
        post["title"] for post in drafts
    )


# --- cursors -------------------------------------------------------------------------------------


async def test_cursor_of_another_sort_is_refused(
    client: httpx.AsyncClient, user_headers: dict[str, str]
) -> None:
    await make_posts(client, user_headers, ["c1", "c2", "c3"])
    for made_for in SORTS:
        link = next_link(await client.get("/posts", params={"limit": 1, "sort": made_for}))
        assert link is not None
        cursor = link_params(link)["cursor"]
        for used_with in SORTS:
            response = await client.get(
                "/posts", params={"limit": 1, "sort": used_with, "cursor": cursor}
            )
            if used_with == made_for:
                assert response.status_code == 200
            else:
                assert_error(response, 422, "INVALID_CURSOR")


BAD_CURSORS = [
    ("garbage", "-created_at"),
    ("!!!!", "-created_at"),
    ("e30", "-created_at"),  # "{}"
    (encode_cursor("not a list"), "-created_at"),
    (encode_cursor(["-created_at", "2026-01-01T00:00:00+00:00"]), "-created_at"),
    (encode_cursor(["-created_at", "2026-01-01T00:00:00+00:00", 1, 2]), "-created_at"),
    (encode_cursor(["-created_at", "not a date", 1]), "-created_at"),
    (encode_cursor(["-created_at", "2026-01-01T00:00:00", 1]), "-created_at"),
    (encode_cursor(["-created_at", 12345, 1]), "-created_at"),
    (encode_cursor(["-created_at", None, 1]), "-created_at"),
    (encode_cursor(["-created_at", "2026-01-01T00:00:00+00:00", "1"]), "-created_at"),
    (encode_cursor(["-created_at", "2026-01-01T00:00:00+00:00", True]), "-created_at"),
    (encode_cursor(["-created_at", "2026-01-01T00:00:00+00:00", 2**80]), "-created_at"),
    (encode_cursor(["title", 5, 1]), "title"),
    (encode_cursor(["title", ["x"], 1]), "title"),
    (encode_cursor(["title", "x", 1.5]), "title"),
    (encode_cursor(["title", "x", -(2**70)]), "title"),
    (encode_cursor([1, "x", 1]), "title"),
    (base64.urlsafe_b64encode(b"\xff\xfe\x00").decode(), "title"),
    (encode_cursor(["title", "nul\u0000inside", 1]), "title"),
    (encode_cursor(["-created_at", "0001-01-01T00:00:00+01:00", 1]), "-created_at"),
    (encode_cursor(["updated_at", "9999-12-31T23:59:59-01:00", 1]), "updated_at"),
]


async def test_bad_cursors(
    client: httpx.AsyncClient, user_headers: dict[str, str], subtests: pytest.Subtests
) -> None:
    await make_posts(client, user_headers, ["one", "two"])
    for cursor, sort in BAD_CURSORS:
        with subtests.test(cursor=cursor, sort=sort):
            response = await client.get("/posts", params={"cursor": cursor, "sort": sort})
            assert_error(response, 422, "INVALID_CURSOR")


def crafted_cursors(sort: str, good_value: str) -> list[str]:
    """Cursors for `sort` with one part replaced by something no issued cursor holds."""
    bad_strings = ["\ud800", "a\udfffb", "\udbff\udc00", "nul\u0000", "\u0000"]
    bad_ids: list[Any] = [-1, 2**31, 2**63, 2**64 + 1, 1e308, float("nan"), "1", None, True, [1]]
    bad_values: list[Any] = [None, 0, 2**70, 1.5, True, [], {}, ["x"], {"a": 1}]
    cursors = [encode_cursor([text, good_value, 1]) for text in bad_strings]
    cursors += [encode_cursor([sort, text, 1]) for text in bad_strings]
    cursors += [encode_cursor([sort, good_value + text, 1]) for text in bad_strings]
    cursors += [encode_cursor([sort, value, 1]) for value in bad_values]
    cursors += [encode_cursor([sort, good_value, row_id]) for row_id in bad_ids]
    cursors += [encode_cursor(shape) for shape in ([], [sort], {}, "x", 1, None, [[sort], 1, 1])]
    # JSON that json.dumps would not write: NaN, lone surrogate escapes, huge numbers.
    for raw in (
        f'["{sort}", "{good_value}", NaN]',
        f'["{sort}", "{good_value}", Infinity]',
        f'["{sort}", "{good_value}", 1{"0" * 5000}]',
        f'["{sort}", "\\ud800", 1]',
        f'["{sort}\\udc80", "{good_value}", 1]',
    ):
        cursors.append(base64.urlsafe_b64encode(raw.encode()).decode().rstrip("="))
    return cursors


@pytest.mark.parametrize("target", ["posts", "comments", "tags"])
async def test_fuzzed_cursors_are_invalid_cursor_never_a_500(
    client: httpx.AsyncClient, user_headers: dict[str, str], target: str
) -> None:
    """A table of crafted cursors plus random bytes, for every sort, for comments and for tags:
    each is 422 (INVALID_CURSOR, or VALIDATION_ERROR past 512 chars) or, by chance, a page;
    never 500."""
    posts = await make_posts(client, user_headers, ["f1", "f2"])
    date = "2026-01-01T00:00:00+00:00"
    if target == "posts":
        cases = [("/posts", {"sort": sort}, "f1" if "title" in sort else date) for sort in SORTS]
    elif target == "comments":
        cases = [(f"/posts/{posts[0]['id']}/comments", {}, date)]
    else:
        cases = [("/tags", {}, "python")]
    randomness = random.Random(1306)
    for path, params, good_value in cases:
        sort = params.get("sort", target)
        cursors = crafted_cursors(sort, good_value)
        for size in (1, 3, 8, 30, 120, 380):
            for _ in range(4):
                raw = randomness.randbytes(size)
                cursors.append(base64.urlsafe_b64encode(raw).decode().rstrip("="))
                cursors.append(raw.decode("latin-1"))
        for cursor in cursors:
            response = await client.get(path, params={**params, "cursor": cursor})
            assert response.status_code in (200, 422), (cursor, response.text)
            if response.status_code == 422:
                code = response.json()["error_code"]
                assert code == "INVALID_CURSOR" or len(cursor) > 512 or "\x00" in cursor, (
                    cursor,
                    response.text,
                )
        # The well-formed cursor the crafted ones were made from is accepted.
        good = encode_cursor([sort, good_value, 1])
        assert (await client.get(path, params={**params, "cursor": good})).status_code == 200


async def test_cursor_is_opaque_text(
    client: httpx.AsyncClient, user_headers: dict[str, str]
) -> None:
    await make_posts(client, user_headers, ["x1", "x2"])
    link = next_link(await client.get("/posts", params={"limit": 1, "sort": "title"}))
    assert link is not None
    cursor = link_params(link)["cursor"]
    assert "x1" not in cursor and " " not in cursor


# --- filters -------------------------------------------------------------------------------------


async def insert_user_with_post(app: FastAPI, username: str, title: str) -> int:
    """A user whose name the API would refuse (to prove LIKE wildcards are escaped)."""
    async with app.state.database.sessionmaker() as session:
        user = User(
            username=username,
            email=f"{len(username)}-{abs(hash(username))}@example.com",
            password_hash=security.hash_password(PASSWORD),
        )
        session.add(user)
        await session.flush()
        now = datetime.now(UTC)
        post = Post(
            title=title,
            content="inserted directly",
            author_id=user.id,
            created_at=now,
            updated_at=now,
        )
        session.add(post)
        await session.commit()
        return post.id


async def test_author_filter(client: httpx.AsyncClient, app: FastAPI) -> None:
    by_author: dict[str, int] = {}
    for username in ("a_b", "axb", "Mixed_Case", "plain"):
        await register(client, username)
        headers = await login(client, username)
        by_author[username] = (await create_post(client, headers, f"by {username}"))["id"]

    async def authors(value: str) -> set[int]:
        return set(ids(await client.get("/posts", params={"author": value, "limit": 100})))

    assert await authors("a_b") == {by_author["a_b"]}  # `_` is no wildcard: axb not matched
    assert await authors("A_B") == {by_author["a_b"]}
    assert await authors("_") == {by_author["a_b"], by_author["Mixed_Case"]}
    assert await authors("x") == {by_author["axb"], by_author["Mixed_Case"]}
    assert await authors("mixed_case") == {by_author["Mixed_Case"]}
    assert await authors("MIXED") == {by_author["Mixed_Case"]}
    assert await authors("lai") == {by_author["plain"]}
    assert await authors("%") == set()  # `%` is no wildcard either
    assert await authors("a%b") == set()
    assert await authors("\\") == set()
    assert await authors("a\\_b") == set()
    assert await authors("nobody") == set()
    assert_error(await client.get("/posts", params={"author": ""}), 422, "VALIDATION_ERROR")


async def test_author_filter_pages_like_the_full_list_in_every_sort(
    client: httpx.AsyncClient, app: FastAPI, admin_headers: dict[str, str]
) -> None:
    """Several matching authors, with ties across them: every sort, offset and cursor paging,
    a tag and drafts agree with the unfiltered list cut to those authors (on PostgreSQL the
    filter reads each author's first posts through a LATERAL subquery and merges them)."""
    names = ["walker_a", "Walker_B", "xwalkerx", "stroller"]
    posts: dict[str, list[dict[str, Any]]] = {}
    for n, name in enumerate(names):
        await register(client, name)
        headers = await login(client, name)
        posts[name] = []
        for i in range(4):
            title = f"{'mdbca'[(n + i) % 5]} {name} {i}"
            post = await create_post(client, headers, title, tags=["trail"] if i % 2 else [])
            # created_at ties across authors; updated_at ties within and across them
            await set_post_times(
                app,
                post["id"],
                created_at=BASE + timedelta(hours=i),
                updated_at=BASE + timedelta(hours=(n + i) % 3),
            )
            posts[name].append(post)
        draft = await create_post(client, headers, f"draft {name}", published=False)
        await set_post_times(app, draft["id"], created_at=BASE + timedelta(hours=n))
    walkers = {post["id"] for name in names[:3] for post in posts[name]}
    for sort in SORTS:
        everything = ids(await client.get("/posts", params={"sort": sort, "limit": 100}))
        expected = [post_id for post_id in everything if post_id in walkers]
        assert len(expected) == 12
        params: dict[str, Any] = {"sort": sort, "author": "WALKER"}
        assert ids(await client.get("/posts", params={**params, "limit": 100})) == expected
        pages = await follow_pages(client, "/posts", params={**params, "limit": 5})
        assert [post["id"] for page in pages for post in page] == expected, sort
        for skip in range(0, 13, 3):  # fewer rows a page than an author has posts
            page = await client.get("/posts", params={**params, "limit": 2, "skip": skip})
            assert ids(page) == expected[skip : skip + 2], (sort, skip)
        tagged = ids(await client.get("/posts", params={**params, "tag": "trail", "limit": 3}))
        trails = {post["id"] for name in names[:3] for post in posts[name] if post["tags"]}
        assert tagged == [post_id for post_id in expected if post_id in trails][:3]
    drafts = await client.get(
        "/posts", params={"author": "walker", "published": "false"}, headers=admin_headers
    )
    assert sorted(post["author"] for post in drafts.json()) == ["Walker_B", "walker_a", "xwalkerx"]


async def test_author_filter_wildcards_match_themselves(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    percent = await insert_user_with_post(app, "a%b", "percent post")
    backslash = await insert_user_with_post(app, "a\\b", "backslash post")
    underscore = await insert_user_with_post(app, "a_b", "underscore post")
    plain = await insert_user_with_post(app, "axb", "plain post")

    async def authors(value: str) -> set[int]:
        return set(ids(await client.get("/posts", params={"author": value})))

    assert await authors("%") == {percent}
    assert await authors("a%b") == {percent}
    assert await authors("A%B") == {percent}
    assert await authors("\\") == {backslash}
    assert await authors("a\\b") == {backslash}
    assert await authors("_") == {underscore}
    assert await authors("a_b") == {underscore}
    assert await authors("axb") == {plain}
    assert await authors("a") == {percent, backslash, underscore, plain}
    assert (await client.get(f"/posts/{percent}")).json()["author"] == "a%b"


async def test_date_filters(
    client: httpx.AsyncClient, app: FastAPI, user_headers: dict[str, str]
) -> None:
    posts = await make_posts(client, user_headers, ["d1", "d2", "d3"])
    times = [BASE, BASE + timedelta(days=1, microseconds=123456), BASE + timedelta(days=2)]
    for post, when in zip(posts, times, strict=True):
        await set_post_times(app, post["id"], created_at=when)
    p1, p2, p3 = (post["id"] for post in posts)

    async def between(**params: str) -> list[int]:
        return ids(await client.get("/posts", params={**params, "sort": "created_at"}))

    second = "2026-01-02T00:00:00.123456"
    assert await between(min_date=second + "Z") == [p2, p3]  # inclusive
    assert await between(max_date=second + "Z") == [p1, p2]  # inclusive
    assert await between(min_date=second + "Z", max_date=second + "Z") == [p2]
    assert await between(min_date=second) == [p2, p3]  # naive means UTC
    assert await between(max_date=second) == [p1, p2]
    assert await between(min_date="2026-01-02T01:00:00.123456+01:00") == [p2, p3]
    assert await between(min_date="2026-01-02T00:00:00.123457Z") == [p3]
    assert await between(max_date="2026-01-02T00:00:00.123455Z") == [p1]
    assert await between(min_date="2026-01-01T23:00:00-01:00") == [p2, p3]  # = 00:00Z on 2nd
    assert await between(max_date="2025-12-31T23:59:59Z") == []
    assert await between(min_date="2026-01-01T00:00:00", max_date="2026-01-03T00:00:00") == [
        p1,
        p2,
        p3,
    ]
    response = await client.get(
        "/posts", params={"min_date": "2026-01-03T00:00:00Z", "max_date": "2026-01-01T00:00:00Z"}
    )
    error = assert_error(response, 422, "VALIDATION_ERROR")
    assert error["detail"][0]["loc"] == ["query", "min_date"]
    # min == max is not an error
    assert (
        await client.get(
            "/posts", params={"min_date": "2026-01-03T00:00:00", "max_date": "2026-01-03T00:00:00"}
        )
    ).status_code == 200


UNSTORABLE_FILTERS = [
    ("min_date", "0001-01-01T00:00:00+01:00"),
    ("max_date", "9999-12-31T23:00:00-05:00"),
    ("author", "a\x00b"),
    ("q", "zebra\x00"),
]


async def test_filter_values_the_database_cannot_hold(
    client: httpx.AsyncClient, user_headers: dict[str, str], subtests: pytest.Subtests
) -> None:
    """422, never a driver error (PostgreSQL text has no NUL; year 1 - 1 h is no date)."""
    await create_post(client, user_headers, "zebra")
    for name, value in UNSTORABLE_FILTERS:
        with subtests.test(name=name, value=value):
            response = await client.get("/posts", params={name: value})
            error = assert_error(response, 422, "VALIDATION_ERROR")
            assert error["detail"][0]["loc"] == ["query", name]


async def test_extreme_but_valid_dates(
    client: httpx.AsyncClient, user_headers: dict[str, str]
) -> None:
    post = await create_post(client, user_headers, "Any time")
    params = {"min_date": "0001-01-01T00:00:00Z", "max_date": "9999-12-31T23:59:59.999999Z"}
    assert ids(await client.get("/posts", params=params)) == [post["id"]]
    assert ids(await client.get("/posts", params={"max_date": "0001-01-01T00:00:00"})) == []


async def test_full_text_search(
    client: httpx.AsyncClient, user_headers: dict[str, str], other_headers: dict[str, str]
) -> None:
    title_hit = await create_post(
        client, user_headers, "Zebra sightings", content="Seen near the river bank."
    )
    content_hit = await create_post(
        client, other_headers, "Weekly notes", content="A zebra crossed the savanna road."
    )
    both = await create_post(
        client, user_headers, "Giraffe census", content="Every zebra and every giraffe counted."
    )
    stemmed = await create_post(
        client, other_headers, "Morning routine", content="Running along the canal."
    )
    await create_post(client, user_headers, "Unrelated", content="Nothing to see.")
    await create_post(
        client, user_headers, "Zebra draft", content="unpublished zebra", published=False
    )

    async def search(q: str, **params: Any) -> set[int]:
        return set(ids(await client.get("/posts", params={"q": q, **params})))

    assert await search("zebra") == {title_hit["id"], content_hit["id"], both["id"]}
    assert await search("ZEBRA") == {title_hit["id"], content_hit["id"], both["id"]}
    assert await search("savanna") == {content_hit["id"]}
    assert await search("census") == {both["id"]}
    assert await search("zebra giraffe") == {both["id"]}  # several words: all of them
    assert await search("giraffe zebra") == {both["id"]}
    assert await search("zebra savanna") == {content_hit["id"]}
    assert await search("zebra elephant") == set()
    assert await search("elephant") == set()
    assert await search("run") == {stemmed["id"]}  # stems, not substrings
    assert await search("runs") == {stemmed["id"]}
    for odd in ("!!!", '"', "zebra*", "zebra AND", "NEAR(zebra", "-zebra", "'", "\\"):
        response = await client.get("/posts", params={"q": odd})
        assert response.status_code == 200, (odd, response.text)
    response = await client.get("/posts", params={"q": "zebra", "count": "true"})
    assert response.headers["x-total-count"] == "3"
    assert_error(await client.get("/posts", params={"q": ""}), 422, "VALIDATION_ERROR")


async def test_search_with_sort_and_author(
    client: httpx.AsyncClient,
    app: FastAPI,
    user_headers: dict[str, str],
    other_headers: dict[str, str],
) -> None:
    titles = ["b walrus", "c walrus", "a walrus"]
    mine = await make_posts(client, user_headers, titles, content="walrus facts")
    theirs = await make_posts(client, other_headers, ["d walrus"], content="walrus facts")
    await make_posts(client, user_headers, ["e seal"], content="seal facts")
    for i, post in enumerate(mine):
        await set_post_times(app, post["id"], created_at=BASE + timedelta(hours=i))

    by_title = await client.get("/posts", params={"q": "walrus", "sort": "title"})
    assert [post["title"] for post in by_title.json()] == [
        "a walrus",
        "b walrus",
        "c walrus",
        "d walrus",
    ]
    desc = await client.get("/posts", params={"q": "walrus", "sort": "-title", "author": "alice"})
    assert [post["title"] for post in desc.json()] == ["c walrus", "b walrus", "a walrus"]
    oldest = await client.get(
        "/posts", params={"q": "walrus", "sort": "created_at", "author": "ALICE"}
    )
    assert ids(oldest) == [post["id"] for post in mine]
    newest = await client.get("/posts", params={"q": "walrus facts", "author": "bob"})
    assert ids(newest) == [theirs[0]["id"]]
    pages = await follow_pages(
        client, "/posts", params={"q": "walrus", "sort": "title", "limit": 1}
    )
    assert [post["title"] for page in pages for post in page] == [
        "a walrus",
        "b walrus",
        "c walrus",
        "d walrus",
    ]


async def test_search_follows_edits_and_deletes(
    client: httpx.AsyncClient, user_headers: dict[str, str]
) -> None:
    post = await create_post(client, user_headers, "Otter", content="river otter")
    url = f"/posts/{post['id']}"

    async def search(q: str) -> list[int]:
        return ids(await client.get("/posts", params={"q": q}))

    assert await search("otter") == [post["id"]]
    await client.patch(
        url, json={"title": "Beaver", "content": "dam builder"}, headers=user_headers
    )
    assert await search("otter") == []
    assert await search("beaver") == [post["id"]]
    assert await search("dam builder") == [post["id"]]
    await client.patch(url, json={"published": False}, headers=user_headers)
    assert await search("beaver") == []
    await client.post(f"{url}/publish", headers=user_headers)
    assert await search("beaver") == [post["id"]]
    assert (await client.delete(url, headers=user_headers)).status_code == 204
    assert await search("beaver") == []


# --- drafts --------------------------------------------------------------------------------------


async def test_drafts_listing(
    client: httpx.AsyncClient,
    user_headers: dict[str, str],
    other_headers: dict[str, str],
    admin_headers: dict[str, str],
) -> None:
    public = await create_post(client, user_headers, "Public koala", content="koala")
    alice_draft = await create_post(
        client, user_headers, "Alice koala draft", content="koala", published=False
    )
    bob_draft = await create_post(
        client, other_headers, "Bob koala draft", content="koala", published=False
    )

    response = await client.get("/posts", params={"published": "false"})
    assert_error(response, 401, "NOT_AUTHENTICATED")
    assert response.headers["www-authenticate"] == "Bearer"

    async def listed(headers: dict[str, str] | None, **params: Any) -> set[int]:
        return set(ids(await client.get("/posts", params=params, headers=headers)))

    assert await listed(user_headers, published="false") == {alice_draft["id"]}
    assert await listed(other_headers, published="false") == {bob_draft["id"]}
    assert await listed(admin_headers, published="false") == {alice_draft["id"], bob_draft["id"]}
    assert await listed(user_headers, published="false", q="koala") == {alice_draft["id"]}
    assert await listed(admin_headers, published="false", author="bob") == {bob_draft["id"]}
    for headers in (None, user_headers, other_headers, admin_headers):
        assert await listed(headers) == {public["id"]}
        assert await listed(headers, published="true") == {public["id"]}
        assert await listed(headers, q="koala") == {public["id"]}
        assert await listed(headers, q="draft") == set()
    for sort in SORTS:
        assert await listed(admin_headers, sort=sort, limit=100) == {public["id"]}


async def test_published_lists_never_include_drafts_even_when_paging(
    client: httpx.AsyncClient, user_headers: dict[str, str], admin_headers: dict[str, str]
) -> None:
    for i in range(6):
        await create_post(client, user_headers, f"mix {i}", published=i % 2 == 0)
    for headers in (user_headers, admin_headers):
        pages = await follow_pages(client, "/posts", params={"limit": 2}, headers=headers)
        seen = [post for page in pages for post in page]
        assert len(seen) == 3
        assert all(post["published"] for post in seen)


async def test_user_rows_are_consistent(client: httpx.AsyncClient, app: FastAPI) -> None:
    """Sanity check of the fixture that inserts users directly."""
    post_id = await insert_user_with_post(app, "direct_user", "direct post")
    async with app.state.database.sessionmaker() as session:
        user = (
            await session.execute(select(User).where(User.username == "direct_user"))
        ).scalar_one()
    assert user.role == "user"
    headers = await login(client, "direct_user")
    response = await client.get(f"/posts/{post_id}", headers=headers)
    assert response.json()["author_id"] == user.id
