"""The schema revision at start-up and in readiness: SQLite files are brought to the latest
revision by the service itself; a PostgreSQL database that is behind is refused (or migrated,
when MIGRATE_ON_START is set) with the command that fixes it."""

from __future__ import annotations

import ast
import asyncio
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import text

from config import Settings, sqlite_path
from errors import lost_database

if TYPE_CHECKING:
    from alembic.config import Config as AlembicConfig

    from database import Database

logger = logging.getLogger("blog.migrations")
logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)  # a line per plugin loaded

ROOT = Path(__file__).resolve().parent
MIGRATE_COMMAND = "python manage.py migrate"
CURRENT_REVISION = text("SELECT version_num FROM alembic_version")


class SchemaNotReady(Exception):
    """The database's schema is not the one this version needs; the message says what to do."""


def alembic_config(database_url: str, *, configure_logger: bool = True) -> AlembicConfig:
    """Alembic's configuration for this project, on `database_url` (not alembic.ini's)."""
    from alembic.config import Config as AlembicConfig

    config = AlembicConfig(str(ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(ROOT / "alembic"))
    config.attributes["database_url"] = database_url
    config.attributes["configure_logger"] = configure_logger
    return config


@lru_cache
def known_revisions() -> tuple[str, frozenset[str]]:
    """The head revision of this version's migrations, and every revision they know.

    Read from the `revision` and `down_revision` lines of alembic/versions/ (a linear history)
    without importing alembic: alembic's script directory brings mako and pygments along, some
    10 MB in every worker that only checks the revision. tests/test_migrations.py checks the
    answer against alembic's own."""
    links: dict[str, str | None] = {}
    for path in sorted((ROOT / "alembic" / "versions").glob("*.py")):
        values = _module_constants(path, ("revision", "down_revision"))
        links[values["revision"]] = values["down_revision"]
    heads = set(links) - set(links.values())
    if len(heads) != 1:
        raise RuntimeError(f"alembic/versions/ has {len(heads)} heads: {sorted(heads)}")
    return heads.pop(), frozenset(links)


def _module_constants(path: Path, names: tuple[str, ...]) -> dict[str, Any]:
    """The literal values of top-level assignments to `names` in a Python file."""
    values: dict[str, Any] = {}
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        target: ast.expr
        if isinstance(node, ast.AnnAssign) and node.value is not None:
            target, value = node.target, node.value
        elif isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], node.value
        else:
            continue
        if isinstance(target, ast.Name) and target.id in names:
            values[target.id] = ast.literal_eval(value)
    missing = set(names) - set(values)
    if missing:
        raise RuntimeError(f"{path.name} does not set {sorted(missing)}")
    return values


def head_revision() -> str:
    return known_revisions()[0]


async def current_revision(database: Database) -> str | None:
    """The database's schema revision; None when it has none (never migrated). Errors other
    than a missing version table propagate (the database is unreachable)."""
    try:
        async with database.read_engine.connect() as connection:
            revisions = (await connection.execute(CURRENT_REVISION)).scalars().all()
    except Exception as exc:
        if lost_database(exc):
            raise
        await database.ping()  # it answers, so the version table is what is missing
        return None
    return revisions[0] if len(revisions) == 1 else ",".join(sorted(revisions)) or None


def behind_message(revision: str | None) -> str | None:
    """Why a database at `revision` cannot be served by this version; None when it can."""
    head, known = known_revisions()
    if revision == head:
        return None
    if revision is None:
        return f"the database has no schema yet (this version needs revision {head})"
    if revision not in known:
        return (
            f"the database schema is at revision {revision}, which this version does not know "
            f"(it needs {head}; was it migrated by a newer version?)"
        )
    return f"the database schema is at revision {revision}; this version needs {head}"


async def prepare_schema(database: Database, settings: Settings) -> None:
    """Bring the schema to this version's revision at start-up, or raise SchemaNotReady.

    SQLite files are migrated by the service (the embedded default must just work; a file lock
    keeps two processes starting on one file from migrating it at once). PostgreSQL is migrated
    only when MIGRATE_ON_START is set (alembic/env.py holds an advisory lock for the
    transaction); otherwise a database that is behind stops the start with the command to run."""
    revision = await current_revision(database)
    problem = behind_message(revision)
    if problem is None:
        return
    head, known = known_revisions()
    newer = revision is not None and revision not in known
    db_file = sqlite_path(settings.database_url)
    if newer or (db_file is None and not settings.migrate_on_start):
        hint = "" if newer else f": run `{MIGRATE_COMMAND}` (or set MIGRATE_ON_START=true)"
        raise SchemaNotReady(problem + hint)
    logger.info("%s: migrating to %s", problem, head)
    await asyncio.to_thread(_upgrade_locked, settings.database_url, db_file)
    problem = behind_message(await current_revision(database))
    if problem is not None:
        raise SchemaNotReady(f"{problem} after migrating; run `{MIGRATE_COMMAND}` to see why")


def _upgrade_locked(database_url: str, db_file: Path | None) -> None:
    from alembic import command

    with _file_lock(db_file):
        command.upgrade(alembic_config(database_url, configure_logger=False), "head")


@contextmanager
def _file_lock(db_file: Path | None) -> Iterator[None]:
    """An exclusive lock beside the SQLite file for the time of a migration (none for
    PostgreSQL, whose migration holds an advisory lock)."""
    if db_file is None:
        yield
        return
    import fcntl

    db_file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(f"{db_file}.migrate-lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # the other process migrates; upgrade is then a no-op
        yield
    finally:
        os.close(fd)  # releases the lock
