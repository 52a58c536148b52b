"""Operator commands: `migrate`, `create-user` and `seed-demo`.

    python manage.py migrate
    python manage.py create-user --username alice --email alice@example.com [--admin]
    python manage.py seed-demo --users 1000 --posts 100000 --comments 200000
    python manage.py --help              (or COMMAND --help)

Settings come from the environment and `.env` (config.py), exactly as for the service. A
failure the operator can fix (unreachable database, invalid input, taken name) is one
`error: ...` line on stderr and exit code 1, never a traceback; a malformed command line is
Typer's usage message and exit code 2.
"""

from __future__ import annotations

import asyncio
import getpass
import itertools
import math
import os
import random
import re
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Annotated, Any, NoReturn, TextIO

import typer
from pydantic import ValidationError
from sqlalchemy import func, insert, inspect, select, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError, IntegrityError, SQLAlchemyError

import models
from config import ConfigError, Settings, describe_invalid_settings, display_url, get_settings
from database import Database
from migrations import alembic_config
from models import Post, User
from schemas import UserCreate

# Alembic, crud (FastAPI), security (argon2), Faker and rich's progress bars are imported by
# the commands that use them: each costs a noticeable part of a second at start-up.

ROOT = Path(__file__).resolve().parent
CONNECT_TIMEOUT_SECONDS = 10.0
DEFAULT_DEMO_PASSWORD = "demo-password"
DEFAULT_JOBS = max(1, min(4, os.cpu_count() or 1))
DEMO_USER_PATTERN = re.compile(r"^demo_user_(\d+)$")
TITLE_NUMBER = re.compile(r"\(#(\d+)\)$")
# Demo posts carry 0-3 of these tags (most used first, roughly).
DEMO_TAGS = ("python", "fastapi", "postgresql", "asyncio", "redis", "docker", "testing", "web")
DEMO_TAG_WEIGHTS = (8, 6, 5, 4, 3, 3, 2, 1)
DEMO_TAGS_PER_POST = (0, 1, 1, 2, 2, 3)


class CommandError(Exception):
    """A failure the operator can act on: printed as one `error: ...` line, exit code 1."""


# --- shared helpers --------------------------------------------------------------------------


def load_settings() -> Settings:
    try:
        return get_settings()
    except ValidationError as exc:
        raise CommandError(f"invalid configuration: {describe_invalid_settings(exc)}") from None
    except ConfigError as exc:
        raise CommandError(f"invalid configuration: {exc}") from None


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
        f"cannot reach the database at {display_url(settings.database_url)}: {describe(exc)}"
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


def migrate() -> None:
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
    print(f"database {display_url(settings.database_url)} is at revision {head}")


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


def add_user(username: str, email: str, admin: bool, password_stdin: bool) -> None:
    # Check what can be checked before asking for a password.
    try:
        UserCreate(username=username, email=email, password="x" * 8)
    except ValidationError as exc:
        raise CommandError(validation_message(exc)) from None
    settings = load_settings()
    asyncio.run(check_reachable(settings, "users"))
    password = read_password(password_stdin, sys.stdin)
    try:
        data = UserCreate(username=username, email=email, password=password)
    except ValidationError as exc:
        raise CommandError(validation_message(exc)) from None
    role = "admin" if admin else "user"
    user = asyncio.run(create_user(settings, data, role))
    print(f"created {role} {user.username} <{user.email}> (id {user.id})")


# --- seed-demo -------------------------------------------------------------------------------

# Topic words: each post draws a few (weight 1/sqrt(rank), so "python" is a topic of about one
# post in five and the last words of the list of about one in fifty: a spread of selectivities
# for `q` benchmarks) and its text, pooled English from Faker, repeats them.
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
TECH_WORDS = tuple(_TECH_TEXT.split())
TOPIC_SLOTS = 6  # topic words per post, at most
TOPIC_SHARE = 0.12  # of the words of a sentence
TEXT_POOL_SIZE = 3_000  # paragraphs and comments to draw from; other pieces in proportion
SECTIONS_PER_POST = (0, 1, 1, 2, 2)  # `##` sections after the opening paragraph

# Faker's `parse` fills each {{...}} with its own draw from the providers below.
TITLE_TEMPLATES = (
    "How to {{title_verb}} {{title_noun}} with {{title_tech}}",
    "{{title_count}} lessons from {{title_gerund}} {{title_noun}} in {{title_tech}}",
    "The case for {{title_adjective}} {{title_noun}}",
    "A {{title_adjective}} guide to {{title_tech}} {{title_noun}}",
    "{{title_gerund}} {{title_noun}}: what we learned",
    "The {{title_adjective}} {{title_noun}} problem",
    "Notes on {{title_tech}} and {{title_noun}}",
    "{{title_tech}} {{title_noun}} in practice",
    "Stop {{title_gerund}} your {{title_noun}}",
    "From {{title_noun}} to {{title_noun}}: a {{title_tech}} story",
    "What I wish I knew about {{title_tech}} {{title_noun}}",
    "{{title_count}} {{title_adjective}} ways to {{title_verb}} your {{title_noun}}",
)
TITLE_WORDS = {
    "title_verb": """debug scale test profile cache secure monitor deploy refactor migrate design
        simplify document""",
    "title_gerund": """testing scaling debugging profiling caching deploying refactoring migrating
        designing monitoring benchmarking shipping rewriting tuning""",
    "title_tech": """Python PostgreSQL FastAPI asyncio Redis Docker SQLAlchemy Pydantic Kubernetes
        Linux Rust Go TypeScript SQLite Kafka nginx pytest Git""",
    "title_noun": """cache queries database API tests deployments workers queues indexes migrations
        logs metrics services sessions tokens schemas pipelines containers endpoints benchmarks""",
    "title_adjective": """practical simple surprising hidden reliable modern pragmatic fast careful
        honest boring complete gentle""",
    "title_count": "3 4 5 6 7 8 9 10 11 12",
}


class DemoText:
    """Titles, Markdown posts and comments, reproducible from one seed.

    Faker is far too slow to call per post (tens of microseconds a sentence), so it makes pools
    once: title stems, paragraphs (with emphasis, inline code and the odd link), headings,
    lists, code blocks and quotes, whose text holds placeholders for topic words. A post joins
    a few pooled pieces and fills in its own topic words with `str.replace`, which keeps
    100,000 posts down to seconds of generation.
    """

    def __init__(self, seed: int | None, pool_size: int = TEXT_POOL_SIZE) -> None:
        from faker import Faker
        from faker.providers import DynamicProvider

        fake = Faker("en_US")
        fake.seed_instance(seed)  # an instance's own generator: seed None draws from the OS
        for name, words in TITLE_WORDS.items():
            # Without `generator`, a provider brings a Generator of its own, unseeded, and its
            # random_int & co. replace the seeded ones (Faker's `json` would differ per run).
            fake.add_provider(DynamicProvider(name, words.split(), generator=fake))
        self.fake = fake
        self.rng: random.Random = fake.random
        self.tech_cum_weights = list(
            itertools.accumulate(1.0 / math.sqrt(rank + 1) for rank in range(len(TECH_WORDS)))
        )
        # Private-use characters stand for the post's topic words, the capitals for one that
        # starts a sentence.
        self.slots = tuple(chr(0xE000 + index) for index in range(TOPIC_SLOTS))
        self.capitals = {slot: chr(ord(slot) + 0x10) for slot in self.slots}
        english = [word for word in fake.get_words_list() if word.islower()]
        self.identifiers = [*TECH_WORDS, *english]
        repeats = round(TOPIC_SHARE * len(english) / ((1 - TOPIC_SHARE) * TOPIC_SLOTS))
        self.words = [*english, *self.slots * repeats]

        self.title_stems = [self._title_stem() for _ in range(pool_size)]
        self.paragraphs = [self._paragraph() for _ in range(pool_size)]
        self.comments = [
            self._paragraph(sentences=self.rng.randint(1, 3), markup=False)[:500].rstrip()
            for _ in range(pool_size)
        ]
        self.headings = [self._heading() for _ in range(pool_size // 5)]
        self.lists = [self._list() for _ in range(pool_size // 10)]
        self.code_blocks = [self._code_block() for _ in range(pool_size // 10)]
        self.quotes = [
            "> " + self._paragraph(sentences=self.rng.randint(1, 2)) for _ in range(pool_size // 20)
        ]

    # Pieces, made once.

    def _sentence(self, words: int, markup: bool = True) -> str:
        fake, rng = self.fake, self.rng
        text_ = fake.sentence(nb_words=words, ext_word_list=self.words)
        if text_[0] in self.capitals:
            text_ = self.capitals[text_[0]] + text_[1:]
        if not markup:
            return text_
        parts = text_.split(" ")
        roll = rng.random()
        if roll < 0.25 and len(parts) >= 3:
            index = rng.randrange(1, len(parts) - 1)
            mark = rng.choice(("*", "*", "**", "`"))
            parts[index] = f"{mark}{parts[index]}{mark}"
        elif roll < 0.29 and len(parts) >= 4:
            first = rng.randrange(1, len(parts) - 2)
            last = first + rng.randint(1, 2)
            anchor = " ".join(parts[first:last])
            url = fake.url().rstrip("/") + "/" + fake.uri_path()
            parts[first:last] = [f"[{anchor}]({url})"]
        return " ".join(parts)

    def _paragraph(self, sentences: int | None = None, markup: bool = True) -> str:
        count = sentences or self.rng.randint(2, 5)
        return " ".join(self._sentence(self.rng.randint(5, 12), markup) for _ in range(count))

    def _heading(self) -> str:
        if self.rng.random() < 0.4:
            return "## " + self.fake.catch_phrase()
        return "## " + self._sentence(self.rng.randint(2, 5), markup=False).rstrip(".")

    def _list(self) -> str:
        items = [
            self._sentence(self.rng.randint(3, 8), markup=self.rng.random() < 0.3).rstrip(".")
            for _ in range(self.rng.randint(3, 6))
        ]
        if self.rng.random() < 0.35:
            return "\n".join(f"{number}. {item}" for number, item in enumerate(items, 1))
        return "\n".join(f"- {item}" for item in items)

    def _code_block(self) -> str:
        fake, rng = self.fake, self.rng

        def name() -> str:
            return fake.word(ext_word_list=self.identifiers)

        kind = rng.choice(("python", "python", "sql", "bash", "json"))
        if kind == "python":
            function, things, attribute = f"{name()}_{name()}", f"{name()}s", name()
            code = (
                f"def {function}({things}):\n"
                f'    """{fake.sentence(nb_words=rng.randint(4, 9))}"""\n'
                f"    return [item for item in {things} if item.{attribute}]"
            )
        elif kind == "sql":
            table, column, other = f"{name()}s", name(), name()
            code = (
                f"SELECT id, {column}, {other}\nFROM {table}\nWHERE {column} = $1\n"
                f"ORDER BY created_at DESC\nLIMIT {rng.choice((10, 20, 50, 100))};"
            )
        elif kind == "bash":
            tool = name()
            code = f"$ pip install {tool}\n$ {tool} {name()} --{name()} {fake.file_path(depth=2)}"
        else:
            columns = [("id", "pyint"), ("username", "user_name"), ("email", "email")]
            code = fake.json(data_columns=columns, num_rows=1, indent=2)
        return f"```{kind}\n{code}\n```"

    def _title_stem(self) -> str:
        title: str = self.fake.parse(self.rng.choice(TITLE_TEMPLATES))
        return title[:1].upper() + title[1:]

    # Per row: a few draws from the pools.

    def _fill_topics(self, text_: str) -> str:
        """Replace the slots with 2 to TOPIC_SLOTS topic words, drawn anew."""
        count = self.rng.randint(2, TOPIC_SLOTS)
        chosen = self.rng.choices(TECH_WORDS, cum_weights=self.tech_cum_weights, k=count)
        for index, slot in enumerate(self.slots):
            word = chosen[index % count]
            text_ = text_.replace(slot, word).replace(self.capitals[slot], word.capitalize())
        return text_

    def title(self, number: int) -> str:
        # Titles are unique case-insensitively: the running number keeps them apart.
        return f"{self.rng.choice(self.title_stems)} (#{number})"

    def content(self) -> str:
        """Markdown: an opening paragraph, then sections with lists, code or quotes."""
        rng = self.rng
        blocks = [rng.choice(self.paragraphs)]
        for _ in range(rng.choice(SECTIONS_PER_POST)):
            blocks += (rng.choice(self.headings), rng.choice(self.paragraphs))
            roll = rng.random()
            if roll < 0.3:
                blocks.append(rng.choice(self.lists))
            elif roll < 0.45:
                blocks.append(rng.choice(self.code_blocks))
            elif roll < 0.55:
                blocks.append(rng.choice(self.quotes))
            if rng.random() < 0.25:
                blocks.append(rng.choice(self.paragraphs))
        return self._fill_topics("\n\n".join(blocks))

    def comment(self) -> str:
        return self._fill_topics(self.rng.choice(self.comments))


class SeedProgress:
    """Rich's progress bars on stderr when it is a terminal; one summary line per table otherwise
    (rich would also draw them when FORCE_COLOR is set: redrawn bars are noise in a CI log)."""

    def __init__(self, stream: TextIO) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TaskProgressColumn,
            TextColumn,
            TimeElapsedColumn,
        )

        self.stream = stream
        self.bars = Progress(
            TextColumn("{task.description:<9}"),
            BarColumn(),
            TaskProgressColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=Console(file=stream),
            disable=not stream.isatty(),
        )

    def __enter__(self) -> SeedProgress:
        self.bars.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.bars.stop()

    @contextmanager
    def table(self, what: str, total: int) -> Iterator[Callable[[int], None]]:
        """A bar for `total` rows of `what`; the yielded function counts rows inserted."""
        task = self.bars.add_task(what, total=total)
        started = time.perf_counter()
        done = 0

        def advance(count: int) -> None:
            nonlocal done
            done += count
            self.bars.update(task, completed=done)

        yield advance
        if self.bars.disable:
            elapsed = time.perf_counter() - started
            self.stream.write(f"{what}: {done} inserted in {elapsed:.1f}s\n")
            self.stream.flush()


@dataclass(frozen=True)
class SeedOptions:
    users: int
    posts: int
    comments: int
    password: str
    seed: int | None
    batch_size: int
    jobs: int


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
        self, database: Database, settings: Settings, options: SeedOptions, progress: SeedProgress
    ) -> None:
        self.database = database
        self.settings = settings
        self.options = options
        self.progress = progress
        self.text = DemoText(options.seed)
        self.rng = self.text.rng  # one seeded generator for the text and everything else
        self.now = datetime.now(UTC)
        self.year_ago = self.now - timedelta(days=365)
        self.batch_size = options.batch_size
        # SQLite has one writer at a time; PostgreSQL computes the search index in parallel.
        pool = settings.db_pool_size + settings.db_max_overflow
        self.jobs = 1 if settings.is_sqlite else min(options.jobs, pool)

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
        pending: set[asyncio.Task[int]] = set()
        with self.progress.table(what, total) as advance:

            async def reap(when: str) -> None:
                done, _ = await asyncio.wait(pending, return_when=when)
                for task in done:
                    pending.discard(task)
                    advance(task.result())

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
        """Insert posts (rendered, with slugs and a few tags, as crud stores them); returns the
        largest post id before them."""
        import crud
        from rendering import numbered_slug, slug_from_title

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
                title, content = text_.title(number), text_.content()
                tags = rng.choices(
                    DEMO_TAGS, weights=DEMO_TAG_WEIGHTS, k=rng.choice(DEMO_TAGS_PER_POST)
                )
                rows.append(
                    {
                        "title": title,
                        # The title's running number keeps slugs apart even when cut short.
                        "slug": numbered_slug(slug_from_title(TITLE_NUMBER.sub("", title)), number),
                        "content": content,
                        **crud.derived_post_fields(content, tags),
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
        async with self.database.engine.begin() as connection:
            await crud.index_post_tags(connection, int(before[0]))
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

        options = self.options
        counts = SeedCounts()
        comment_model = getattr(models, "Comment", None)
        tables = ["users", "posts"]
        if comment_model is not None and options.comments:
            tables.append(comment_model.__tablename__)
        await require_tables(self.database, *tables)

        # One hash for every demo user: argon2 is slow on purpose.
        password_hash = security.hash_password(options.password)
        new_user_ids = await self.seed_users(options.users, password_hash) if options.users else []
        counts.users = len(new_user_ids)
        author_ids = new_user_ids or await self.scalars(select(User.id))
        if not author_ids and (options.posts or options.comments):
            raise CommandError("there are no users to write posts and comments; pass --users N")

        posts_after = None
        if options.posts:
            posts_after = await self.seed_posts(options.posts, author_ids)
            counts.posts = options.posts

        if options.comments:
            if comment_model is None:
                counts.comments_note = "skipped: the Comment model does not exist yet"
            else:
                counts.comments = await self.seed_comments(
                    comment_model, options.comments, author_ids, posts_after
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


async def seed_demo(settings: Settings, options: SeedOptions) -> SeedCounts:
    database = open_database(settings)
    try:
        await ping(database, settings)
        try:
            with SeedProgress(sys.stderr) as progress:
                return await Seeder(database, settings, options, progress).run()
        except (OSError, TimeoutError) as exc:
            raise unreachable(settings, exc) from None
        except DBAPIError as exc:
            if exc.connection_invalidated or isinstance(exc.orig, OSError):
                raise unreachable(settings, exc) from None
            raise
    finally:
        await database.dispose()


def run_seed_demo(options: SeedOptions) -> None:
    try:
        UserCreate(
            username="demo_user_1", email="demo_user_1@example.com", password=options.password
        )
    except ValidationError as exc:
        raise CommandError(validation_message(exc)) from None
    settings = load_settings()
    started = time.perf_counter()
    counts = asyncio.run(seed_demo(settings, options))
    elapsed = time.perf_counter() - started
    comments = f"{counts.comments} comments"
    if counts.comments_note:
        comments += f" ({counts.comments_note})"
    print(f"seeded {counts.users} users, {counts.posts} posts, {comments} in {elapsed:.1f}s")
    if counts.users:
        print(f"demo users log in as demo_user_<n> with password {options.password!r}")


# --- command line ----------------------------------------------------------------------------


def fail(message: str, exit_code: int = 1) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(exit_code)


@contextmanager
def reported() -> Iterator[None]:
    """A command's own failures as one `error: ...` line (Typer reports usage errors, exit 2)."""
    try:
        yield
    except CommandError as exc:
        fail(str(exc))
    except SQLAlchemyError as exc:
        fail(f"database error: {describe(exc)}")
    except KeyboardInterrupt:
        fail("interrupted", 130)


app = typer.Typer(
    help="Blog API operator commands (settings from the environment and .env).",
    add_completion=False,
    no_args_is_help=True,
    # Plain tracebacks for bugs: Typer's pretty ones show local variables, settings included.
    pretty_exceptions_enable=False,
)


@app.command("migrate")
def migrate_command() -> None:
    """Upgrade the DATABASE_URL schema to the latest revision."""
    with reported():
        migrate()


@app.command("create-user")
def create_user_command(
    username: Annotated[str, typer.Option(help="3-50 of A-Z a-z 0-9 _ . -")],
    email: Annotated[str, typer.Option(help="a valid email address")],
    admin: Annotated[bool, typer.Option("--admin", help="give the user the admin role")] = False,
    password_stdin: Annotated[
        bool,
        typer.Option(
            "--password-stdin", help="read the password from stdin instead of prompting for it"
        ),
    ] = False,
) -> None:
    """Create a user (an admin with --admin); the password is asked for twice."""
    with reported():
        add_user(username, email, admin, password_stdin)


@app.command("seed-demo")
def seed_demo_command(
    users: Annotated[int, typer.Option(min=0, help="new demo users")] = 20,
    posts: Annotated[int, typer.Option(min=0, help="new posts, in Markdown")] = 200,
    comments: Annotated[int, typer.Option(min=0, help="new comments")] = 500,
    password: Annotated[
        str, typer.Option(help="password of every demo user")
    ] = DEFAULT_DEMO_PASSWORD,
    seed: Annotated[
        int | None, typer.Option(help="random seed, for repeatable data", show_default=False)
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="rows per INSERT batch")] = 5000,
    jobs: Annotated[
        int, typer.Option(min=1, help="batches written at once on PostgreSQL (SQLite: 1)")
    ] = DEFAULT_JOBS,
) -> None:
    """Fill the database with demo users, posts and comments."""
    with reported():
        run_seed_demo(SeedOptions(users, posts, comments, password, seed, batch_size, jobs))


if __name__ == "__main__":
    app(prog_name="manage.py")
