"""The browser security and caching headers of every HTTP response (edge.EdgeMiddleware adds
them): X-Content-Type-Options, X-Frame-Options, Referrer-Policy, a strict Content-Security-Policy
and how the answer may be cached (Cache-Control, see cache_control; Vary: Authorization)."""

from __future__ import annotations

from collections.abc import Iterable

# JSON never needs to load, run, frame or embed anything.
API_CONTENT_SECURITY_POLICY = (
    "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)

SECURITY_HEADERS = (
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
)

RAW_SECURITY_HEADERS = tuple(
    (name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in SECURITY_HEADERS
)

# Never stored by any cache: liveness, readiness and metrics must be fresh; the caller's account.
NO_STORE_PATHS = frozenset({"/", "/metrics", "/users/me"})
NO_STORE_PREFIXES = ("/health/",)
STATIC_PREFIX = "/static/"  # versioned assets: offline_docs sets their own policy
STORABLE_STATUSES = frozenset({200, 203, 204, 206, 304})


def cache_control(path: str, method: str, status: int, authorized: bool) -> str:
    """What a cache may do with an answer that did not say it itself.

    With a token, the answer is the caller's (`private`; drafts need one). A public read may
    be stored by a shared cache but must be revalidated each time (`no-cache`; posts carry an
    ETag), so no one is served a stale read after a write. Everything else, errors and writes
    included, is not stored."""
    storable = (
        method in ("GET", "HEAD")
        and status in STORABLE_STATUSES
        and path not in NO_STORE_PATHS
        and not path.startswith(NO_STORE_PREFIXES)
    )
    if authorized:
        return "private" if storable else "private, no-store"
    return "public, no-cache" if storable else "no-store"


def docs_content_security_policy(script_hashes: Iterable[str] = ()) -> str:
    """The policy of the Swagger UI and ReDoc pages: only this origin's assets and API.

    Inline scripts run only when listed by hash; inline styles are allowed because both UIs set
    styles at run time; ReDoc's search runs in a worker made from a blob: URL.
    """
    scripts = " ".join(["'self'", *script_hashes])
    return (
        "default-src 'none'; "
        f"script-src {scripts}; "
        "style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; "
        "font-src 'self' data:; "
        "connect-src 'self'; "
        "worker-src 'self' blob:; "
        "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    )
