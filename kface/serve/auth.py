"""Who may use a shared ``kface serve``: bearer tokens (read or write) and a per-client rate limit.

An ASGI middleware in front of the app (behind :class:`~kface.serve.guard.RequestGuard`):

- **Tokens**: with any token configured, every route but the page (``/``, ``/static/...``), ``/health``
  and the API description (``/docs``, ``/openapi.json``) needs ``Authorization: Bearer <token>``; a missing
  or unknown token gets 401. A *read* token (``--read-token-file``) may verify, analyze and search; the
  routes that change the gallery (``/enroll``) need a *write* token (``--write-token-file``, or the full
  token of ``--token-file``/``KFACE_TOKEN``), else 403. Tokens are compared in constant time, each against
  every configured token. A token is known by its id (a short sha256 fingerprint), which is what the
  gallery's audit log records; the token itself is never logged.
- **Rate limit**: each client address may start ``rate_per_minute`` requests a minute (a token bucket that
  holds a minute's worth); past it, 429 with ``Retry-After``. Refused tokens count too, so guessing is slow.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import stat
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ..errors import InputError
from .guard import Receive, Scope, Send, answer_error

TOKEN_VARIABLE = "KFACE_TOKEN"
#: Shortest token accepted: shorter ones can be guessed through the rate limit in reasonable time.
MIN_TOKEN_CHARS = 16
DEFAULT_RATE_PER_MINUTE = 240
PUBLIC_PATHS = frozenset({"/", "/health", "/docs", "/openapi.json", "/docs/oauth2-redirect"})
PUBLIC_PREFIXES = ("/static/",)
WRITE_PATHS = frozenset({"/enroll"})
#: The key under which the request's token id travels in the ASGI scope (for the audit log).
TOKEN_ID_KEY = "kface.token_id"
MAKE_TOKEN = "python -c 'import secrets; print(secrets.token_urlsafe(32))' > FILE"


@dataclass(frozen=True)
class Token:
    """One accepted token: its secret, its id, and whether it may change the gallery."""

    secret: bytes
    writes: bool

    @property
    def id(self) -> str:
        return "sha256:" + hashlib.sha256(self.secret).hexdigest()[:12]


@dataclass
class TokenSet:
    """Every token a server accepts (empty: no token needed)."""

    tokens: list[Token] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.tokens)

    def match(self, presented: bytes) -> Optional[Token]:
        """The token equal to ``presented``, compared in constant time with every token."""
        found = None
        for token in self.tokens:
            if hmac.compare_digest(token.secret, presented) and found is None:
                found = token
        return found


def read_token_file(path: os.PathLike, writes: bool) -> list[Token]:
    """The tokens in ``path``: one a line (blank lines and ``#`` comments skipped)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
        mode = path.stat().st_mode
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read the token file ({getattr(exc, 'strerror', None) or exc})") from None
    tokens = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if not tokens:
        raise InputError(f"{path}: no token in the file; make one with {MAKE_TOKEN}")
    for token in tokens:
        check_token(token, str(path))
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        print(f"warning: {path} can be read by other users of this machine; chmod 600 {path}", file=sys.stderr)
    return [Token(token.encode("utf-8"), writes) for token in tokens]


def check_token(token: str, where: str) -> None:
    if len(token) < MIN_TOKEN_CHARS or any(ch.isspace() for ch in token):
        raise InputError(f"{where}: a token must be at least {MIN_TOKEN_CHARS} characters without spaces; "
                         f"make one with {MAKE_TOKEN}")


def load_tokens(full: Optional[str] = None, read: Optional[str] = None, write: Optional[str] = None) -> TokenSet:
    """The tokens of the files ``full`` (``--token-file``; else ``$KFACE_TOKEN``) and ``write``
    (``--write-token-file``), which may read and write, and ``read`` (``--read-token-file``), read only."""
    tokens: list[Token] = []
    if full:
        tokens += read_token_file(full, writes=True)
    elif os.environ.get(TOKEN_VARIABLE):
        secret = os.environ[TOKEN_VARIABLE].strip()
        check_token(secret, TOKEN_VARIABLE)
        tokens.append(Token(secret.encode("utf-8"), writes=True))
    if write:
        tokens += read_token_file(write, writes=True)
    if read:
        tokens += read_token_file(read, writes=False)
    return TokenSet(tokens)


def request_token_id(scope: Scope) -> Optional[str]:
    """The id of the token a request showed (None when the server needs none)."""
    return scope.get(TOKEN_ID_KEY)


class RateLimit:
    """A token bucket per client address: ``per_minute`` requests a minute, a minute's worth at once."""

    def __init__(self, per_minute: int, clock=time.monotonic):
        self.per_minute = per_minute
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # client -> (tokens left, when counted)

    def take(self, client: str) -> float:
        """0 when ``client`` may go on (one request is counted), else the seconds until it may."""
        now = self.clock()
        left, then = self._buckets.get(client, (float(self.per_minute), now))
        left = min(float(self.per_minute), left + (now - then) * self.per_minute / 60.0)
        if left < 1.0:
            self._buckets[client] = (left, now)
            return (1.0 - left) * 60.0 / self.per_minute
        self._buckets[client] = (left - 1.0, now)
        if len(self._buckets) > 10_000:  # forget clients whose buckets are full again
            self._buckets = {key: value for key, value in self._buckets.items()
                             if value[0] + (now - value[1]) * self.per_minute / 60.0 < self.per_minute}
        return 0.0


class TokenGuard:
    """ASGI middleware: the rate limit, then the bearer token of every non-public route."""

    def __init__(self, app, tokens: TokenSet, rate_per_minute: int = DEFAULT_RATE_PER_MINUTE):
        self.app = app
        self.tokens = tokens
        self.limit = RateLimit(rate_per_minute) if rate_per_minute > 0 else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "/")
        public = path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)
        if not public and self.limit is not None:
            client = (scope.get("client") or ("unknown", 0))[0]
            wait = self.limit.take(client)
            if wait > 0:
                await answer_error(send, 429, f"too many requests from {client}: at most {self.limit.per_minute} a "
                                              f"minute; retry in {wait:.0f} s",
                                   extra=[(b"retry-after", str(max(1, round(wait))).encode())])
                return
        if self.tokens and not public:
            token = self.tokens.match(_bearer(scope))
            if token is None:
                await answer_error(send, 401, "this server needs a token: send Authorization: Bearer <token> "
                                              "(the page asks for it)", extra=[(b"www-authenticate", b"Bearer")])
                return
            if path in WRITE_PATHS and not token.writes:
                await answer_error(send, 403, f"this token may search but not change the gallery ({path} needs a "
                                              f"write token)")
                return
            scope = {**scope, TOKEN_ID_KEY: token.id}
        await self.app(scope, receive, send)


def _bearer(scope: Scope) -> bytes:
    for key, value in scope.get("headers", []):
        if key.lower() == b"authorization":
            scheme, _, presented = value.partition(b" ")
            if scheme.lower() == b"bearer":
                return presented.strip()
    return b""
