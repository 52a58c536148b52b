"""Email notifications, sent in the background so a slow or failing mail server never
delays or fails a request: over SMTP when SMTP_HOST is set, logged otherwise."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from email.message import EmailMessage
from typing import Any

import aiosmtplib

from config import Settings

logger = logging.getLogger("blog.notifications")


class Notifier:
    """Schedules mails as independent tasks and keeps them referenced until they finish."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._tasks: set[asyncio.Task[None]] = set()

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coroutine)  # copies the context: logs keep the request id
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def post_published(self, title: str, post_id: int) -> None:
        """A new published post, or a draft just published: tell NOTIFY_EMAIL."""
        if self.settings.notify_email:
            self._spawn(
                self.send(
                    self.settings.notify_email,
                    f"New post: {title}",
                    f"A new post was published: {title}\n\n/posts/{post_id}\n",
                )
            )

    def comment_created(
        self, recipient: str, post_title: str, post_id: int, commenter: str, text: str
    ) -> None:
        """A new comment: tell the post's author."""
        self._spawn(
            self.send(
                recipient,
                f"New comment on {post_title}",
                f"{commenter} commented on your post {post_title}:\n\n{text}\n\n"
                f"/posts/{post_id}/comments\n",
            )
        )

    async def send(self, recipient: str, subject: str, body: str) -> None:
        message = EmailMessage()
        message["From"] = self.settings.smtp_from
        message["To"] = recipient
        message["Subject"] = " ".join(subject.split())  # a title may hold line breaks
        message.set_content(body)
        if not self.settings.smtp_host:
            logger.info("mail (SMTP_HOST unset) to=%s subject=%s", recipient, subject)
            return
        use_login = self.settings.smtp_username is not None
        try:
            await aiosmtplib.send(
                message,
                hostname=self.settings.smtp_host,
                port=self.settings.smtp_port,
                username=self.settings.smtp_username,
                password=self.settings.smtp_password,
                start_tls=True if use_login else None,
                timeout=self.settings.smtp_timeout_seconds,
            )
            logger.info("mail sent to=%s subject=%s", recipient, subject)
        except Exception as exc:  # never let a mail failure escape into the service
            logger.error("mail to %s failed: %s: %s", recipient, type(exc).__name__, exc)

    async def drain(self, grace_seconds: float) -> None:
        """Give pending mails a moment at shutdown."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=grace_seconds)
