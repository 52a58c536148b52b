"""Operator commands: `migrate`, `create-user` and `seed-demo`.

    python manage.py migrate
    python manage.py create-user --username alice --email alice@example.com [--admin]
    python manage.py seed-demo --users 1000 --posts 100000 --comments 200000

Settings come from the environment and `.env` (config.py), exactly as for the service. A
failure the operator can fix (unreachable database, invalid input, taken name) is one
`error: ...` line on stderr and exit code 1, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import itertools
import math
import os
import random
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from pydantic import ValidationError
from sqlalchemy import func, insert, inspect, select, text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import DBAPIError, IntegrityError, SQLAlchemyError

import models
from config import ConfigError, Settings, get_settings
from database import Database
from models import Post, User
from schemas import UserCreate

if TYPE_CHECKING:
    from alembic.config import Config as AlembicConfig

# Alembic, crud (FastAPI) and security (argon2) are imported by the commands that use them:
# each costs a noticeable part of a second at start-up.

ROOT = Path(__file__).resolve().parent
CONNECT_TIMEOUT_SECONDS = 10.0
DEFAULT_DEMO_PASSWORD = "demo-password"
DEFAULT_JOBS = max(1, min(4, os.cpu_count() or 1))
DEMO_USER_PATTERN = re.compile(r"^demo_user_(\d+)$")
TITLE_NUMBER = re.compile(r"\(#(\d+)\)$")


class CommandError(Exception):
    """A failure the operator can act on: printed as one `error: ...` line, exit code 1."""


# --- shared helpers --------------------------------------------------------------------------


def load_settings() -> Settings:
    try:
        return get_settings()
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in err['loc']).upper() or 'settings'}: {err['msg']}"
            for err in exc.errors()
        )
        raise CommandError(f"invalid configuration: {problems}") from None
    except ConfigError as exc:
        raise CommandError(f"invalid configuration: {exc}") from None


def safe_url(url: str) -> str:
    """The database URL without its password, fit for messages and logs."""
    try:
        # URL.set(password=None) means "unchanged"; the named tuple's _replace drops it.
        return make_url(url)._replace(password=None).render_as_string(hide_password=False)
    except Exception:
        return "<unparsable URL>"


def describe(exc: BaseException) -> str:
    """The first line of what went wrong, without SQLAlchemy's statement and links."""
    if isinstance(exc, TimeoutError):
        return f"no answer within {CONNECT_TIMEOUT_SECONDS:g} seconds"
    if isinstance(exc, DBAPIError) and exc.orig is not None:
        exc = exc.orig
    message = str(exc).strip()
    first_line = message.splitlines()[0] if message else ""
    return first_line or type(exc).__name__


def unreachable(settings: Settings, exc: BaseException) -> CommandError:
    return CommandError(
        f"cannot reach the database at {safe_url(settings.database_url)}: {describe(exc)}"
    )


def open_database(settings: Settings) -> Database:
    try:
        return Database(settings)
    except OSError as exc:  # e.g. the SQLite file's directory cannot be created
        raise unreachable(settings, exc) from None


async def ping(database: Database, settings: Settings) -> None:
    try:
        await asyncio.wait_for(database.ping(), CONNECT_TIMEOUT_SECONDS)
    except Exception as exc:
        raise unreachable(settings, exc) from None


async def check_reachable(settings: Settings, *tables: str) -> None:
    """Fail early (before a password prompt, say) when the database or its tables are missing."""
    database = open_database(settings)
    try:
        await ping(database, settings)
        await require_tables(database, *tables)
    finally:
        await database.dispose()


async def require_tables(database: Database, *tables: str) -> None:
    def missing(connection: Connection) -> list[str]:
        inspector = inspect(connection)
        return [name for name in tables if not inspector.has_table(name)]

    async with database.engine.connect() as connection:
        absent = await connection.run_sync(missing)
    if absent:
        raise CommandError(
            f"the database has no table {', '.join(absent)}; run `python manage.py migrate` first"
        )


def validation_message(exc: ValidationError) -> str:
    return "; ".join(
        f"invalid {'.'.join(str(part) for part in err['loc']) or 'input'}: {err['msg']}"
        for err in exc.errors()
    )


# --- migrate ---------------------------------------------------------------------------------


def alembic_config(database_url: str) -> AlembicConfig:
    from alembic.config import Config as AlembicConfig

    config = AlembicConfig(str(ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(ROOT / "alembic"))
    config.attributes["database_url"] = database_url
    return config


def cmd_migrate(_args: argparse.Namespace) -> int:
    from alembic.script import ScriptDirectory

    from alembic import command

    settings = load_settings()
    asyncio.run(check_reachable(settings))
    config = alembic_config(settings.database_url)
    try:
        command.upgrade(config, "head")
    except (OSError, TimeoutError) as exc:
        raise unreachable(settings, exc) from None
    except DBAPIError as exc:
        if exc.connection_invalidated or isinstance(exc.orig, OSError):
            raise unreachable(settings, exc) from None
        raise
    head = ScriptDirectory.from_config(config).get_current_head()
    print(f"database {safe_url(settings.database_url)} is at revision {head}")
    return 0


# --- create-user -----------------------------------------------------------------------------


def read_password(from_stdin: bool, stdin: TextIO) -> str:
    if from_stdin:
        return stdin.read().rstrip("\r\n")
    try:
        password = getpass.getpass("Password: ")
        again = getpass.getpass("Password (again): ")
    except (EOFError, KeyboardInterrupt):
        raise CommandError("no password given") from None
    if password != again:
        raise CommandError("the passwords do not match")
    return password


async def create_user(settings: Settings, data: UserCreate, role: str) -> User:
    import crud
    from errors import EmailTaken, UsernameTaken

    database = open_database(settings)
    try:
        await ping(database, settings)
        await require_tables(database, "users")
        async with database.sessionmaker() as session:
            try:
                return await crud.create_user(session, data, role=role)
            except UsernameTaken:
                raise CommandError(f"username {data.username!r} is already taken") from None
            except EmailTaken:
                raise CommandError(f"email {data.email!r} is already registered") from None
    finally:
        await database.dispose()


def cmd_create_user(args: argparse.Namespace) -> int:
    # Check what can be checked before asking for a password.
    try:
        UserCreate(username=args.username, email=args.email, password="x" * 8)
    except ValidationError as exc:
        raise CommandError(validation_message(exc)) from None
    settings = load_settings()
    asyncio.run(check_reachable(settings, "users"))
    password = read_password(args.password_stdin, sys.stdin)
    try:
        data = UserCreate(username=args.username, email=args.email, password=password)
    except ValidationError as exc:
        raise CommandError(validation_message(exc)) from None
    role = "admin" if args.admin else "user"
    user = asyncio.run(create_user(settings, data, role))
    print(f"created {role} {user.username} <{user.email}> (id {user.id})")
    return 0


# --- seed-demo -------------------------------------------------------------------------------

# Post text mixes three vocabularies. Each post picks a few topic words (TECH_WORDS, drawn with
# weight 1/sqrt(rank), so "python" is a topic of about one post in five and the last words of
# the list of about one in fifty: a spread of selectivities for `q` benchmarks) and repeats
# them among common words and stop words (which full-text search ignores).
_TECH_TEXT = """
python postgresql database api performance async cache query testing docker security redis
index server latency deployment fastapi sqlalchemy migration schema monitoring logging
metrics kubernetes linux rust javascript typescript golang benchmark profiling threads
queue worker websocket protocol endpoint authentication authorization token cookie json
parser compiler interpreter runtime garbage allocation pointer module package dependency
upgrade rollback transaction deadlock replica shard partition backup snapshot storage
filesystem buffer pipeline scheduler cron timeout retry backoff throughput bandwidth
balancer proxy gateway router middleware decorator generator iterator coroutine typing
linter formatter refactoring monolith microservice helm terraform cloud kernel syscall
terminal shell editor pytest asyncio numpy pandas pydantic django flask sqlite kafka nginx
git github graphql grpc oauth jwt tls http unicode regex closures recursion observability
tracing incident postmortem runbook pagination idempotency cursor vacuum analyzer planner
"""
_COMMON_TEXT = """
time team code data system service user request example function model error release
project library framework feature debugging response stream client pattern session engineer
product build review backend frontend container cluster process event message header payload
object class method version lock restore volume disk file job batch load handler annotation
legacy instance machine region zone script keyboard laptop coffee morning weekend conference
talk slides notebook experiment hypothesis result chart dashboard alert outage pager habit
career mentor interview hiring onboarding documentation tutorial guide lesson mistake success
failure story journey today yesterday tomorrow simple complex fast slow reliable fragile
elegant pragmatic careful quick modern practical hidden surprising common rare small large
tiny huge first last better worse good bad new old easy hard clear honest boring useful
week month year day hour minute second step change problem solution idea question answer
reason way thing part place case point fact number group people customer manager colleague
work start finish learn teach read write run ship fix break measure compare improve remove
"""
_STOP_TEXT = """
the a an and or but of to in on for with at by from as is are was were be been it this that
these those we you they our your their i my not no so if then than when while because about
into over after before just also very more most some any all can will would should could
may might do does did have has had
"""
TECH_WORDS = tuple(_TECH_TEXT.split())
COMMON_WORDS = tuple(_COMMON_TEXT.split())
STOP_WORDS = tuple(_STOP_TEXT.split())
TOPIC_SLOTS = 6  # topic words per post, at most
TEXT_POOL_SIZE = 5_000  # paragraphs, comments and title stems to draw from

TITLE_TEMPLATES = (
    "How to {verb} {noun} with {tech}",
    "{n} lessons from {gerund} {noun} in {tech}",
    "The case for {adjective} {noun}",
    "A {adjective} guide to {tech} {noun}",
    "{gerund} {noun}: what we learned",
    "The {adjective} {noun} problem",
    "Notes on {tech} and {noun}",
    "{tech} {noun} in practice",
    "Stop {gerund} your {noun}",
    "From {noun} to {noun}: a {tech} story",
    "What I wish I knew about {tech} {noun}",
    "{n} {adjective} ways to {verb} your {noun}",
)
TITLE_VERBS = (
    "debug",
    "scale",
    "test",
    "profile",
    "cache",
    "secure",
    "monitor",
    "deploy",
    "refactor",
    "migrate",
    "design",
    "speed up",
    "document",
    "simplify",
)
_GERUNDS = """testing scaling debugging profiling caching deploying refactoring migrating
designing monitoring benchmarking shipping rewriting tuning"""
_TECHS = """Python PostgreSQL FastAPI asyncio Redis Docker SQLAlchemy Pydantic Kubernetes Linux
Rust Go TypeScript SQLite Kafka nginx pytest Git"""
_NOUNS = """cache queries database API tests deployments workers queues indexes migrations logs
metrics services sessions tokens schemas pipelines containers endpoints benchmarks"""
_ADJECTIVES = """practical simple surprising hidden reliable modern pragmatic fast careful honest
boring complete gentle"""
TITLE_GERUNDS = tuple(_GERUNDS.split())
TITLE_TECHS = tuple(_TECHS.split())
TITLE_NOUNS = tuple(_NOUNS.split())
TITLE_ADJECTIVES = tuple(_ADJECTIVES.split())


class Progress:
    """A bar on stderr when it is a terminal; one summary line per phase otherwise."""

    WIDTH = 30

    def __init__(self, label: str, total: int, stream: TextIO) -> None:
        self.label = label
        self.total = total
        self.stream = stream
        self.tty = stream.isatty()
        self.done = 0
        self.started = time.perf_counter()
        if self.tty:
            self._draw()

    def advance(self, count: int) -> None:
        self.done += count
        if self.tty:
            self._draw()

    def _draw(self) -> None:
        fraction = self.done / self.total if self.total else 1.0
        filled = int(self.WIDTH * fraction)
        bar = "#" * filled + "." * (self.WIDTH - filled)
        elapsed = time.perf_counter() - self.started
        self.stream.write(
            f"\r{self.label:<9}[{bar}] {fraction:4.0%} {self.done}/{self.total} {elapsed:5.1f}s"
        )
        self.stream.flush()

    def finish(self, note: str = "") -> None:
        elapsed = time.perf_counter() - self.started
        if self.tty:
            self._draw()
            self.stream.write("\n")
        else:
            suffix = f" ({note})" if note else ""
            self.stream.write(f"{self.label}: {self.done} inserted in {elapsed:.1f}s{suffix}\n")
        self.stream.flush()


class TextMaker:
    """Realistic-looking titles, posts and comments from the built-in vocabularies.

    Pools of title stems and of paragraphs (over stop words, common words and placeholders for
    topic words) are made once; a post joins a few pooled paragraphs and fills in its own topic
    words with `str.replace`, which keeps 100,000 posts down to seconds of generation.
    """

    def __init__(self, rng: random.Random, pool_size: int = TEXT_POOL_SIZE) -> None:
        self.rng = rng
        self.tech_cum_weights = list(
            itertools.accumulate(1.0 / math.sqrt(rank + 1) for rank in range(len(TECH_WORDS)))
        )
        # Private-use characters stand for the post's topic words; never first in a sentence.
        self.slots = tuple(chr(0xE000 + index) for index in range(TOPIC_SLOTS))
        starters = STOP_WORDS + COMMON_WORDS
        population = starters + self.slots
        # About 40% stop words, 45% common words and 15% topic words.
        cum_weights = list(
            itertools.accumulate(
                [0.40 / len(STOP_WORDS)] * len(STOP_WORDS)
                + [0.45 / len(COMMON_WORDS)] * len(COMMON_WORDS)
                + [0.15 / TOPIC_SLOTS] * TOPIC_SLOTS
            )
        )

        def sentence() -> str:
            words = rng.choices(population, cum_weights=cum_weights, k=rng.randint(5, 15))
            first = rng.choice(starters).capitalize()
            return " ".join([first, *words]) + rng.choice("......!?")

        self.paragraphs = [
            " ".join(sentence() for _ in range(rng.randint(2, 6))) for _ in range(pool_size)
        ]
        self.comments = [
            " ".join(sentence() for _ in range(rng.randint(1, 3)))[:500].rstrip()
            for _ in range(pool_size)
        ]
        self.title_stems = [self._title_stem() for _ in range(pool_size)]
        self.replacements: list[tuple[str, str]] = []

    def _title_stem(self) -> str:
        rng = self.rng
        title = rng.choice(TITLE_TEMPLATES)
        # str.format would fill every {noun} with the same word; replace them one by one.
        for placeholder, choices in (
            ("{verb}", TITLE_VERBS),
            ("{gerund}", TITLE_GERUNDS),
            ("{tech}", TITLE_TECHS),
            ("{noun}", TITLE_NOUNS),
            ("{adjective}", TITLE_ADJECTIVES),
        ):
            while placeholder in title:
                title = title.replace(placeholder, rng.choice(choices), 1)
        title = title.replace("{n}", str(rng.randint(3, 12)))
        return title[:1].upper() + title[1:]

    def _fill_topics(self, text_: str) -> str:
        """Replace the slots with 2 to TOPIC_SLOTS distinct topic words, drawn anew."""
        count = self.rng.randint(2, TOPIC_SLOTS)
        chosen = self.rng.choices(TECH_WORDS, cum_weights=self.tech_cum_weights, k=count)
        for index, slot in enumerate(self.slots):
            text_ = text_.replace(slot, chosen[index % count])
        return text_

    def title(self, number: int) -> str:
        # Titles are unique case-insensitively: the running number keeps them apart.
        return f"{self.rng.choice(self.title_stems)} (#{number})"

    def content(self) -> str:
        paragraphs = self.rng.choices(self.paragraphs, k=self.rng.randint(1, 3))
        return self._fill_topics("\n\n".join(paragraphs))

    def comment(self) -> str:
        return self._fill_topics(self.rng.choice(self.comments))


@dataclass
class SeedCounts:
    users: int = 0
    posts: int = 0
    comments: int = 0
    comments_note: str = ""


def random_time_between(rng: random.Random, start: datetime, end: datetime) -> datetime:
    span = (end - start).total_seconds()
    return start + timedelta(seconds=rng.random() * max(span, 0.0))


def batches(total: int, size: int) -> list[int]:
    return [min(size, total - start) for start in range(0, total, size)]


class Seeder:
    """Bulk inserts in batches; the next batch is generated (in a thread) while `jobs` batches
    are being written over their own connections."""

    def __init__(
        self, database: Database, settings: Settings, args: argparse.Namespace, stream: TextIO
    ) -> None:
        self.database = database
        self.settings = settings
        self.args = args
        self.stream = stream
        self.rng = random.Random(args.seed)
        self.text = TextMaker(self.rng)
        self.now = datetime.now(UTC)
        self.year_ago = self.now - timedelta(days=365)
        self.batch_size: int = args.batch_size
        # SQLite has one writer at a time; PostgreSQL computes the search index in parallel.
        pool = settings.db_pool_size + settings.db_max_overflow
        self.jobs: int = 1 if settings.is_sqlite else min(args.jobs, pool)

    async def scalars(self, query: Any) -> list[Any]:
        async with self.database.engine.connect() as connection:
            return list((await connection.execute(query)).scalars().all())

    async def insert(self, model: Any, rows: list[dict[str, Any]], what: str) -> int:
        try:
            async with self.database.engine.begin() as connection:
                await connection.execute(insert(model), rows)
        except IntegrityError as exc:
            raise CommandError(
                f"could not insert demo {what} (clash with existing data): {describe(exc)}"
            ) from None
        return len(rows)

    async def fill(
        self,
        model: Any,
        what: str,
        total: int,
        make_rows: Callable[[int], list[dict[str, Any]]],
    ) -> None:
        """Insert `total` rows made by `make_rows(batch_size)`, with a progress bar."""
        progress = Progress(what, total, self.stream)
        pending: set[asyncio.Task[int]] = set()

        async def reap(when: str) -> None:
            done, _ = await asyncio.wait(pending, return_when=when)
            for task in done:
                pending.discard(task)
                progress.advance(task.result())

        try:
            for size in batches(total, self.batch_size):
                rows = await asyncio.to_thread(make_rows, size)
                while len(pending) >= self.jobs:
                    await reap(asyncio.FIRST_COMPLETED)
                pending.add(asyncio.create_task(self.insert(model, rows, what)))
            while pending:
                await reap(asyncio.ALL_COMPLETED)
        except BaseException:
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            raise
        progress.finish()

    async def seed_users(self, count: int, password_hash: str) -> list[int]:
        usernames = await self.scalars(
            select(User.username).where(User.username.like("demo\\_user\\_%", escape="\\"))
        )
        numbers = [int(m.group(1)) for name in usernames if (m := DEMO_USER_PATTERN.match(name))]
        first = max(numbers, default=0) + 1
        next_number = first

        def make_rows(size: int) -> list[dict[str, Any]]:
            nonlocal next_number
            rows = []
            for number in range(next_number, next_number + size):
                rows.append(
                    {
                        "username": f"demo_user_{number}",
                        "email": f"demo_user_{number}@example.com",
                        "password_hash": password_hash,
                        "role": "user",
                        # Registered in the month before their first posts.
                        "created_at": self.year_ago
                        - timedelta(seconds=self.rng.random() * 30 * 86400),
                    }
                )
            next_number += size
            return rows

        await self.fill(User, "users", count, make_rows)
        names = [f"demo_user_{n}" for n in range(first, first + count)]
        ids: list[int] = []
        for start in range(0, len(names), self.batch_size):
            chunk = names[start : start + self.batch_size]
            ids += await self.scalars(select(User.id).where(User.username.in_(chunk)))
        return sorted(ids)

    async def last_title_number(self) -> int:
        """The largest `(#N)` that ends a title, so new titles never clash with old ones."""
        titles = await self.scalars(select(Post.title).where(Post.title.like("%(#%)")))
        numbers = [int(m.group(1)) for title in titles if (m := TITLE_NUMBER.search(title))]
        return max(numbers, default=0)

    async def seed_posts(self, count: int, author_ids: list[int]) -> int:
        """Insert posts; returns the largest post id before them."""
        before = await self.scalars(select(func.coalesce(func.max(Post.id), 0)))
        next_number = await self.last_title_number() + 1
        # A few prolific authors, many occasional ones.
        author_weights = list(
            itertools.accumulate(1.0 / math.sqrt(i + 1) for i in range(len(author_ids)))
        )
        rng, text_, now, year_ago = self.rng, self.text, self.now, self.year_ago

        def make_rows(size: int) -> list[dict[str, Any]]:
            nonlocal next_number
            authors = rng.choices(author_ids, cum_weights=author_weights, k=size)
            rows = []
            for number, author_id in enumerate(authors, start=next_number):
                created = random_time_between(rng, year_ago, now)
                edited = rng.random() < 0.3
                rows.append(
                    {
                        "title": text_.title(number),
                        "content": text_.content(),
                        "published": rng.random() < 0.9,
                        "author_id": author_id,
                        "version": 2 if edited else 1,
                        "created_at": created,
                        "updated_at": random_time_between(rng, created, now) if edited else created,
                    }
                )
            next_number += size
            return rows

        await self.fill(Post, "posts", count, make_rows)
        return int(before[0])

    async def seed_comments(
        self, comment_model: Any, count: int, author_ids: list[int], posts_after: int | None
    ) -> int:
        query = select(Post.id, Post.created_at).where(Post.published.is_(True))
        if posts_after is not None:
            query = query.where(Post.id > posts_after)
        else:
            query = query.order_by(Post.id.desc()).limit(200_000)
        async with self.database.engine.connect() as connection:
            posts = [(row[0], row[1]) for row in (await connection.execute(query)).all()]
        if not posts:
            return 0
        columns = set(comment_model.__table__.columns.keys())
        rng, text_, now = self.rng, self.text, self.now

        def make_rows(size: int) -> list[dict[str, Any]]:
            rows = []
            for _ in range(size):
                post_id, post_created = rng.choice(posts)
                row = {
                    "post_id": post_id,
                    "author_id": rng.choice(author_ids),
                    "text": text_.comment(),
                    "created_at": random_time_between(rng, post_created, now),
                }
                rows.append({key: value for key, value in row.items() if key in columns})
            return rows

        await self.fill(comment_model, "comments", count, make_rows)
        return count

    async def run(self) -> SeedCounts:
        import security

        args = self.args
        counts = SeedCounts()
        comment_model = getattr(models, "Comment", None)
        tables = ["users", "posts"]
        if comment_model is not None and args.comments:
            tables.append(comment_model.__tablename__)
        await require_tables(self.database, *tables)

        # One hash for every demo user: argon2 is slow on purpose.
        password_hash = security.hash_password(args.password)
        new_user_ids = await self.seed_users(args.users, password_hash) if args.users else []
        counts.users = len(new_user_ids)
        author_ids = new_user_ids or await self.scalars(select(User.id))
        if not author_ids and (args.posts or args.comments):
            raise CommandError("there are no users to write posts and comments; pass --users N")

        posts_after = None
        if args.posts:
            posts_after = await self.seed_posts(args.posts, author_ids)
            counts.posts = args.posts

        if args.comments:
            if comment_model is None:
                counts.comments_note = "skipped: the Comment model does not exist yet"
            else:
                counts.comments = await self.seed_comments(
                    comment_model, args.comments, author_ids, posts_after
                )
                if not counts.comments:
                    counts.comments_note = "skipped: no published posts to comment on"

        if not self.settings.is_sqlite:
            await self.analyze(comment_model if counts.comments else None)
        return counts

    async def analyze(self, comment_model: Any) -> None:
        """Fresh planner statistics, so benchmarks right after seeding plan like production.

        The column list leaves out the full-text index expression, whose statistics would cost
        one to_tsvector per sampled row (many seconds); autovacuum gathers those later.
        """
        columns = ", ".join(c.name for c in Post.__table__.columns if c.name != "content")
        statements = ["ANALYZE users", f"ANALYZE posts ({columns})"]
        if comment_model is not None:
            statements.append(f"ANALYZE {comment_model.__tablename__}")
        async with self.database.engine.begin() as connection:
            for statement in statements:
                await connection.execute(text(statement))


async def seed_demo(settings: Settings, args: argparse.Namespace) -> SeedCounts:
    database = open_database(settings)
    try:
        await ping(database, settings)
        try:
            return await Seeder(database, settings, args, sys.stderr).run()
        except (OSError, TimeoutError) as exc:
            raise unreachable(settings, exc) from None
        except DBAPIError as exc:
            if exc.connection_invalidated or isinstance(exc.orig, OSError):
                raise unreachable(settings, exc) from None
            raise
    finally:
        await database.dispose()


def cmd_seed_demo(args: argparse.Namespace) -> int:
    try:
        UserCreate(username="demo_user_1", email="demo_user_1@example.com", password=args.password)
    except ValidationError as exc:
        raise CommandError(validation_message(exc)) from None
    settings = load_settings()
    started = time.perf_counter()
    counts = asyncio.run(seed_demo(settings, args))
    elapsed = time.perf_counter() - started
    comments = f"{counts.comments} comments"
    if counts.comments_note:
        comments += f" ({counts.comments_note})"
    print(f"seeded {counts.users} users, {counts.posts} posts, {comments} in {elapsed:.1f}s")
    if counts.users:
        print(f"demo users log in as demo_user_<n> with password {args.password!r}")
    return 0


# --- command line ----------------------------------------------------------------------------


def non_negative(value: str) -> int:
    number = int(value)
    if number < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return number


def positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return number


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="manage.py",
        description="Blog API operator commands (settings from the environment and .env).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    migrate = commands.add_parser("migrate", help="upgrade the DATABASE_URL schema to the latest")
    migrate.set_defaults(handler=cmd_migrate)

    user = commands.add_parser("create-user", help="create a user (or an admin with --admin)")
    user.add_argument("--username", required=True)
    user.add_argument("--email", required=True)
    user.add_argument("--admin", action="store_true", help="give the user the admin role")
    user.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from stdin instead of prompting for it",
    )
    user.set_defaults(handler=cmd_create_user)

    seed = commands.add_parser(
        "seed-demo", help="fill the database with demo users, posts and comments"
    )
    seed.add_argument("--users", type=non_negative, default=20, help="new users (default 20)")
    seed.add_argument("--posts", type=non_negative, default=200, help="new posts (default 200)")
    seed.add_argument(
        "--comments", type=non_negative, default=500, help="new comments (default 500)"
    )
    seed.add_argument(
        "--password",
        default=DEFAULT_DEMO_PASSWORD,
        help=f"password of every demo user (default {DEFAULT_DEMO_PASSWORD!r})",
    )
    seed.add_argument("--seed", type=int, default=None, help="random seed, for repeatable data")
    seed.add_argument(
        "--batch-size", type=positive, default=5000, help="rows per INSERT batch (default 5000)"
    )
    seed.add_argument(
        "--jobs",
        type=positive,
        default=DEFAULT_JOBS,
        help=f"batches written at once on PostgreSQL (default {DEFAULT_JOBS}; SQLite: 1)",
    )
    seed.set_defaults(handler=cmd_seed_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except CommandError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except SQLAlchemyError as exc:
        print(f"error: database error: {describe(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
