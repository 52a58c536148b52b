"""The Atom feed of the newest published posts, built with feedgen."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from urllib.parse import urlencode

from database import Row

FEED_SIZE = 20
FEED_TITLE = "Blog API"
# An empty feed's `updated`: a fixed time, so that its ETag does not change by itself.
EMPTY_FEED_UPDATED = datetime(1970, 1, 1, tzinfo=UTC)


# What XML 1.0 cannot carry (control characters other than tab and line ends, lone surrogates,
# U+FFFE/U+FFFF): titles and content may hold them, a feed shows U+FFFD instead.
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _xml_text(value: str) -> str:
    return _NOT_XML.sub("\ufffd", value)


def feed_path(tags: Sequence[str]) -> str:
    return "/feed.atom" + (f"?{urlencode({'tag': list(tags)}, doseq=True)}" if tags else "")


def feed_etag(base_url: str, tags: Sequence[str], posts: Sequence[Row]) -> str:
    """A strong validator computed without building the feed: an entry changes only with its
    post's version, so the base URL, the tags and each (id, version) decide the document."""
    key = "\n".join([base_url, *tags, *(f"{post['id']}-{post['version']}" for post in posts)])
    return '"feed-' + hashlib.sha256(key.encode()).hexdigest()[:32] + '"'


def build_feed(base_url: str, tags: Sequence[str], posts: Sequence[Row]) -> bytes:
    """Atom 1.0 for these posts (newest first); every link absolute on `base_url`."""
    # Imported on first use: feedgen brings lxml (~12 MB per worker) that most workers never need.
    from feedgen.feed import FeedGenerator

    feed = FeedGenerator()
    self_url = base_url + feed_path(tags)
    feed.id(self_url)
    feed.title(FEED_TITLE + (f": {', '.join(tags)}" if tags else ""))
    feed.link(href=self_url, rel="self", type="application/atom+xml")
    feed.link(href=base_url + "/posts", rel="alternate", type="application/json")
    feed.updated(max((post["updated_at"] for post in posts), default=EMPTY_FEED_UPDATED))
    for post in reversed(posts):  # feedgen puts each new entry first
        url = f"{base_url}/posts/{post['id']}"
        entry = feed.add_entry()
        entry.id(url)  # by id, not slug: stable across every edit
        entry.title(_xml_text(post["title"]))
        entry.link(href=url, rel="alternate", type="application/json")
        entry.published(post["created_at"])
        entry.updated(post["updated_at"])
        entry.author(name=post["author"])
        entry.summary(_xml_text(post["excerpt"]))
        entry.content(_xml_text(post["content_html"]), type="html")
        for tag in post["tags"].split():
            entry.category(term=tag)
    document: bytes = feed.atom_str(pretty=False, encoding="UTF-8")
    return document
