"""Every query of the service, scoped by the caller; raises domain errors, never HTTP ones."""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import AsyncIterator, Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Integer,
    Table,
    bindparam,
    delete,
    false,
    func,
    insert,
    literal,
    literal_column,
    or_,
    select,
    text,
    true,
    tuple_,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.orm import make_transient_to_detached
from starlette.concurrency import run_in_threadpool

import security
from database import AnySelect, Database, Row
from errors import (
    CommentNotFound,
    EmailTaken,
    InsufficientPermissions,
    InvalidCredentials,
    PostNotFound,
    PostTitleExists,
    PreconditionFailed,
    SlugTaken,
    UsernameTaken,
)
from models import Comment, Post, PostTag, User, UTCDateTime, utcnow
from pagination import Cursor
from rendering import Rendered, numbered_slug, render, slug_from_title
from schemas import PostCreate, PostFilters, PostSort, UserCreate

logger = logging.getLogger("blog.crud")

# The post versions an If-Match header accepts; None when the client sent no precondition.
Versions = Collection[int] | None

# --- users -----------------------------------------------------------------------------------


USER_BY_ID = select(*User.__table__.columns).where(User.id == bindparam("user_id"))


async def get_user(database: Database, user_id: int) -> User | None:
    """The user, detached: usable in any session later (as a post's owner, say) without a
    reload, at the price of one plain read (Database.fetch_all) instead of an ORM session."""
    rows = await database.fetch_all(USER_BY_ID, {"user_id": user_id})
    if not rows:
        return None
    user = User(**rows[0])
    make_transient_to_detached(user)
    return user


async def get_user_by_username(session: AsyncSession, username: str) -> User | None:
    if "\x00" in username:  # no username holds one, and PostgreSQL would fail on it
        return None
    query = select(User).where(func.lower(User.username) == username.lower())
    return (await session.execute(query)).scalar_one_or_none()


async def create_user(
    session: AsyncSession, data: UserCreate, *, role: str = "user", password_hash: str | None = None
) -> User:
    """Insert a user; USERNAME_TAKEN / EMAIL_TAKEN come from the unique indexes."""
    if password_hash is None:
        password_hash = await run_in_threadpool(security.hash_password, data.password)
    user = User(
        username=data.username, email=data.email.lower(), password_hash=password_hash, role=role
    )
    session.add(user)
    try:
        await session.commit()
    except IntegrityError:
        await session.rollback()
        if await get_user_by_username(session, data.username) is not None:
            raise UsernameTaken() from None
        raise EmailTaken() from None
    return user


async def authenticate(session: AsyncSession, username: str, password: str) -> User:
    """The user these credentials belong to; one answer and similar time for every failure."""
    user = await get_user_by_username(session, username)
    password_hash = user.password_hash if user is not None else security.DUMMY_PASSWORD_HASH
    valid, new_hash = await run_in_threadpool(
        security.verify_and_update_password, password, password_hash
    )
    if user is None or not valid:
        raise InvalidCredentials()
    if new_hash is not None:
        user.password_hash = new_hash
        await session.commit()
    return user


async def ensure_first_admin(
    session: AsyncSession, username: str, email: str, password: str
) -> None:
    """Create the configured admin unless a user of that name exists; never fatal."""
    if await get_user_by_username(session, username) is not None:
        return
    try:
        data = UserCreate(username=username, email=email, password=password)
        await create_user(session, data, role="admin")
        logger.info("created first admin %s", username)
    except UsernameTaken:
        pass  # another worker created it first
    except EmailTaken:
        logger.error(
            "first admin %s not created: email %s belongs to another user", username, email
        )
    except ValueError as exc:
        logger.error("first admin %s not created: %s", username, exc)


# --- posts -----------------------------------------------------------------------------------


def _visible_to(viewer: User | None) -> ColumnElement[bool]:
    if viewer is None:
        return Post.published.is_(True)
    if viewer.role == "admin":
        return literal(True)
    return or_(Post.published.is_(True), Post.author_id == viewer.id)


def _can_write(viewer: User, post: Post) -> bool:
    return viewer.role == "admin" or post.author_id == viewer.id


# A post as the API shows it, in plain columns for the hot reads (Database.fetch_all).
POST_COLUMNS = (
    Post.id,
    Post.title,
    Post.slug,
    Post.content,
    Post.content_html,
    Post.excerpt,
    Post.reading_time_minutes,
    Post.tags,
    User.username.label("author"),
    Post.author_id,
    Post.published,
    Post.created_at,
    Post.updated_at,
    Post.version,
)
POST_ROW_BY_ID = (
    select(*POST_COLUMNS)
    .join(User, User.id == Post.author_id)
    .where(Post.id == bindparam("post_id"))
)


async def get_post_row(database: Database, post_id: int) -> Row | None:
    """A post whatever its visibility, as a row of POST_COLUMNS; callers decide who may see it."""
    rows = await database.fetch_all(POST_ROW_BY_ID, {"post_id": post_id})
    return rows[0] if rows else None


async def get_visible_post(session: AsyncSession, post_id: int, viewer: User | None) -> Post:
    """The post if the viewer may see it; POST_NOT_FOUND exactly as if absent otherwise."""
    query = select(Post).where(Post.id == post_id, _visible_to(viewer))
    post = (await session.execute(query)).scalar_one_or_none()
    if post is None:
        raise PostNotFound()
    return post


async def _get_writable_post(
    session: AsyncSession, post_id: int, viewer: User, expected_versions: Versions
) -> Post:
    post = await get_visible_post(session, post_id, viewer)
    if not _can_write(viewer, post):
        raise InsufficientPermissions()
    if expected_versions is not None and post.version not in expected_versions:
        raise PreconditionFailed()
    return post


POSTS: Table = Post.__table__  # type: ignore[assignment]  # a Table; typed as FromClause


# Built once: the columns a new post sets, each a named bind parameter (see create_post).
NEW_POST_COLUMNS = (
    "title",
    "slug",
    "content",
    "content_html",
    "excerpt",
    "reading_time_minutes",
    "tags",
    "published",
    "author_id",
    "version",
    "created_at",
    "updated_at",
)
INSERT_POST = (
    insert(POSTS)
    .values({name: bindparam(name, type_=POSTS.c[name].type) for name in NEW_POST_COLUMNS})
    .returning(POSTS.c.id)
)


# Content this long is rendered on a worker thread rather than on the event loop.
RENDER_IN_THREAD_CHARS = 5_000
# Inserts tried with an auto-generated slug before giving up (each after a fresh look-up).
SLUG_ATTEMPTS = 8
SLUG_CANDIDATES = 50  # `-N` variants looked up per query


async def _rendered(content: str) -> Rendered:
    if len(content) < RENDER_IN_THREAD_CHARS:
        return render(content)
    return await run_in_threadpool(render, content)


def _rendered_values(rendered: Rendered) -> dict[str, Any]:
    return {
        "content_html": rendered.html,
        "excerpt": rendered.excerpt,
        "reading_time_minutes": rendered.reading_time_minutes,
    }


def _unique_index_hit(exc: IntegrityError) -> str:
    """Which unique rule a failed write broke: "slug", or "title" (also for anything else)."""
    # The first line names the index (PostgreSQL) or column (SQLite); later ones quote values.
    first_line = str(exc.orig).partition("\n")[0]
    return "slug" if "uq_posts_slug" in first_line or "posts.slug" in first_line else "title"


# One bind parameter per candidate (the driver path takes no expanding IN lists).
TAKEN_SLUGS = select(Post.slug).where(
    Post.slug.in_([bindparam(f"slug_{n}") for n in range(SLUG_CANDIDATES)])
)


async def _free_slug(database: Database, base: str) -> str:
    """The first of `base-2`, `base-3`, ... that no post has (at the time of asking)."""
    first = 2
    while True:
        candidates = [numbered_slug(base, n) for n in range(first, first + SLUG_CANDIDATES)]
        params = {f"slug_{n}": candidate for n, candidate in enumerate(candidates)}
        rows = await database.fetch_all(TAKEN_SLUGS, params)
        taken = {row["slug"] for row in rows}
        for candidate in candidates:
            if candidate not in taken:
                return candidate
        first += SLUG_CANDIDATES


INSERT_POST_TAGS = insert(PostTag.__table__)  # type: ignore[arg-type]


def derived_post_fields(content: str, tags: Sequence[str] = ()) -> dict[str, Any]:
    """What a post stores beyond what was sent (its rendering and tag list), for bulk loads
    (`manage.py seed-demo`) that insert rows themselves; follow them with `index_post_tags`."""
    return {**_rendered_values(render(content)), "tags": " ".join(sorted(set(tags)))}


INDEX_BATCH = 5_000


async def index_post_tags(connection: AsyncConnection, after_id: int) -> int:
    """post_tags rows for the posts after `after_id`, from their stored tags (bulk loads)."""
    query = select(Post.id, Post.tags).where(Post.id > after_id, Post.tags != "")
    rows = (await connection.execute(query)).all()
    values = [{"post_id": post_id, "tag": tag} for post_id, tags in rows for tag in tags.split()]
    for start in range(0, len(values), INDEX_BATCH):
        await connection.execute(INSERT_POST_TAGS, values[start : start + INDEX_BATCH])
    return len(values)


async def _write_tags(session: AsyncSession, post_id: int, tags: Sequence[str]) -> None:
    await session.execute(delete(PostTag).where(PostTag.post_id == post_id))
    if tags:
        await session.execute(INSERT_POST_TAGS, [{"post_id": post_id, "tag": t} for t in tags])


@contextlib.asynccontextmanager
async def _statement_savepoint(session: AsyncSession) -> AsyncIterator[None]:
    """On PostgreSQL a failed statement aborts its transaction: a savepoint lets the caller
    retry. SQLite undoes only the failed statement, and a savepoint there would start the
    transaction in deferred mode instead of the IMMEDIATE one writers rely on."""
    if session.get_bind().dialect.name != "postgresql":
        yield
        return
    async with session.begin_nested():
        yield


async def create_post(
    database: Database, author: User, data: PostCreate, *, session: AsyncSession | None = None
) -> Post:
    """Insert a post: committed on its own, or, given a session, inside its transaction for the
    caller to commit (idempotent creates commit it with their record). Without tags and a
    session it is one autocommit INSERT ... RETURNING. The returned object is in no session,
    with the caller as its owner.

    An auto-generated slug that is taken becomes `-2`, `-3`, ...: the unique index decides,
    and a lost race looks the next free one up and tries again."""
    now = utcnow()
    base_slug = data.slug or slug_from_title(data.title)
    values = {
        "title": data.title,
        "slug": base_slug,
        "content": data.content,
        **_rendered_values(await _rendered(data.content)),
        "tags": " ".join(data.tags),
        "published": data.published,
        "author_id": author.id,
        "version": 1,
        "created_at": now,
        "updated_at": now,
    }
    if session is None and data.tags:
        async with database.sessionmaker() as own_session:
            post = await _insert_post(database, own_session, values, data, base_slug)
            await own_session.commit()
    else:
        post = await _insert_post(database, session, values, data, base_slug)
    post.owner = author
    return post


async def _insert_post(
    database: Database,
    session: AsyncSession | None,
    values: dict[str, Any],
    data: PostCreate,
    base_slug: str,
) -> Post:
    for attempt in range(SLUG_ATTEMPTS):
        try:
            if session is None:
                (row,) = await database.write_returning(INSERT_POST, values)
            else:
                async with _statement_savepoint(session):
                    row = (await session.execute(INSERT_POST, values)).mappings().one()
            break
        except IntegrityError as exc:
            hit = _unique_index_hit(exc)
            if hit == "title":
                raise PostTitleExists() from None
            if data.slug is not None or attempt == SLUG_ATTEMPTS - 1:
                raise SlugTaken() from None
            values["slug"] = await _free_slug(database, base_slug)
    if session is not None:
        await _write_tags(session, row["id"], data.tags)
    return Post(id=row["id"], **values)


async def update_post(
    session: AsyncSession,
    post_id: int,
    viewer: User,
    changes: dict[str, Any],
    expected_versions: Versions = None,
) -> tuple[Post, dict[str, Any]]:
    """Apply the fields sent; returns the post and the fields that really changed.

    `updated_at` and the version move only when something changed; new content is rendered
    again; `tags` replaces the whole list. The slug stays when the title changes.

    With `expected_versions` (from If-Match) the write is a compare-and-set in one statement.
    """
    if "tags" in changes:
        changes = {**changes, "tags": " ".join(changes["tags"])}
    post = await _get_writable_post(session, post_id, viewer, expected_versions)
    changed = {field: value for field, value in changes.items() if getattr(post, field) != value}
    if not changed:
        return post, changed
    if "content" in changed:
        changed.update(_rendered_values(await _rendered(changed["content"])))
    now = utcnow()
    statement = (
        update(Post)
        .where(Post.id == post.id)
        .values(**changed, updated_at=now, version=Post.version + 1)
        .returning(Post.version)
        .execution_options(synchronize_session=False)
    )
    if expected_versions is not None:
        statement = statement.where(Post.version.in_(expected_versions))
    try:
        new_version = (await session.execute(statement)).scalar_one_or_none()
        if new_version is not None and "tags" in changed:
            await _write_tags(session, post.id, changed["tags"].split())
        await session.commit()
    except IntegrityError as exc:
        await session.rollback()
        raise (SlugTaken() if _unique_index_hit(exc) == "slug" else PostTitleExists()) from None
    if new_version is None:
        raise PreconditionFailed() if expected_versions is not None else PostNotFound()
    # Mirror the row just written onto the object, detached so nothing is flushed again.
    session.expunge(post)
    for field, value in changed.items():
        setattr(post, field, value)
    post.updated_at = now
    post.version = new_version
    return post, changed


async def delete_post(
    session: AsyncSession, post_id: int, viewer: User, expected_versions: Versions = None
) -> None:
    post = await _get_writable_post(session, post_id, viewer, expected_versions)
    statement = delete(Post).where(Post.id == post.id).returning(Post.id)
    if expected_versions is not None:
        statement = statement.where(Post.version.in_(expected_versions))
    deleted = (await session.execute(statement)).scalar_one_or_none()
    await session.commit()
    if deleted is None:
        raise PreconditionFailed() if expected_versions is not None else PostNotFound()


# --- listing ---------------------------------------------------------------------------------

_FTS_TOKEN = re.compile(r"\w+", re.UNICODE)


@dataclass
class PostPage:
    posts: list[Row]  # POST_COLUMNS
    next_cursor: Cursor | None
    total: int | None


def _sort_key(sort: PostSort) -> tuple[Any, bool]:
    """The column a sort orders by, and whether it descends."""
    column = {
        "created_at": Post.created_at,
        "updated_at": Post.updated_at,
        "title": Post.title,
    }[sort.value.lstrip("-")]
    return column, sort.value.startswith("-")


def _cursor_value(row: Row, sort: PostSort) -> str:
    value = row[sort.value.lstrip("-")]
    return value.isoformat() if isinstance(value, datetime) else str(value)


def _like_pattern(fragment: str) -> str:
    escaped = fragment.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


@dataclass(frozen=True)
class ListShape:
    """What decides the SQL of a list query (not its values): one prebuilt statement each."""

    postgres: bool
    published: bool
    viewer: str  # "anonymous", "user" or "admin"
    author: bool
    author_id: bool
    tags: int  # how many `tag` filters
    min_date: bool
    max_date: bool
    search: bool
    sort: PostSort
    cursor: bool


_list_statements: dict[ListShape, tuple[AnySelect, AnySelect]] = {}


def _search_condition(postgres: bool) -> ColumnElement[bool]:
    if postgres:
        query = func.plainto_tsquery(literal_column("'english'"), bindparam("q"))
        return Post.search_document.op("@@")(query)
    matching_ids = text("SELECT rowid FROM posts_fts WHERE posts_fts MATCH :q")
    return Post.id.in_(matching_ids.columns(literal_column("rowid")))


def _post_conditions(shape: ListShape) -> list[ColumnElement[bool]]:
    """The filters of a shape on `posts` alone (not `author`, which names users; not the cursor)."""
    conditions: list[ColumnElement[bool]] = []
    if shape.published:
        conditions.append(Post.published.is_(True))
    elif shape.viewer == "anonymous":
        conditions.append(false())  # drafts are never listed anonymously
    else:
        conditions.append(Post.published.is_(False))
        if shape.viewer != "admin":
            conditions.append(Post.author_id == bindparam("viewer_id"))
    if shape.author_id:
        conditions.append(Post.author_id == bindparam("author_id"))
    for index in range(shape.tags):  # each through the (tag, post_id) index
        tagged = select(PostTag.post_id).where(PostTag.tag == bindparam(f"tag_{index}"))
        conditions.append(Post.id.in_(tagged))
    if shape.min_date:
        conditions.append(Post.created_at >= bindparam("min_date", type_=UTCDateTime()))
    if shape.max_date:
        conditions.append(Post.created_at <= bindparam("max_date", type_=UTCDateTime()))
    if shape.search:
        conditions.append(_search_condition(shape.postgres))
    return conditions


def _matching_authors() -> ColumnElement[bool]:
    return func.lower(User.username).like(bindparam("author_pattern"), escape="\\")


def _list_statements_for(shape: ListShape) -> tuple[AnySelect, AnySelect]:
    """The page and count statements of a shape, built once; values are bind parameters."""
    cached = _list_statements.get(shape)
    if cached is not None:
        return cached
    conditions = _post_conditions(shape)
    if shape.author:
        authors = select(User.id).where(_matching_authors()).correlate(None)
        conditions.append(Post.author_id.in_(authors))
    query = select(*POST_COLUMNS).join(User, User.id == Post.author_id).where(*conditions)
    count = select(func.count().label("total")).select_from(query.subquery())
    column, descending = _sort_key(shape.sort)
    if shape.author and shape.postgres:
        page = _page_per_author(shape, column, descending)
    else:
        if shape.cursor:
            query = query.where(_after_cursor(column, descending))
        order = _order(column, descending)
        page = query.order_by(*order).offset(bindparam("offset")).limit(bindparam("limit"))
    if len(_list_statements) > 4096:  # shapes are finite (a few hundred); a bound all the same
        _list_statements.clear()
    _list_statements[shape] = (page, count)
    return page, count


def _page_per_author(shape: ListShape, column: Any, descending: bool) -> AnySelect:
    """The `author` page on PostgreSQL: each matching author's first `offset + limit` posts
    through ix_posts_author_created (a LATERAL subquery), merged and cut. The plain `author_id IN
    (...)` form walks the newest posts of everyone until enough match (~1,000 rows for an author
    of a few hundred posts among 100,000); this reads `offset + limit` rows per author."""
    authors = select(User.id, User.username).where(_matching_authors()).subquery("authors")
    conditions = [Post.author_id == authors.c.id, *_post_conditions(shape)]
    if shape.cursor:
        conditions.append(_after_cursor(column, descending))
    own_columns = [post_column for post_column in POST_COLUMNS if post_column.key != "author"]
    firsts = (
        select(*own_columns)
        .where(*conditions)
        .order_by(*_order(column, descending))
        .limit(bindparam("offset", type_=Integer) + bindparam("limit", type_=Integer))
        .lateral("authored")
    )
    merged = [
        authors.c.username.label("author")
        if post_column.key == "author"
        else firsts.c[post_column.key]
        for post_column in POST_COLUMNS
    ]
    return (
        select(*merged)
        .select_from(authors)
        .join(firsts, true())
        .order_by(*_order(firsts.c[column.key], descending, firsts.c.id))
        .offset(bindparam("offset"))
        .limit(bindparam("limit"))
    )


def _after_cursor(column: Any, descending: bool) -> ColumnElement[bool]:
    """Rows strictly after the cursor's (value, id) in the sort's direction."""
    bound = bindparam("after_value", type_=column.type)
    key, edge = tuple_(column, Post.id), tuple_(bound, bindparam("after_id"))
    return key < edge if descending else key > edge


def _order(column: Any, descending: bool, tiebreak: Any = Post.id) -> tuple[Any, Any]:
    if descending:
        return column.desc(), tiebreak.desc()
    return column.asc(), tiebreak.asc()


def _search_terms(q: str, postgres: bool) -> str | None:
    """The `q` parameter as the search expression takes it; None when nothing can match."""
    if postgres:
        return q
    tokens = _FTS_TOKEN.findall(q)
    return " ".join('"' + token + '"' for token in tokens) if tokens else None


async def list_posts(
    database: Database,
    viewer: User | None,
    filters: PostFilters,
    *,
    skip: int = 0,
    limit: int = 10,
    cursor: str | None = None,
    with_count: bool = False,
) -> PostPage:
    """One page of the posts the viewer may list, in `filters.sort` order, id as tiebreak."""
    role = "anonymous" if viewer is None else "admin" if viewer.role == "admin" else "user"
    params: dict[str, Any] = {"offset": skip, "limit": limit + 1}
    if viewer is not None:
        params["viewer_id"] = viewer.id
    if filters.author:
        params["author_pattern"] = _like_pattern(filters.author)
    if filters.author_id is not None:
        params["author_id"] = filters.author_id
    for index, tag in enumerate(filters.tag):
        params[f"tag_{index}"] = tag
    if filters.min_date is not None:
        params["min_date"] = filters.min_date
    if filters.max_date is not None:
        params["max_date"] = filters.max_date
    if filters.q:
        terms = _search_terms(filters.q, database.is_postgres)
        if terms is None:
            return PostPage([], None, 0 if with_count else None)
        params["q"] = terms
    if cursor is not None:
        after = Cursor.decode(cursor, filters.sort.value)
        by_title = filters.sort.value.lstrip("-") == "title"
        params["after_value"] = after.value if by_title else after.datetime_value()
        params["after_id"] = after.id
    shape = ListShape(
        postgres=database.is_postgres,
        published=filters.published,
        viewer=role,
        author=bool(filters.author),
        author_id=filters.author_id is not None,
        tags=len(filters.tag),
        min_date=filters.min_date is not None,
        max_date=filters.max_date is not None,
        search=bool(filters.q),
        sort=filters.sort,
        cursor=cursor is not None,
    )
    page_query, count_query = _list_statements_for(shape)
    posts = await database.fetch_all(page_query, params)
    next_cursor = None
    if len(posts) > limit:
        posts = posts[:limit]
        last = posts[-1]
        next_cursor = Cursor(filters.sort.value, _cursor_value(last, filters.sort), last["id"])
    total = None
    if with_count:
        total = (await database.fetch_all(count_query, params))[0]["total"]
    return PostPage(posts, next_cursor, total)


# --- slugs, tags, profiles -------------------------------------------------------------------

POST_ID_BY_SLUG = select(Post.id).where(Post.slug == bindparam("slug"))


async def post_id_by_slug(database: Database, slug: str) -> int | None:
    """The id of the post with this (lower-case) slug, whatever its visibility."""
    rows = await database.fetch_all(POST_ID_BY_SLUG, {"slug": slug})
    return rows[0]["id"] if rows else None


TAGS_SORT = "tags"
_tag_count = func.count().label("post_count")
_TAG_COUNTS = (
    select(PostTag.tag.label("name"), _tag_count)
    .join(Post, Post.id == PostTag.post_id)
    .where(Post.published.is_(True))
    .group_by(PostTag.tag)
)
_TAG_ORDER = (_tag_count.desc(), PostTag.tag.asc())
TAG_PAGE = _TAG_COUNTS.order_by(*_TAG_ORDER).offset(bindparam("offset")).limit(bindparam("limit"))
TAG_PAGE_AFTER = (
    _TAG_COUNTS.having(
        or_(
            func.count() < bindparam("after_count"),
            (func.count() == bindparam("after_count")) & (PostTag.tag > bindparam("after_name")),
        )
    )
    .order_by(*_TAG_ORDER)
    .offset(bindparam("offset"))
    .limit(bindparam("limit"))
)


@dataclass
class TagPage:
    tags: list[Row]  # name, post_count
    next_cursor: Cursor | None


async def list_tags(
    database: Database, *, skip: int = 0, limit: int = 50, cursor: str | None = None
) -> TagPage:
    """Tags of published posts with their counts, most used first, ties by name."""
    params: dict[str, Any] = {"offset": skip, "limit": limit + 1}
    statement = TAG_PAGE
    if cursor is not None:
        # A tag cursor carries the last row's name as its value and its count as its id.
        after = Cursor.decode(cursor, TAGS_SORT)
        params["after_name"], params["after_count"] = after.value, after.id
        statement = TAG_PAGE_AFTER
    tags = await database.fetch_all(statement, params)
    next_cursor = None
    if len(tags) > limit:
        tags = tags[:limit]
        last = tags[-1]
        next_cursor = Cursor(TAGS_SORT, last["name"], last["post_count"])
    return TagPage(tags, next_cursor)


MAX_USERNAME_LENGTH = 50
_published_posts_of_user = (
    select(func.count())
    .where(Post.author_id == User.id, Post.published.is_(True))
    .scalar_subquery()
)
PROFILE_BY_USERNAME = select(
    User.id, User.username, User.created_at, _published_posts_of_user.label("post_count")
).where(func.lower(User.username) == bindparam("username"))


async def get_profile(database: Database, username: str) -> Row | None:
    """A user's public profile (matched case-insensitively), or None."""
    if "\x00" in username or len(username) > MAX_USERNAME_LENGTH:  # no user has such a name
        return None
    rows = await database.fetch_all(PROFILE_BY_USERNAME, {"username": username.lower()})
    return rows[0] if rows else None


# --- comments --------------------------------------------------------------------------------

COMMENTS_SORT = "comments"


@dataclass
class CommentPage:
    comments: list[Comment]
    next_cursor: Cursor | None


async def list_comments(
    session: AsyncSession,
    post_id: int,
    viewer: User | None,
    *,
    skip: int = 0,
    limit: int = 10,
    cursor: str | None = None,
) -> CommentPage:
    """A post's comments, oldest first, for anyone who may see the post."""
    await get_visible_post(session, post_id, viewer)
    query = select(Comment).where(Comment.post_id == post_id)
    if cursor is not None:
        after = Cursor.decode(cursor, COMMENTS_SORT)
        edge = tuple_(literal(after.datetime_value(), type_=UTCDateTime()), literal(after.id))
        query = query.where(tuple_(Comment.created_at, Comment.id) > edge)
    query = query.order_by(Comment.created_at, Comment.id).offset(skip).limit(limit + 1)
    comments = list((await session.execute(query)).scalars().all())
    next_cursor = None
    if len(comments) > limit:
        comments = comments[:limit]
        last = comments[-1]
        next_cursor = Cursor(COMMENTS_SORT, last.created_at.isoformat(), last.id)
    return CommentPage(comments, next_cursor)


async def create_comment(
    session: AsyncSession, post_id: int, author: User, text: str, *, commit: bool = True
) -> tuple[Comment, Post]:
    """Add a comment to a post the author may see; returns it with its post."""
    post = await get_visible_post(session, post_id, author)
    owner = await session.merge(author, load=False)  # the session may hold this user already
    comment = Comment(post_id=post.id, author_id=author.id, owner=owner, text=text)
    session.add(comment)
    try:
        await session.flush()
    except IntegrityError:  # the post was deleted since it was read: its foreign key is gone
        await session.rollback()
        raise PostNotFound() from None
    if commit:
        await session.commit()
    return comment, post


async def delete_comment(
    session: AsyncSession, post_id: int, comment_id: int, viewer: User
) -> None:
    """Comment author, post owner and admins may delete; others 403."""
    post = await get_visible_post(session, post_id, viewer)
    query = select(Comment).where(Comment.id == comment_id, Comment.post_id == post.id)
    comment = (await session.execute(query)).scalar_one_or_none()
    if comment is None:
        raise CommentNotFound()
    if not (comment.author_id == viewer.id or _can_write(viewer, post)):
        raise InsufficientPermissions()
    await session.execute(delete(Comment).where(Comment.id == comment.id))
    await session.commit()
