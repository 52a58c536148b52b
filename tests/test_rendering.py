"""Markdown rendering and its sanitizer: the allow-list checked on the parsed HTML, not on
substrings; excerpt, reading time and slugs."""

from __future__ import annotations

from html.parser import HTMLParser

import pytest

from rendering import (
    ALLOWED_TAGS,
    excerpt_of,
    numbered_slug,
    render,
    slug_from_title,
)

URL_ATTRIBUTES = {"href", "src", "action", "formaction", "xlink:href", "background", "poster"}


class Elements(HTMLParser):
    """Every start tag with its attributes, and the text, of an HTML fragment."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, dict(attrs)))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse(fragment: str) -> Elements:
    parser = Elements()
    parser.feed(fragment)
    parser.close()
    return parser


def assert_safe(fragment: str) -> Elements:
    """Only allow-listed elements; no event attribute; URLs http(s), mailto (links) or relative;
    every link rel="nofollow noopener"."""
    parsed = parse(fragment)
    for tag, attrs in parsed.elements:
        assert tag in ALLOWED_TAGS, (tag, fragment)
        for name, value in attrs.items():
            assert not name.startswith("on"), (name, fragment)
            assert name not in ("style", "srcdoc", "formaction"), (name, fragment)
            if name in URL_ATTRIBUTES:
                assert value is not None
                scheme = value.split(":", 1)[0].strip().lower() if ":" in value else ""
                if "/" in scheme or "?" in scheme or "#" in scheme:
                    scheme = ""  # a relative URL with a colon later on
                allowed = {"http", "https", "mailto"} if tag == "a" else {"http", "https"}
                assert scheme == "" or scheme in allowed, (tag, name, value)
        if tag == "a":
            assert attrs.get("rel") == "nofollow noopener", attrs
    return parsed


XSS_PAYLOADS = [
    "<script>alert(1)</script>",
    "<SCRIPT SRC=//evil.example/x.js></SCRIPT>",
    "<img src=x onerror=alert(1)>",
    '<img src="javascript:alert(1)">',
    "<body onload=alert(1)>",
    '<a href="javascript:alert(1)">x</a>',
    '<a href="JaVaScRiPt:alert(1)">x</a>',
    '<a href="&#106;avascript:alert(1)">x</a>',
    '<a href=" javascript:alert(1)">x</a>',
    '<a href="vbscript:msgbox(1)">x</a>',
    '<a href="data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==">x</a>',
    '<img src="data:image/svg+xml;base64,PHN2Zy8+">',
    "![x](data:image/png;base64,iVBORw0KGgo=)",
    "[x](javascript:alert(1))",
    "![x](mailto:someone@example.com)",
    '<iframe src="https://evil.example"></iframe>',
    '<iframe srcdoc="<script>alert(1)</script>"></iframe>',
    "<svg onload=alert(1)><circle r=1 /></svg>",
    "<svg><script>alert(1)</script></svg>",
    "<math><mtext><table><mglyph><style><img src=x onerror=alert(1)>",
    "<style>body{display:none}</style>",
    '<p style="background:url(javascript:alert(1))">x</p>',
    '<object data="evil.swf"></object><embed src="evil.swf">',
    '<form action="javascript:alert(1)"><button formaction="javascript:alert(1)">x</button></form>',
    "<input autofocus onfocus=alert(1)>",
    '<a href="https://ok.example" onclick="alert(1)" onmouseover=alert(1)>ok</a>',
    "<<script>alert(1)//<</script>",
    "<scr<script>ipt>alert(1)</scr</script>ipt>",
    '<img """><script>alert(1)</script>">',
    '<div><p><a href="javascript:alert(1)"><b>nested</b></a></p></div>',
    "<!--<img src=x onerror=alert(1)>-->",
    '<a href="https://ok.example" target="_blank" rel="opener">x</a>',
    '<meta http-equiv="refresh" content="0;url=javascript:alert(1)">',
    '<base href="javascript:alert(1)//">',
    '<link rel="stylesheet" href="https://evil.example/x.css">',
    '<video poster="javascript:alert(1)"><source src="x"></video>',
    "<details open ontoggle=alert(1)>",
    '<table background="javascript:alert(1)"><tr><td>x</td></tr></table>',
]


@pytest.mark.parametrize("payload", XSS_PAYLOADS)
def test_classic_xss_payloads_are_neutralised(payload: str) -> None:
    assert_safe(render(payload).html)


def test_the_check_itself_catches_unsafe_html() -> None:
    for unsafe in ("<script>x</script>", '<img src=x onerror="a()">', '<a href="javascript:x">'):
        with pytest.raises(AssertionError):
            assert_safe(unsafe)


def test_script_and_style_content_is_dropped() -> None:
    parsed = assert_safe(render("before <script>alert(1)</script><style>p{}</style> after").html)
    text = "".join(parsed.text)
    assert "alert" not in text and "p{}" not in text
    assert "before" in text and "after" in text


def test_markdown_formatting_survives() -> None:
    source = (
        "# Title\n\n## Sub\n\nSome *em*, **strong**, ~~gone~~ and `code`.\n\n"
        "> quoted\n\n- one\n- two\n\n3. three\n4. four\n\n"
        "[site](https://example.com/a?b=1) [rel](/posts/1) [mail](mailto:a@example.com)\n\n"
        "![pic](https://example.com/p.png)\n\n---\n\n"
        "| a | b |\n| :- | -: |\n| 1 | 2 |\n\n```python\nprint(1)\n```\n\nline  \nbreak\n"
    )
    parsed = assert_safe(render(source).html)
    tags = {tag for tag, _ in parsed.elements}
    assert tags >= {"h1", "h2", "p", "em", "strong", "del", "code", "blockquote", "ul", "ol"}
    assert tags >= {"li", "a", "img", "hr", "table", "thead", "tbody", "tr", "th", "td"}
    assert tags >= {"pre", "br"}
    links = [attrs["href"] for tag, attrs in parsed.elements if tag == "a"]
    assert links == ["https://example.com/a?b=1", "/posts/1", "mailto:a@example.com"]
    (image,) = [attrs for tag, attrs in parsed.elements if tag == "img"]
    assert image["src"] == "https://example.com/p.png" and image["alt"] == "pic"
    (ordered,) = [attrs for tag, attrs in parsed.elements if tag == "ol"]
    assert ordered["start"] == "3"
    codes = [attrs for tag, attrs in parsed.elements if tag == "code"]
    assert {"class": "language-python"} in codes


def test_harmful_urls_are_removed_but_the_text_stays() -> None:
    parsed = assert_safe(render('<a href="javascript:alert(1)">click</a>').html)
    assert "click" in "".join(parsed.text)
    assert all("href" not in attrs for tag, attrs in parsed.elements if tag == "a")
    parsed = assert_safe(render("![x](data:image/png;base64,AAAA)").html)
    assert all("src" not in attrs for tag, attrs in parsed.elements if tag == "img")


def test_code_class_is_only_a_language() -> None:
    parsed = assert_safe(render('<code class="evil x">a</code>').html)
    assert all("class" not in attrs for tag, attrs in parsed.elements if tag == "code")


def test_excerpt_plain_text_collapsed() -> None:
    rendered = render("# Head\n\nSome   *text*\n\nwith &amp; entities & <b>bold</b>\n")
    assert rendered.excerpt == "Head Some text with & entities & bold"
    assert rendered.reading_time_minutes == 1


def test_excerpt_cut_at_a_word_boundary() -> None:
    words = " ".join(f"word{n}" for n in range(100))
    excerpt = render(words).excerpt
    assert len(excerpt) <= 200
    assert excerpt.endswith("…")
    kept = excerpt[:-1].split(" ")
    assert kept == words.split(" ")[: len(kept)]  # whole words only
    assert len(excerpt) > 180
    assert excerpt_of("a" * 300) == "a" * 199 + "…"  # one giant word: cut inside it
    assert excerpt_of("short") == "short"
    exact = "x" * 200
    assert excerpt_of(exact) == exact


@pytest.mark.parametrize(("words", "minutes"), [(1, 1), (230, 1), (231, 2), (460, 2), (461, 3)])
def test_reading_time(words: int, minutes: int) -> None:
    assert render(" ".join(["w"] * words)).reading_time_minutes == minutes


def test_slugs() -> None:
    assert slug_from_title("Crème brûlée à Paris") == "creme-brulee-a-paris"
    assert slug_from_title("Hello, World!") == "hello-world"
    assert slug_from_title("!!!") == "post"
    assert slug_from_title("日本語") != ""
    long = slug_from_title("word " * 40)
    assert len(long) <= 80 and not long.endswith("-")
    assert numbered_slug("a" * 80, 12) == "a" * 77 + "-12"
    assert numbered_slug("ab-" + "c" * 76, 2).endswith("-2")
    assert "--" not in numbered_slug("abc-" + "d" * 75, 123)
