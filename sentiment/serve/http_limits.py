"""What the HTTP layer refuses, and how long it waits for a client.

Every request passes :class:`Guard` (an ASGI middleware) and every connection
:class:`TimedH11Protocol` (uvicorn's h11 protocol with deadlines). Together they keep the
server's memory and connections bounded whatever clients send:

- the request line and headers must arrive within ``HEAD_TIMEOUT_S`` of the first byte
  (of the connection opening, for its first request), or the connection is closed;
- a body must keep coming: ``BODY_GRACE_S`` plus one second per ``MIN_BODY_RATE`` bytes
  received so far, counted only while the server waits for it, else 408;
- a body over the cap is refused unread when its Content-Length says so, and reading
  stops at the cap when it comes in chunks (413);
- bodies over ``SMALL_BODY`` are read and parsed ``readers`` at a time (``--concurrency``):
  a JSON body takes many times its size in memory once parsed, so memory follows the
  number of these readers, not the number of connections;
- at most ``MAX_CONNECTIONS`` connections at once; more get 503;
- both Content-Length and Transfer-Encoding (a request smuggling trick: proxies and
  servers may disagree on where the body ends) is 400, a compressed body 415.
"""
from __future__ import annotations

import asyncio
import json
import time
from typing import Callable

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

HEAD_TIMEOUT_S = 5.0
BODY_GRACE_S = 10.0
MIN_BODY_RATE = 64 * 1024
SMALL_BODY = 64 * 1024
MAX_CONNECTIONS = 256
KEEP_ALIVE_S = 5
# On SIGTERM or Ctrl-C, how long requests under way may take to be answered before the
# server exits anyway (the page's open event streams would otherwise keep it up).
GRACE_S = 5
# An error page rewritten as JSON keeps this much of the original text.
ERROR_TEXT_CHARS = 500


def error_response(status: int, message: str, close: bool = False) -> tuple[dict, dict]:
    """The ASGI messages of ``{"error": message}`` with ``status``."""
    body = json.dumps({"error": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if close:  # the body was left unread: the connection cannot carry another request
        headers.append((b"connection", b"close"))
    return ({"type": "http.response.start", "status": status, "headers": headers},
            {"type": "http.response.body", "body": body})


def _refusal_of_head(headers: dict[bytes, bytes], limit: int, cap: str) -> tuple[int, str] | None:
    """Why a request is refused from its headers alone, or None."""
    if b"transfer-encoding" in headers and b"content-length" in headers:
        return 400, ("a request may not have both Content-Length and Transfer-Encoding headers "
                     "(their bodies can be read two ways)")
    encoding = headers.get(b"content-encoding", b"identity").strip().lower()
    if encoding not in (b"", b"identity"):
        return 415, (f"Content-Encoding {encoding.decode('latin-1')}: compressed request bodies are not "
                     "accepted; send the body uncompressed")
    length = headers.get(b"content-length", b"")
    if length.isdigit() and int(length) > limit:
        return 413, cap
    return None


class Guard:
    """ASGI middleware: refuses what the server will not read, and times and counts every request.

    ``observe(path, status, seconds)`` is called once per request; paths for which
    ``json_errors(path)`` is true get every error as ``{"error": ...}``, whatever answered it.
    """

    def __init__(self, app, limit: int, cap: str, readers: int, observe: Callable[[str, int, float], None],
                 json_errors: Callable[[str], bool]):
        self.app, self.limit, self.cap, self.observe, self.json_errors = app, limit, cap, observe, json_errors
        self.readers = asyncio.Semaphore(readers)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        exchange = _Exchange(self, scope, receive, send)
        try:
            await exchange.run()
        finally:
            if exchange.reading:
                self.readers.release()
            self.observe(scope["path"], exchange.status, time.perf_counter() - started)


class _Exchange:
    """One request through the guard: its body as it arrives, and the answer that goes out."""

    def __init__(self, guard: Guard, scope, receive, send):
        self.guard, self.scope, self.inner_receive, self.inner_send = guard, scope, receive, send
        self.status = 500
        self.seen, self.waited = 0, 0.0
        self.body_done = False
        self.reading = False  # holds one of the guard's readers
        self.refusal: tuple[int, str] | None = None
        self.answered = False
        self.error_start: dict | None = None  # an error answer being rewritten as JSON
        self.error_text = b""

    async def run(self) -> None:
        headers = dict(self.scope.get("headers") or [])
        refusal = _refusal_of_head(headers, self.guard.limit, self.guard.cap)
        if refusal:
            return await self.answer(*refusal)
        length = headers.get(b"content-length", b"")
        if length.isdigit() and int(length) > SMALL_BODY:
            await self.take_reader()
        try:
            await self.guard.app(self.scope, self.receive, self.send)
        except Exception:
            if not self.refusal:
                raise  # after a refusal, the application's trouble with the cut body is expected
        finally:
            if self.refusal and not self.answered:
                await self.answer(*self.refusal)

    async def take_reader(self) -> None:
        await self.guard.readers.acquire()
        self.reading = True

    async def answer(self, status: int, message: str) -> None:
        self.status, self.answered = status, True
        for part in error_response(status, message, close=True):
            await self.inner_send(part)

    def refuse(self, status: int, message: str) -> dict:
        # The application sees its body end here; whatever it answers is replaced by the refusal.
        self.refusal = (status, message)
        return {"type": "http.request", "body": b"", "more_body": False}

    async def receive(self) -> dict:
        if self.refusal:
            return {"type": "http.disconnect"}
        if self.body_done:  # from here on, receive only says when the client goes away
            return await self.inner_receive()
        budget = BODY_GRACE_S + self.seen / MIN_BODY_RATE - self.waited
        began = time.monotonic()
        try:
            message = await asyncio.wait_for(self.inner_receive(), timeout=max(budget, 0.001))
        except asyncio.TimeoutError:
            return self.refuse(408, f"the request body stopped arriving ({self.seen:,} bytes in "
                                    f"{self.waited + budget:.0f} s)")
        self.waited += time.monotonic() - began
        if message["type"] != "http.request":
            return message
        self.seen += len(message.get("body", b""))
        self.body_done = not message.get("more_body", False)
        if self.seen > self.guard.limit:
            return self.refuse(413, self.guard.cap)
        if self.seen > SMALL_BODY and not self.reading:
            await self.take_reader()
        return message

    async def send(self, message: dict) -> None:
        if self.refusal or self.answered:
            return
        if message["type"] == "http.response.start":
            self.status = message["status"]
            content_type = dict(message.get("headers") or []).get(b"content-type", b"")
            if self.status >= 400 and not content_type.startswith(b"application/json") \
                    and self.guard.json_errors(self.scope["path"]):
                self.error_start = message
                return
        elif self.error_start is not None:
            self.error_text += message.get("body", b"")
            if not message.get("more_body", False):
                await self.rewritten_error()
            return
        await self.inner_send(message)

    async def rewritten_error(self) -> None:
        """An error answered as text (by a library below the API) in the API's own shape."""
        from http import HTTPStatus

        text = self.error_text.decode("utf-8", "replace").strip()[:ERROR_TEXT_CHARS]
        start, body = error_response(self.status, text or HTTPStatus(self.status).phrase)
        kept = [(k, v) for k, v in self.error_start.get("headers") or []
                if k not in (b"content-type", b"content-length")]
        start["headers"] += kept
        await self.inner_send(start)
        await self.inner_send(body)


def _raw_error(status: int, reason: str, message: str) -> bytes:
    """A whole HTTP response, for answers sent before any request could be read."""
    body = json.dumps({"error": message}).encode()
    return (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
            "connection: close\r\n\r\n").encode() + body


class TimedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, plus a deadline for the request head and JSON for its own errors.

    uvicorn itself waits forever for a request that never finishes its headers (and
    once any byte arrives, its keep-alive timer stops too); this closes such a
    connection ``HEAD_TIMEOUT_S`` after its first byte, or after it opened.
    """

    head_timer: asyncio.TimerHandle | None = None
    head_begun = False  # bytes of a request head have arrived since the timer was armed

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        if len(self.connections) > MAX_CONNECTIONS:
            transport.write(_raw_error(503, "Service Unavailable",
                                       f"over {MAX_CONNECTIONS} connections at once; try again shortly"))
            transport.close()
            return
        self._arm_head_timer()

    def data_received(self, data: bytes) -> None:
        if self.conn.their_state is h11.IDLE:
            self._arm_head_timer()
            self.head_begun = True
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE or self.transport.is_closing():
            self._cancel_head_timer()

    def connection_lost(self, exc) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def _arm_head_timer(self) -> None:
        if self.head_timer is None:
            self.head_timer = self.loop.call_later(HEAD_TIMEOUT_S, self._head_too_slow)

    def _cancel_head_timer(self) -> None:
        if self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None
        self.head_begun = False

    def _head_too_slow(self) -> None:
        self.head_timer = None
        if self.transport.is_closing():
            return
        # A connection that never sent a byte (a browser opens some ahead of need) is
        # closed silently, as an idle kept-alive one is: an answer there could be taken
        # for the answer to a request sent at that moment.
        if self.head_begun:
            self.transport.write(_raw_error(408, "Request Timeout",
                                            f"the request headers did not arrive within {HEAD_TIMEOUT_S:g} s"))
        self.transport.close()

    def send_400_response(self, msg: str) -> None:
        self._cancel_head_timer()
        self.transport.write(_raw_error(400, "Bad Request", "not a valid HTTP request"))
        self.transport.close()


def server_config(app, host: str, port: int):
    """uvicorn's configuration with the limits above."""
    import uvicorn

    # The connection cap is TimedH11Protocol's own, answered in JSON; uvicorn's
    # limit_concurrency would also count requests and answer in plain text.
    return uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False, http=TimedH11Protocol,
                          timeout_keep_alive=KEEP_ALIVE_S, timeout_graceful_shutdown=GRACE_S)
