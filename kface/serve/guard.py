"""The guard in front of ``kface serve``'s app: who may call it, how many bodies at once, how slowly.

An ASGI middleware (it sees each request before any of its body is read):

- **Host**: only loopback names (``localhost``, ``127.x.x.x``, ``[::1]``) unless ``--host`` names another
  address (then that one too; ``0.0.0.0``/``::`` accept any). A DNS-rebinding page reaches 127.0.0.1
  under its own name, so its requests carry a foreign Host and are refused (403).
- **Origin**: a request that carries an ``Origin`` (every cross-site browser POST does) must come from
  the server's own page: an allowed host name on the server's port. Others, ``null`` included, get 403,
  so a web page the user visits cannot post photos to the local server or read its answers.
- **Requests in flight**: at most ``max_in_flight`` requests with a body are let in at once; the others
  wait up to ``slot_wait_s`` for a slot without a byte of their body read (uvicorn stops reading a socket
  whose request is not being read past 64 KiB), then get 503. Body memory is therefore bounded by
  ``max_in_flight × max_request_bytes`` (see :func:`memory_bound_bytes`), however many clients upload.
- **Body-read timeout**: a request's whole body must arrive within ``body_timeout_s`` of its headers, or
  it gets 408 and the connection is closed (a slow client holds a slot no longer than that).
"""
from __future__ import annotations

import asyncio
import ipaddress
import json
from typing import Awaitable, Callable, Optional
from urllib.parse import urlsplit

DEFAULT_MAX_IN_FLIGHT = 8
DEFAULT_BODY_TIMEOUT_S = 60.0
DEFAULT_SLOT_WAIT_S = 30.0
#: Copies of its body a request holds at most while it is parsed: each part grows in a bytearray (which
#: over-allocates by up to an eighth) and is then copied to bytes once; 3 leaves room for both.
BODY_COPIES = 3
BODILESS_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
ANY_ADDRESS = frozenset({"0.0.0.0", "::", ""})

Scope = dict
Receive = Callable[[], Awaitable[dict]]
Send = Callable[[dict], Awaitable[None]]


class _BodyTimeout(BaseException):
    """Raised into the app when a body is too slow. A BaseException, so that the app's handler of
    unexpected errors (``except Exception``) lets it through to the guard, which answers 408."""


def memory_bound_bytes(max_in_flight: int, max_request_bytes: int) -> int:
    """Upper bound on the memory all request bodies take at once (on top of the models)."""
    return max_in_flight * max_request_bytes * BODY_COPIES


def host_name(value: str) -> str:
    """The name in a Host header or URL netloc, without port or IPv6 brackets, lower case."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:value.find("]")] if "]" in value else value[1:]
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def is_loopback_name(name: str) -> bool:
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class RequestGuard:
    """ASGI middleware: Host and Origin checks, a cap on requests in flight, a body-read timeout."""

    def __init__(self, app, *, listen_host: str, port: int, max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
                 body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S, slot_wait_s: float = DEFAULT_SLOT_WAIT_S):
        if max_in_flight < 1 or body_timeout_s <= 0 or slot_wait_s < 0:
            raise ValueError("max_in_flight >= 1, body_timeout_s > 0 and slot_wait_s >= 0 are needed")
        self.app = app
        self.port = port
        listen = host_name(listen_host)
        self.any_host = listen in ANY_ADDRESS
        self.extra_host: Optional[str] = None if self.any_host or is_loopback_name(listen) else listen
        self.max_in_flight = max_in_flight
        self.body_timeout_s = body_timeout_s
        self.slot_wait_s = slot_wait_s
        self._slots: Optional[asyncio.Semaphore] = None  # made in the server's event loop

    def host_allowed(self, name: str) -> bool:
        return self.any_host or is_loopback_name(name) or name == self.extra_host

    def origin_allowed(self, origin: str) -> bool:
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            return False  # "null" (sandboxed frames, file: pages) and anything odd
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            return False
        return self.host_allowed(parts.hostname.lower()) and port == self.port

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {key.lower(): value.decode("latin-1") for key, value in scope.get("headers", [])}
        host = host_name(headers.get(b"host", ""))
        if not self.host_allowed(host):
            await answer_error(send, 403, f"Host '{host}' is not this server's; use http://127.0.0.1:{self.port}/ "
                                          f"(other names need kface serve --host)")
            return
        origin = headers.get(b"origin")
        if origin is not None and not self.origin_allowed(origin):
            await answer_error(send, 403, f"requests from the page at {origin[:100]} are refused: only this "
                                          f"server's own page may call it")
            return
        if scope.get("method", "GET") in BODILESS_METHODS:
            await self.app(scope, receive, send)
            return
        await self._bodied(scope, receive, send)

    async def _bodied(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.max_in_flight)
        try:
            await asyncio.wait_for(self._slots.acquire(), self.slot_wait_s)
        except asyncio.TimeoutError:
            await answer_error(send, 503, f"the server is busy ({self.max_in_flight} requests in progress); "
                                          f"retry shortly", extra=[(b"retry-after", b"5")])
            return
        try:
            await self._with_deadline(scope, receive, send)
        finally:
            self._slots.release()

    async def _with_deadline(self, scope: Scope, receive: Receive, send: Send) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.body_timeout_s
        state = {"body_done": False, "started": False}

        async def timed_receive() -> dict:
            if state["body_done"]:
                return await receive()  # after the body only a disconnect can come: no deadline
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
            except asyncio.TimeoutError:
                raise _BodyTimeout() from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                state["body_done"] = True
            return message

        async def tracking_send(message: dict) -> None:
            if message["type"] == "http.response.start":
                state["started"] = True
            await send(message)

        try:
            await self.app(scope, timed_receive, tracking_send)
        except _BodyTimeout:
            if not state["started"]:
                await answer_error(send, 408, f"the request body did not arrive within {self.body_timeout_s:g} s; "
                                              f"send it faster or in a smaller request")


async def answer_error(send: Send, status: int, message: str, extra: Optional[list] = None) -> None:
    """A JSON error as the app's own (``{"detail": ...}``), closing the connection."""
    body = json.dumps({"detail": " ".join(message.split())}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               (b"connection", b"close"), *(extra or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
