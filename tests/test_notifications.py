"""Background email notifications: what is mailed to whom over a real SMTP server on loopback,
what is not mailed, and that a down or hanging mail server neither fails nor slows a request
(its failure is logged under the request's id). Without SMTP_HOST the mail is only logged."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any

import httpx
import pytest
from aiosmtpd.controller import Controller
from conftest import LiveServer, create_post, free_port, login, make_admin, register
from fastapi import FastAPI

from logging_setup import RequestIdFilter

EDITOR = "editor@example.com"
SENDER = "blog@example.com"
WAIT_SECONDS = 5.0
POLL_SECONDS = 0.02
NOTIFICATIONS_LOGGER = "blog.notifications"
# The request must not wait for the mail: with smtp_timeout_seconds=1 a request that did
# would take at least a second.
FAST_SECONDS = 0.75
# Against a hanging server on a real uvicorn, the proof is the order (answered before the mail
# timed out); the timeout is long enough that a loaded machine cannot blur that order.
HANGING_SMTP_TIMEOUT = 3.0


# --- a real SMTP server that keeps what it is sent ---------------------------------------------


@dataclass
class Mail:
    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage

    @property
    def body(self) -> str:
        content: str = self.message.get_content()
        return content


class CollectingHandler:
    """aiosmtpd handler: accepts every message and keeps its envelope."""

    def __init__(self) -> None:
        self.mails: list[Mail] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = message_from_bytes(envelope.original_content, policy=policy.default)
        assert isinstance(message, EmailMessage)
        self.mails.append(Mail(envelope.mail_from, list(envelope.rcpt_tos), message))
        return "250 Message accepted for delivery"


@dataclass
class SmtpServer:
    port: int
    handler: CollectingHandler

    @property
    def mails(self) -> list[Mail]:
        return list(self.handler.mails)

    async def wait_for(self, count: int) -> list[Mail]:
        """Bounded poll until at least `count` mails arrived (they are sent in the background)."""
        deadline = time.monotonic() + WAIT_SECONDS
        while len(self.handler.mails) < count:
            if time.monotonic() > deadline:
                pytest.fail(f"expected {count} mail(s) within {WAIT_SECONDS}s, got {self.mails}")
            await asyncio.sleep(POLL_SECONDS)
        return self.mails

    def to(self, recipient: str) -> list[Mail]:
        return [mail for mail in self.mails if recipient in mail.rcpt_tos]


@pytest.fixture
def smtp_server() -> Iterator[SmtpServer]:
    handler = CollectingHandler()
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield SmtpServer(port, handler)
    finally:
        controller.stop()


class HangingServer:
    """Accepts TCP connections and never says a word (no SMTP greeting)."""

    def __init__(self) -> None:
        self.connections = 0
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self._handlers: set[asyncio.Task[Any]] = set()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.append(writer)
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        with contextlib.suppress(ConnectionError):
            await reader.read()  # until the client gives up
        writer.close()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()
        if self._handlers:
            await asyncio.wait(self._handlers, timeout=WAIT_SECONDS)
        await self._server.wait_closed()


@pytest.fixture
async def hanging_server() -> AsyncIterator[HangingServer]:
    server = HangingServer()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


# --- helpers -----------------------------------------------------------------------------------


async def settle(app: FastAPI) -> None:
    """Let every mail the app has scheduled so far finish (bounded), before asserting that
    something was NOT sent."""
    await app.state.notifier.drain(WAIT_SECONDS)


async def wait_for_record(
    caplog: pytest.LogCaptureFixture,
    level: int,
    predicate: Callable[[logging.LogRecord], bool] = lambda record: True,
) -> logging.LogRecord:
    """Bounded poll for a record of the notifications logger at this level."""
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        for record in caplog.records:
            if (
                record.name == NOTIFICATIONS_LOGGER
                and record.levelno == level
                and predicate(record)
            ):
                return record
        if time.monotonic() > deadline:
            seen = [(r.name, r.levelname, r.getMessage()) for r in caplog.records]
            pytest.fail(f"no {logging.getLevelName(level)} record within {WAIT_SECONDS}s: {seen}")
        await asyncio.sleep(POLL_SECONDS)


def capture_notification_logs(caplog: pytest.LogCaptureFixture) -> None:
    """Capture the notifications logger from INFO, each record stamped with the request id
    current where it was logged (the filter reads request_id.request_id_var)."""
    caplog.set_level(logging.INFO, logger=NOTIFICATIONS_LOGGER)
    caplog.handler.addFilter(RequestIdFilter())


def failures(caplog: pytest.LogCaptureFixture, recipient: str) -> list[logging.LogRecord]:
    """The notification failures logged so far for mails to `recipient`."""
    return [
        record
        for record in caplog.records
        if record.name == NOTIFICATIONS_LOGGER
        and record.levelno >= logging.ERROR
        and recipient in record.getMessage()
    ]


def mentions(*needles: str) -> Callable[[logging.LogRecord], bool]:
    return lambda record: all(needle in record.getMessage() for needle in needles)


async def signed_in(
    client: httpx.AsyncClient, username: str, email: str | None = None
) -> dict[str, str]:
    await register(client, username, email=email)
    return await login(client, username)


async def comment(
    client: httpx.AsyncClient, headers: dict[str, str], post_id: int, text: str
) -> httpx.Response:
    response = await client.post(f"/posts/{post_id}/comments", json={"text": text}, headers=headers)
    assert response.status_code == 201, response.text
    return response


def mail_settings(**extra: Any) -> dict[str, Any]:
    return {"notify_email": EDITOR, "smtp_from": SENDER, **extra}


# --- mails sent over SMTP ----------------------------------------------------------------------


class TestMailsOverSmtp:
    @pytest.fixture
    def settings_overrides(self, smtp_server: SmtpServer) -> dict[str, Any]:
        return mail_settings(smtp_host="127.0.0.1", smtp_port=smtp_server.port)

    async def test_new_published_post_mails_the_editor(
        self, client: httpx.AsyncClient, smtp_server: SmtpServer
    ) -> None:
        headers = await signed_in(client, "alice")
        post = await create_post(client, headers, "Fresh news from the garden")
        [mail] = await smtp_server.wait_for(1)
        assert mail.mail_from == SENDER
        assert mail.rcpt_tos == [EDITOR]
        assert mail.message["From"] == SENDER
        assert mail.message["To"] == EDITOR
        assert "Fresh news from the garden" in mail.message["Subject"]
        assert not mail.message.is_multipart()
        assert mail.message.get_content_type() == "text/plain"
        assert "Fresh news from the garden" in mail.body
        assert f"/posts/{post['id']}" in mail.body

    async def test_each_new_post_mails_once(
        self, client: httpx.AsyncClient, app: FastAPI, smtp_server: SmtpServer
    ) -> None:
        headers = await signed_in(client, "alice")
        first = await create_post(client, headers, "First")
        second = await create_post(client, headers, "Second")
        await smtp_server.wait_for(2)
        await settle(app)
        mails = smtp_server.to(EDITOR)
        assert len(mails) == 2
        bodies = sorted(mail.body for mail in mails)
        assert any(f"/posts/{first['id']}" in body for body in bodies)
        assert any(f"/posts/{second['id']}" in body for body in bodies)

    async def test_new_draft_does_not_mail(
        self, client: httpx.AsyncClient, app: FastAPI, smtp_server: SmtpServer
    ) -> None:
        headers = await signed_in(client, "alice")
        await create_post(client, headers, "Secret draft", published=False)
        await settle(app)
        assert smtp_server.mails == []

    async def test_publishing_a_draft_mails_once(
        self, client: httpx.AsyncClient, app: FastAPI, smtp_server: SmtpServer
    ) -> None:
        headers = await signed_in(client, "alice")
        draft = await create_post(client, headers, "Soon public", published=False)
        await settle(app)
        assert smtp_server.mails == []

        response = await client.post(f"/posts/{draft['id']}/publish", headers=headers)
        assert response.status_code == 200, response.text
        assert response.json()["published"] is True
        [mail] = await smtp_server.wait_for(1)
        assert mail.rcpt_tos == [EDITOR]
        assert mail.mail_from == SENDER
        assert "Soon public" in mail.message["Subject"]
        assert "Soon public" in mail.body
        assert f"/posts/{draft['id']}" in mail.body

        # already published: publish, PATCH and PUT published=true change nothing, mail nothing
        response = await client.post(f"/posts/{draft['id']}/publish", headers=headers)
        assert response.status_code == 200, response.text
        for method in ("PATCH", "PUT"):
            response = await client.request(
                method, f"/posts/{draft['id']}", json={"published": True}, headers=headers
            )
            assert response.status_code == 200, response.text
        response = await client.patch(
            f"/posts/{draft['id']}", json={"content": "edited"}, headers=headers
        )
        assert response.status_code == 200, response.text
        await settle(app)
        assert len(smtp_server.mails) == 1

    @pytest.mark.parametrize("method", ["PATCH", "PUT"])
    async def test_updating_a_draft_to_published_mails(
        self, client: httpx.AsyncClient, app: FastAPI, smtp_server: SmtpServer, method: str
    ) -> None:
        headers = await signed_in(client, "alice")
        draft = await create_post(client, headers, "Patched public", published=False)
        response = await client.patch(
            f"/posts/{draft['id']}", json={"content": "still a draft"}, headers=headers
        )
        assert response.status_code == 200, response.text
        await settle(app)
        assert smtp_server.mails == []

        response = await client.request(
            method, f"/posts/{draft['id']}", json={"published": True}, headers=headers
        )
        assert response.status_code == 200, response.text
        assert response.json()["published"] is True
        [mail] = await smtp_server.wait_for(1)
        assert mail.rcpt_tos == [EDITOR]
        assert "Patched public" in mail.body
        assert f"/posts/{draft['id']}" in mail.body

    async def test_admin_publishing_someone_elses_draft_mails(
        self, client: httpx.AsyncClient, app: FastAPI, smtp_server: SmtpServer
    ) -> None:
        headers = await signed_in(client, "alice")
        await register(client, "root_admin")
        await make_admin(app, "root_admin")
        admin = await login(client, "root_admin")
        draft = await create_post(client, headers, "Admin published", published=False)
        response = await client.post(f"/posts/{draft['id']}/publish", headers=admin)
        assert response.status_code == 200, response.text
        [mail] = await smtp_server.wait_for(1)
        assert mail.rcpt_tos == [EDITOR]
        assert f"/posts/{draft['id']}" in mail.body

    async def test_republishing_a_published_post_does_not_mail_again(
        self, client: httpx.AsyncClient, app: FastAPI, smtp_server: SmtpServer
    ) -> None:
        headers = await signed_in(client, "alice")
        post = await create_post(client, headers, "Already out")
        await smtp_server.wait_for(1)
        response = await client.post(f"/posts/{post['id']}/publish", headers=headers)
        assert response.status_code == 200, response.text
        response = await client.patch(
            f"/posts/{post['id']}", json={"published": True}, headers=headers
        )
        assert response.status_code == 200, response.text
        await settle(app)
        assert len(smtp_server.mails) == 1

    async def test_failed_publish_does_not_mail(
        self, client: httpx.AsyncClient, app: FastAPI, smtp_server: SmtpServer
    ) -> None:
        alice = await signed_in(client, "alice")
        bob = await signed_in(client, "bob")
        draft = await create_post(client, alice, "Not yours", published=False)
        response = await client.post(f"/posts/{draft['id']}/publish", headers=bob)
        assert response.status_code == 404, response.text
        response = await client.patch(
            f"/posts/{draft['id']}",
            json={"published": True},
            headers={"If-Match": '"nope"', **alice},
        )
        assert response.status_code == 412, response.text
        await settle(app)
        assert smtp_server.mails == []

    async def test_new_comment_mails_the_post_author(
        self, client: httpx.AsyncClient, smtp_server: SmtpServer
    ) -> None:
        alice = await signed_in(client, "alice", email="Alice.Writer@Example.COM")
        bob = await signed_in(client, "bob")
        post = await create_post(client, alice, "Thoughts on tea")
        await smtp_server.wait_for(1)  # the editor's mail about the new post
        await comment(client, bob, post["id"], "Green, always.")
        await smtp_server.wait_for(2)
        [mail] = smtp_server.to("alice.writer@example.com")
        assert mail.rcpt_tos == ["alice.writer@example.com"]  # the registered (stored) address
        assert mail.mail_from == SENDER
        assert mail.message["From"] == SENDER
        assert "Thoughts on tea" in mail.message["Subject"]
        assert mail.message.get_content_type() == "text/plain"
        assert "Thoughts on tea" in mail.body
        assert len(smtp_server.to(EDITOR)) == 1

    async def test_comments_on_a_draft_by_an_admin_mail_its_author(
        self, client: httpx.AsyncClient, app: FastAPI, smtp_server: SmtpServer
    ) -> None:
        alice = await signed_in(client, "alice")
        await register(client, "root_admin")
        await make_admin(app, "root_admin")
        admin = await login(client, "root_admin")
        draft = await create_post(client, alice, "Under review", published=False)
        await comment(client, admin, draft["id"], "Please fix the intro")
        [mail] = await smtp_server.wait_for(1)
        assert mail.rcpt_tos == ["alice@example.com"]
        assert "Under review" in mail.body

    async def test_author_commenting_on_own_post_sends_no_mail(
        self, client: httpx.AsyncClient, app: FastAPI, smtp_server: SmtpServer
    ) -> None:
        alice = await signed_in(client, "alice")
        post = await create_post(client, alice, "Monologue")
        await smtp_server.wait_for(1)
        await comment(client, alice, post["id"], "Replying to myself")
        await settle(app)
        assert smtp_server.to("alice@example.com") == []
        assert len(smtp_server.mails) == 1

    async def test_every_comment_by_others_mails(
        self, client: httpx.AsyncClient, app: FastAPI, smtp_server: SmtpServer
    ) -> None:
        alice = await signed_in(client, "alice")
        bob = await signed_in(client, "bob")
        carol = await signed_in(client, "carol")
        post = await create_post(client, alice, "Popular")
        await comment(client, bob, post["id"], "one")
        await comment(client, carol, post["id"], "two")
        await comment(client, alice, post["id"], "thanks")
        await smtp_server.wait_for(3)
        await settle(app)
        assert len(smtp_server.to("alice@example.com")) == 2
        assert len(smtp_server.to(EDITOR)) == 1


class TestWithoutNotifyEmail:
    @pytest.fixture
    def settings_overrides(self, smtp_server: SmtpServer) -> dict[str, Any]:
        return {"smtp_host": "127.0.0.1", "smtp_port": smtp_server.port, "notify_email": None}

    async def test_posts_mail_no_one_but_comments_still_mail_the_author(
        self, client: httpx.AsyncClient, app: FastAPI, smtp_server: SmtpServer
    ) -> None:
        alice = await signed_in(client, "alice")
        bob = await signed_in(client, "bob")
        post = await create_post(client, alice, "Quiet post")
        await settle(app)
        assert smtp_server.mails == []
        await comment(client, bob, post["id"], "hello")
        [mail] = await smtp_server.wait_for(1)
        assert mail.rcpt_tos == ["alice@example.com"]


# --- a failing mail server never fails or slows a request --------------------------------------


class TestSmtpServerDown:
    @pytest.fixture
    def settings_overrides(self) -> dict[str, Any]:
        # a free port nobody listens on: connection refused
        return mail_settings(smtp_host="127.0.0.1", smtp_port=free_port(), smtp_timeout_seconds=1)

    async def test_new_post_succeeds_fast_and_the_failure_is_logged_with_the_request_id(
        self, client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
    ) -> None:
        capture_notification_logs(caplog)
        headers = await signed_in(client, "alice")
        started = time.perf_counter()
        response = await client.post(
            "/posts",
            json={"title": "Mail is down", "content": "but posting works"},
            headers={**headers, "X-Request-ID": "smtp-down-post-1"},
        )
        elapsed = time.perf_counter() - started
        assert response.status_code == 201, response.text
        assert elapsed < FAST_SECONDS, elapsed
        assert response.headers["x-request-id"] == "smtp-down-post-1"

        record = await wait_for_record(caplog, logging.ERROR, mentions(EDITOR))
        assert record.request_id == "smtp-down-post-1"  # type: ignore[attr-defined]
        # the post is there all the same
        got = await client.get(f"/posts/{response.json()['id']}")
        assert got.status_code == 200

    async def test_new_comment_succeeds_and_the_failure_carries_a_generated_request_id(
        self, client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
    ) -> None:
        alice = await signed_in(client, "alice")
        bob = await signed_in(client, "bob")
        post = await create_post(client, alice, "Comment while mail is down")
        capture_notification_logs(caplog)
        started = time.perf_counter()
        response = await comment(client, bob, post["id"], "still works")
        elapsed = time.perf_counter() - started
        assert elapsed < FAST_SECONDS, elapsed
        request_id = response.headers["x-request-id"]
        assert request_id

        record = await wait_for_record(caplog, logging.ERROR, mentions("alice@example.com"))
        assert record.request_id == request_id  # type: ignore[attr-defined]
        listed = await client.get(f"/posts/{post['id']}/comments")
        assert [c["text"] for c in listed.json()] == ["still works"]

    async def test_publishing_succeeds_and_the_failure_is_logged(
        self, client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
    ) -> None:
        capture_notification_logs(caplog)
        headers = await signed_in(client, "alice")
        draft = await create_post(client, headers, "Publish while down", published=False)
        response = await client.post(
            f"/posts/{draft['id']}/publish",
            headers={**headers, "X-Request-ID": "smtp-down-publish"},
        )
        assert response.status_code == 200, response.text
        record = await wait_for_record(caplog, logging.ERROR, mentions(EDITOR))
        assert record.request_id == "smtp-down-publish"  # type: ignore[attr-defined]


class TestSmtpServerHanging:
    @pytest.fixture
    def settings_overrides(self, hanging_server: HangingServer) -> dict[str, Any]:
        return mail_settings(
            smtp_host="127.0.0.1",
            smtp_port=hanging_server.port,
            smtp_timeout_seconds=HANGING_SMTP_TIMEOUT,
        )

    async def test_requests_are_answered_before_the_mail_times_out(
        self,
        live_server: LiveServer,
        hanging_server: HangingServer,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """Against a real server: the response is sent while the mail still waits for a
        greeting that never comes; the timeout is logged later under the request's id."""
        capture_notification_logs(caplog)
        async with httpx.AsyncClient(base_url=live_server.http_url, timeout=10) as http:
            alice = await signed_in(http, "alice")
            bob = await signed_in(http, "bob")

            wall_started = time.time()
            started = time.perf_counter()
            response = await http.post(
                "/posts",
                json={"title": "Slow mail", "content": "fast answer"},
                headers={**alice, "X-Request-ID": "hanging-post"},
            )
            elapsed = time.perf_counter() - started
            assert response.status_code == 201, response.text
            # answered while the mail still waits (independent of machine load) ...
            assert failures(caplog, EDITOR) == []
            # ... and before the SMTP timeout
            assert elapsed < HANGING_SMTP_TIMEOUT, elapsed
            post_id = response.json()["id"]

            started = time.perf_counter()
            response = await http.post(
                f"/posts/{post_id}/comments",
                json={"text": "quick"},
                headers={**bob, "X-Request-ID": "hanging-comment"},
            )
            elapsed = time.perf_counter() - started
            assert response.status_code == 201, response.text
            assert failures(caplog, "alice@example.com") == []
            assert elapsed < HANGING_SMTP_TIMEOUT, elapsed

            post_failure = await wait_for_record(caplog, logging.ERROR, mentions(EDITOR))
            comment_failure = await wait_for_record(
                caplog, logging.ERROR, mentions("alice@example.com")
            )
        assert post_failure.request_id == "hanging-post"  # type: ignore[attr-defined]
        assert comment_failure.request_id == "hanging-comment"  # type: ignore[attr-defined]
        # the mails really reached the hanging server and waited out the timeout
        assert hanging_server.connections >= 2
        assert post_failure.created - wall_started >= HANGING_SMTP_TIMEOUT - 0.1


# --- no SMTP_HOST: the mail is logged ----------------------------------------------------------


class TestWithoutSmtpHost:
    @pytest.fixture
    def settings_overrides(self) -> dict[str, Any]:
        return mail_settings(smtp_host=None)

    async def test_mails_are_logged_instead_of_sent(
        self, client: httpx.AsyncClient, app: FastAPI, caplog: pytest.LogCaptureFixture
    ) -> None:
        capture_notification_logs(caplog)
        alice = await signed_in(client, "alice")
        bob = await signed_in(client, "bob")
        response = await client.post(
            "/posts",
            json={"title": "Logged news", "content": "body"},
            headers={**alice, "X-Request-ID": "no-smtp-post"},
        )
        assert response.status_code == 201, response.text
        record = await wait_for_record(caplog, logging.INFO, mentions(EDITOR, "Logged news"))
        assert record.request_id == "no-smtp-post"  # type: ignore[attr-defined]

        await comment(client, bob, response.json()["id"], "noted")
        await wait_for_record(caplog, logging.INFO, mentions("alice@example.com", "Logged news"))

        await create_post(client, alice, "Logged draft", published=False)
        await settle(app)
        notifications = [r for r in caplog.records if r.name == NOTIFICATIONS_LOGGER]
        assert not any("Logged draft" in r.getMessage() for r in notifications)
        assert all(r.levelno < logging.WARNING for r in notifications)
