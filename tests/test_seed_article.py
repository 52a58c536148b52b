"""The seed article's own three examples, adapted only by adding a bearer token."""

import httpx


async def test_create_post(client: httpx.AsyncClient, user_headers: dict[str, str]) -> None:
    response = await client.post(
        "/posts",
        json={"title": "Test Post", "content": "This is a test post"},
        headers=user_headers,
    )
    assert response.status_code == 201
    assert response.json()["title"] == "Test Post"


async def test_get_nonexistent_post(client: httpx.AsyncClient) -> None:
    response = await client.get("/posts/99999")
    assert response.status_code == 404


async def test_list_posts(client: httpx.AsyncClient) -> None:
    response = await client.get("/posts?skip=0&limit=10")
    assert response.status_code == 200
    assert isinstance(response.json(), list)
