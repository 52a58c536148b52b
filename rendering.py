"""What a post's stored derived fields are made of: sanitized HTML, excerpt, reading time, slug.

Computed when a post is written (and by migration 0006 for older rows), never per read.
"""

from __future__ import annotations

import html
import math
import re
from dataclasses import dataclass

import nh3
from markdown_it import MarkdownIt
from markdown_it.rules_core import StateCore
from slugify import slugify

EXCERPT_MAX_CHARS = 200
WORDS_PER_MINUTE = 230
SLUG_MAX_LENGTH = 80
SLUG_PATTERN = r"^[a-z0-9]+(?:-[a-z0-9]+)*$"
SLUG_FORM = re.compile(SLUG_PATTERN)
DEFAULT_SLUG = "post"

# The only elements and attributes that survive; everything else (script, style, iframe, svg,
# forms, event attributes, ...) is removed, the contents of script and style with it.
ALLOWED_TAGS = {
    *("p", "h1", "h2", "h3", "h4", "h5", "h6", "em", "strong", "del", "a", "img"),
    *("ul", "ol", "li", "blockquote", "code", "pre", "hr", "br"),
    *("table", "thead", "tbody", "tr", "th", "td"),
}
ALLOWED_ATTRIBUTES = {
    "a": {"href", "title"},
    "img": {"src", "alt", "title"},
    "ol": {"start"},
    "code": {"class"},
}
# Every URL attribute must use one of these or be relative; img src additionally not mailto.
URL_SCHEMES = {"http", "https", "mailto"}
LINK_REL = "nofollow noopener"
_CODE_LANGUAGE = re.compile(r"^language-[A-Za-z0-9_+#.-]{1,40}$")
_URL_SCHEME = re.compile(r"^\s*([A-Za-z][A-Za-z0-9+.-]*):")


def _attribute_filter(element: str, attribute: str, value: str) -> str | None:
    if element == "img" and attribute == "src":
        scheme = _URL_SCHEME.match(value)
        if scheme and scheme.group(1).lower() not in ("http", "https"):
            return None
    if element == "code" and attribute == "class":  # a fenced block's language, nothing else
        return value if _CODE_LANGUAGE.match(value) else None
    return value


_sanitizer = nh3.Cleaner(
    tags=ALLOWED_TAGS,
    clean_content_tags={"script", "style"},
    attributes=ALLOWED_ATTRIBUTES,
    attribute_filter=_attribute_filter,
    url_schemes=URL_SCHEMES,
    link_rel=LINK_REL,
    strip_comments=True,
)
_text_only = nh3.Cleaner(tags=set(), clean_content_tags={"script", "style"}, attributes={})


def _strikethrough_as_del(state: StateCore) -> None:
    """markdown-it writes ~~x~~ as <s>; the allow-list (and HTML's meaning) is <del>."""
    for token in state.tokens:
        for child in token.children or ():
            if child.type in ("s_open", "s_close"):
                child.tag = "del"


_markdown = MarkdownIt("commonmark", {"html": True}).enable(["table", "strikethrough"])
_markdown.core.ruler.push("strikethrough_as_del", _strikethrough_as_del)


@dataclass(frozen=True)
class Rendered:
    html: str
    excerpt: str
    reading_time_minutes: int


def sanitize(fragment: str) -> str:
    """HTML reduced to the allow-list (see ALLOWED_TAGS, ALLOWED_ATTRIBUTES, URL_SCHEMES)."""
    return _sanitizer.clean(fragment)


def render(content: str) -> Rendered:
    """A post's Markdown as sanitized HTML, with its excerpt and reading time."""
    safe_html = sanitize(_markdown.render(content))
    text = " ".join(html.unescape(_text_only.clean(safe_html)).split())
    words = len(text.split())
    return Rendered(
        html=safe_html,
        excerpt=excerpt_of(text),
        reading_time_minutes=max(1, math.ceil(words / WORDS_PER_MINUTE)),
    )


def excerpt_of(text: str, limit: int = EXCERPT_MAX_CHARS) -> str:
    """At most `limit` characters, cut at a word boundary and ending in an ellipsis when cut."""
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]  # room for the ellipsis
    if text[limit - 1] != " " and " " in cut:  # mid-word: back to the word's start
        cut = cut[: cut.rindex(" ")]
    return cut.rstrip() + "…"


def slug_from_title(title: str) -> str:
    """The title transliterated to a slug (`Crème brûlée` -> `creme-brulee`), or `post`."""
    return slugify(title, max_length=SLUG_MAX_LENGTH, word_boundary=True) or DEFAULT_SLUG


def numbered_slug(base: str, number: int) -> str:
    """`base-N`, the base shortened so the whole stays within SLUG_MAX_LENGTH."""
    suffix = f"-{number}"
    return base[: SLUG_MAX_LENGTH - len(suffix)].rstrip("-") + suffix
