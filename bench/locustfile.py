"""The load of `make soak` and of `make scale-test`'s rolling restart, on Locust (headless).

Locust runs the virtual users, spreads the weighted tasks, records every call and prints the
percentiles; what is ours is what the calls check, beyond their status:

- a read right after a write (a create, an edit) answers what was written: never stale;
- an `Idempotency-Key` sent again with the same body replays the first answer byte for byte;
- every comment written on a watched post while a WebSocket on that post was open (from before
  the request until after its answer) reaches that socket: no missed live event;
- every create that was answered 201 is listed in the report, for the caller to look for in the
  database afterwards (acknowledged writes lost).

A call answering 5xx, or a status it cannot legitimately answer, is a Locust failure. The caller
(bench/soak.py, tests/test_scale.py) prepares the accounts and the watched posts and passes them
in a JSON file, LOAD_SETUP: `{"accounts": [{"username", "token"}], "watched": [post ids],
"watched_titles": [their titles], "readable": [post ids never deleted]}`. At the end this file
writes the checks' figures to LOAD_REPORT (JSON), and the exit status is 1 on any failure or
failed check.

    locust -f bench/locustfile.py --headless --users 20 --spawn-rate 20 --run-time 60s \\
        --host http://127.0.0.1:8000 BlogUser LiveUser
"""

from __future__ import annotations

import itertools
import json
import os
import random
import re
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import websocket  # websocket-client, which Locust brings: gevent-friendly
from locust import FastHttpUser, User, between, events, task
from locust.env import Environment

DELIVERY_MARGIN = 1.0  # seconds a socket must stay open after a comment's answer to expect it
SEARCH_WORDS = ("python", "database", "async", "testing", "nothing-matches-this")
NEXT_LINK = re.compile(r'<([^>]+)>;\s*rel="next"')
SOCKET_LIFETIME = (20.0, 60.0)  # a live client reconnects after this long, as browsers come and go


@dataclass
class Comment:
    post_id: int
    comment_id: int
    started: float
    answered: float


@dataclass
class Session:
    post_id: int
    opened: float
    closed: float = float("inf")
    comment_ids: set[int] = field(default_factory=set)


@dataclass
class Checks:
    """What the tasks found, beyond Locust's own statistics."""

    fresh_reads: int = 0
    stale_reads: list[str] = field(default_factory=list)
    replays: int = 0
    replay_mismatches: list[str] = field(default_factory=list)
    acknowledged: set[int] = field(default_factory=set)
    deleted: set[int] = field(default_factory=set)
    comments: list[Comment] = field(default_factory=list)
    sessions: list[Session] = field(default_factory=list)
    live_events: int = 0
    resent: int = 0
    socket_closes: dict[str, int] = field(default_factory=dict)

    def missed_events(self) -> tuple[int, int]:
        """(expected, missed) comment events over the sockets that were open for them."""
        expected = missed = 0
        for session in self.sessions:
            for comment in self.comments:
                if (
                    comment.post_id == session.post_id
                    and session.opened <= comment.started
                    and comment.answered <= session.closed - DELIVERY_MARGIN
                ):
                    expected += 1
                    missed += comment.comment_id not in session.comment_ids
        return expected, missed

    def report(self) -> dict[str, Any]:
        expected, missed = self.missed_events()
        return {
            "fresh_reads": self.fresh_reads,
            "stale_reads": len(self.stale_reads),
            "stale_examples": self.stale_reads[:5],
            "replays": self.replays,
            "replay_mismatches": len(self.replay_mismatches),
            "replay_examples": self.replay_mismatches[:5],
            "acknowledged": sorted(self.acknowledged - self.deleted),
            "resent_creates": self.resent,
            "live_events": self.live_events,
            "comment_events_expected": expected,
            "comment_events_missed": missed,
            "socket_closes": self.socket_closes,
        }

    def failed(self) -> bool:
        return bool(self.stale_reads or self.replay_mismatches or self.missed_events()[1])


checks = Checks()
setup: dict[str, Any] = {"accounts": [], "watched": [], "readable": []}
accounts = itertools.count()


@events.init.add_listener
def load_setup(environment: Environment, **_kwargs: Any) -> None:
    path = os.environ.get("LOAD_SETUP")
    if path:
        setup.update(json.loads(Path(path).read_text()))


@events.quitting.add_listener
def write_report(environment: Environment, **_kwargs: Any) -> None:
    report = checks.report()
    stats = environment.stats.total
    kinds = {"server_errors": 0, "unexpected": 0, "transport_errors": 0}
    for error in environment.stats.errors.values():
        text = str(error.error)
        kind = "server_errors" if "5xx:" in text else "unexpected" if "unexpected:" in text else ""
        kinds[kind or "transport_errors"] += error.occurrences
    report.update(
        requests=stats.num_requests,
        failures=stats.num_failures,
        **kinds,
        p50_ms=stats.get_response_time_percentile(0.5),
        p99_ms=stats.get_response_time_percentile(0.99),
        rps=stats.total_rps,
        errors={str(e.error)[:200]: e.occurrences for e in environment.stats.errors.values()},
    )
    path = os.environ.get("LOAD_REPORT")
    if path:
        with open(path, "w") as handle:
            json.dump(report, handle, indent=2)
    if checks.failed() or stats.num_failures:
        environment.process_exit_code = 1


class BlogUser(FastHttpUser):
    """A signed-in author: reads, lists, creates (keyed), edits, comments on watched posts."""

    wait_time = between(0.05, 0.3)
    # A read on a kept-alive connection that the server side closed (an nginx reload, a
    # restart) is sent again on a new one, as HTTP clients do; geventhttpclient does so for
    # idempotent methods only (RFC 9110 9.2.2). Creates do it themselves, with their key.
    max_retries = 1

    def on_start(self) -> None:
        account = setup["accounts"][next(accounts) % len(setup["accounts"])]
        self.auth = {"Authorization": f"Bearer {account['token']}"}
        self.mine: list[int] = []
        self.etags: dict[int, str] = {}

    def expect(self, name: str, response: Any, *statuses: int) -> bool:
        """Locust's success or failure for this answer: 5xx and unexpected statuses fail."""
        if response.status_code >= 500:
            response.failure(f"5xx: {name} answered {response.status_code}")
            return False
        if response.status_code not in statuses:
            response.failure(f"unexpected: {name} answered {response.status_code}")
            return False
        response.success()
        return True

    @task(5)
    def list_posts(self) -> None:
        with self.client.get("/posts?limit=10", name="list", catch_response=True) as response:
            self.expect("list", response, 200)

    @task(5)
    def read_post(self) -> None:
        candidates = setup["readable"] or self.mine
        if not candidates:
            return
        post_id = random.choice(candidates)
        headers = {}
        etag = self.etags.get(post_id)
        if etag and random.random() < 0.5:
            headers["If-None-Match"] = etag
        with self.client.get(
            f"/posts/{post_id}", headers=headers, name="read", catch_response=True
        ) as response:
            fresh = self.expect("read", response, 200, 304) and response.status_code == 200
            if fresh and len(self.etags) < 200:
                self.etags[post_id] = response.headers.get("ETag", "")

    @task(3)
    def list_filtered(self) -> None:
        params = random.choice(
            [
                {"author": random.choice(setup["accounts"])["username"]},
                {"q": random.choice(SEARCH_WORDS)},
                {"sort": "title", "limit": "20"},
                {"sort": "-updated_at"},
                {"count": "true", "limit": "5"},
                {"skip": str(random.randint(0, 200)), "limit": "10"},
            ]
        )
        with self.client.get(
            "/posts", params=params, name="list (filters)", catch_response=True
        ) as response:
            self.expect("list (filters)", response, 200)

    @task(2)
    def list_next_pages(self) -> None:
        """A listing followed through its `Link: rel="next"` cursors."""
        sort = random.choice(["-created_at", "created_at", "title"])
        path = f"/posts?limit=10&sort={sort}"
        for _ in range(random.randint(2, 4)):
            with self.client.get(path, name="list (cursor)", catch_response=True) as response:
                if not self.expect("list (cursor)", response, 200):
                    return
                match = NEXT_LINK.search(response.headers.get("Link", ""))
            if match is None:
                return
            path = match.group(1)

    @task(2)
    def list_comments(self) -> None:
        candidates = setup["readable"] or self.mine
        if not candidates:
            return
        post_id = random.choice(candidates)
        with self.client.get(
            f"/posts/{post_id}/comments?limit=10", name="comments", catch_response=True
        ) as response:
            self.expect("comments", response, 200)

    @task(1)
    def read_me(self) -> None:
        with self.client.get(
            "/users/me", headers=self.auth, name="me", catch_response=True
        ) as response:
            self.expect("me", response, 200)

    @task(1)
    def taken_title(self) -> None:
        """A client error the service must answer as one: a title taken (case-insensitively)."""
        if not setup.get("watched_titles"):
            return
        title = random.choice(setup["watched_titles"]).upper()
        with self.client.post(
            "/posts",
            json={"title": title, "content": "a clash"},
            headers=self.auth,
            name="create (taken title)",
            catch_response=True,
        ) as response:
            self.expect("create (taken title)", response, 409)

    @task(1)
    def bad_cursor(self) -> None:
        with self.client.get(
            "/posts?cursor=x!", name="list (bad cursor)", catch_response=True
        ) as response:
            self.expect("list (bad cursor)", response, 422)

    @task(3)
    def create_post(self) -> None:
        key = secrets.token_hex(8)
        body = {"title": f"Load {key}", "content": f"written {key}", "published": True}
        headers = {**self.auth, "Idempotency-Key": key}
        for attempt in range(2):
            with self.client.post(
                "/posts", json=body, headers=headers, name="create", catch_response=True
            ) as response:
                if response.status_code == 0 and attempt == 0:  # no answer: send it again
                    checks.resent += 1
                    response.success()
                    continue
                if not self.expect("create", response, 201):
                    return
                first = response.text
                post_id = response.json()["id"]
                break
        else:
            return
        checks.acknowledged.add(post_id)
        self.mine.append(post_id)
        self.check_fresh(post_id, body["content"])
        with self.client.post(
            "/posts", json=body, headers=headers, name="create (replay)", catch_response=True
        ) as replay:
            if not self.expect("create (replay)", replay, 201):
                return
            checks.replays += 1
            if replay.text != first or replay.headers.get("Idempotent-Replayed") != "true":
                checks.replay_mismatches.append(f"post {post_id}: {replay.text[:200]}")

    @task(2)
    def edit_post(self) -> None:
        if not self.mine:
            return
        post_id = random.choice(self.mine)
        content = f"edited {secrets.token_hex(6)}"
        with self.client.get(f"/posts/{post_id}", name="read", catch_response=True) as current:
            if not self.expect("read", current, 200):
                return
            etag = current.headers["ETag"]
        with self.client.patch(
            f"/posts/{post_id}",
            json={"content": content},
            headers={**self.auth, "If-Match": etag},
            name="edit",
            catch_response=True,
        ) as response:
            # 412: another of this user's tasks changed it in between (not here: one at a time).
            if not self.expect("edit", response, 200):
                return
        self.check_fresh(post_id, content)

    def check_fresh(self, post_id: int, content: str) -> None:
        with self.client.get(
            f"/posts/{post_id}", name="read after write", catch_response=True
        ) as response:
            if not self.expect("read after write", response, 200):
                return
            checks.fresh_reads += 1
            if response.json()["content"] != content:
                checks.stale_reads.append(f"post {post_id}: {response.text[:200]}")

    @task(2)
    def comment_on_watched(self) -> None:
        if not setup["watched"]:
            return
        post_id = random.choice(setup["watched"])
        started = time.monotonic()
        with self.client.post(
            f"/posts/{post_id}/comments",
            json={"text": f"comment {secrets.token_hex(4)}"},
            headers=self.auth,
            name="comment",
            catch_response=True,
        ) as response:
            if not self.expect("comment", response, 201):
                return
            comment_id = response.json()["id"]
        checks.comments.append(Comment(post_id, comment_id, started, time.monotonic()))

    @task(1)
    def delete_post(self) -> None:
        if len(self.mine) < 5:
            return
        post_id = self.mine.pop(0)
        # No longer a write that must be found afterwards, from the moment it may be deleted.
        checks.deleted.add(post_id)
        with self.client.delete(
            f"/posts/{post_id}", headers=self.auth, name="delete", catch_response=True
        ) as response:
            self.expect("delete", response, 204)


class LiveUser(User):
    """A WebSocket client on a watched post, reconnecting now and then and whenever the server
    says goodbye (1001 at a shutdown)."""

    fixed_count = int(os.environ.get("LOAD_LIVE_USERS", "4"))
    wait_time = between(0.1, 0.5)

    @task
    def watch(self) -> None:
        if not setup["watched"]:
            return
        post_id = random.choice(setup["watched"])
        host = urlsplit(self.host)
        url = f"ws://{host.netloc}/ws/posts/{post_id}"
        try:
            socket = websocket.create_connection(url, timeout=10)
        except (OSError, websocket.WebSocketException) as exc:
            self.count_close(f"connect failed: {type(exc).__name__}")
            return
        session = Session(post_id, time.monotonic())
        checks.sessions.append(session)
        until = time.monotonic() + random.uniform(*SOCKET_LIFETIME)
        socket.settimeout(0.5)
        try:
            while time.monotonic() < until:
                try:
                    opcode, data = socket.recv_data()
                except websocket.WebSocketTimeoutException:
                    continue
                if opcode == websocket.ABNF.OPCODE_CLOSE:
                    code = int.from_bytes(data[:2], "big") if len(data) >= 2 else 1005
                    self.count_close(str(code))
                    return
                checks.live_events += 1
                event = json.loads(data)
                if event.get("type") == "comment_created":
                    session.comment_ids.add(event["comment"]["id"])
        except (OSError, websocket.WebSocketException) as exc:
            self.count_close(f"dropped: {type(exc).__name__}")
        finally:
            session.closed = time.monotonic()
            socket.close()

    @staticmethod
    def count_close(kind: str) -> None:
        checks.socket_closes[kind] = checks.socket_closes.get(kind, 0) + 1
