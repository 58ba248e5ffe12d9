"""The vendor pool under generated vendor answers (hypothesis), over real sockets.

A scripted vendor (a raw asyncio server) answers each request with the bytes the example gives it,
written in the pieces the example chooses; the gateway runs beside it on an event loop in a thread of
their own for the whole module (retries and the breaker off, so each request is one vendor call and
no answer changes the next example's). A caller here sends one request per example with a blocking
socket.

- Well-formed answers (any status, reason, repeated fields, Content-Length, chunked with extensions
  and trailers, or read to EOF; informational answers first) reach the caller with the same status,
  fields and body, whatever pieces they came in; the vendor connection is reused after them.
- The same answers with bytes changed, inserted or cut out: the caller gets the vendor's answer or a
  502/504 problem+json (or, once the head went out, a closed connection), nothing is logged as
  unexpected, and the next request is answered normally (no connection is left in a bad state).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import cast

import httptools
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.threaded_gateway import MUTATIONS, Threaded, cut, gateway_beside, mutate

READ_SECONDS = 10.0  # above the vendor timeouts below: an answer still incomplete then hangs
GOOD = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


@dataclass
class Script:
    """What the vendor writes for the next request: these pieces, then a close if ``close``."""

    pieces: list[bytes] = field(default_factory=lambda: [GOOD])
    close: bool = False
    requests: int = 0  # requests the vendor has read
    connections: int = 0  # connections the gateway opened to it


class ScriptedVendor(asyncio.Protocol):
    def __init__(self, script: Script) -> None:
        self.script = script
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not asyncio.Transport subclasses
        self.script.connections += 1

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            assert self.transport is not None
            self.transport.close()

    def on_message_complete(self) -> None:
        self.script.requests += 1
        asyncio.get_running_loop().create_task(self._answer(list(self.script.pieces), self.script.close))

    async def _answer(self, pieces: list[bytes], close: bool) -> None:
        transport = self.transport
        assert transport is not None
        for piece in pieces:
            if transport.is_closing():
                return
            transport.write(piece)
            await asyncio.sleep(0.001)  # a piece of its own on the wire, most of the time
        if close:
            transport.close()


CONFIG = """\
[vendors.v]
base_url = "http://127.0.0.1:{port}"
retry = { attempts = 1 }
circuit = { enabled = false }
timeout = { total_seconds = 2, read_idle_seconds = 1 }
"""


@dataclass
class Served(Threaded):
    script: Script = field(default_factory=Script)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    script = Script()
    folder = tmp_path_factory.mktemp("pool")
    with gateway_beside(
        lambda: ScriptedVendor(script), lambda port: CONFIG.replace("{port}", str(port)), folder
    ) as it:
        yield Served(it.loop, it.port, it.logs, script)


# -- what the vendor answers ---------------------------------------------------------------------

BODILESS = (204, 304)


@dataclass(frozen=True)
class Reply:
    status: int
    reason: str
    fields: tuple[tuple[str, str], ...]
    body: bytes
    framing: str  # "length", "chunked" or "eof"
    chunks: tuple[int, ...]  # chunked: the sizes of the body's chunks
    extension: bool  # chunked: ";ext=1" after each chunk size
    trailer: bool  # chunked: a trailer field after the last chunk
    early_hints: bool  # a 103 before the answer

    @property
    def has_body(self) -> bool:
        return self.status not in BODILESS

    def wire(self, *, head: bool = False) -> bytes:
        """The answer's bytes; ``head``: as the answer to a HEAD request (its fields, no body)."""
        lines = [
            f"HTTP/1.1 {self.status} {self.reason}",
            *(f"{name}: {value}" for name, value in self.fields),
        ]
        body = self.body if self.has_body else b""
        payload = b"" if head else body
        if not self.has_body:
            pass
        elif self.framing == "length":
            lines.append(f"Content-Length: {len(body)}")
        elif self.framing == "chunked":
            lines.append("Transfer-Encoding: chunked")
            if not head:
                ext = b";ext=1" if self.extension else b""
                pieces, at = [], 0
                for size in (*self.chunks, len(body)):
                    piece, at = body[at : at + size], min(len(body), at + size)
                    if piece:
                        pieces.append(b"%x%b\r\n%b\r\n" % (len(piece), ext, piece))
                trailer = b"X-Trailer: t\r\n" if self.trailer else b""
                payload = b"".join(pieces) + b"0\r\n" + trailer + b"\r\n"
        else:
            lines.append("Connection: close")  # the body runs to the end of the connection
        hints = (
            b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n" if self.early_hints else b""
        )
        return hints + "\r\n".join(lines).encode("latin-1") + b"\r\n\r\n" + payload


field_values = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=30)
replies = st.builds(
    Reply,
    # No 429 (the gateway would pause the vendor) and no 401 (a token refresh): both change what follows.
    status=st.sampled_from(
        [200, 201, 202, 204, 206, 301, 302, 304, 400, 403, 404, 409, 418, 422, 500, 502, 503]
    ),
    reason=st.sampled_from(["OK", "", "Some Reason", "x"]),
    fields=st.lists(
        st.tuples(st.sampled_from(["X-V-A", "X-V-B", "X-V-Repeated"]), field_values), max_size=4
    ).map(tuple),
    body=st.binary(max_size=5000),
    framing=st.sampled_from(["length", "chunked", "eof"]),
    chunks=st.lists(st.integers(1, 2000), max_size=4).map(tuple),
    extension=st.booleans(),
    trailer=st.booleans(),
    early_hints=st.booleans(),
)


# -- the caller's side ---------------------------------------------------------------------------


@dataclass
class Answer:
    status: int = 0
    fields: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""

    def values(self, prefix: str) -> list[tuple[str, str]]:
        return [(n.lower(), v) for n, v in self.fields if n.lower().startswith(prefix)]


class _HeadDone(Exception):
    """An answer to HEAD ends with its head (httptools cannot be told; the pool does the same)."""


class Reader:
    def __init__(self, head: bool) -> None:
        self.head = head
        self.answer: Answer | None = None
        self._current = Answer()
        self.parser = httptools.HttpResponseParser(self)

    def on_headers_complete(self) -> None:
        if self.head:
            self.on_message_complete()
            raise _HeadDone

    def on_header(self, name: bytes, value: bytes) -> None:
        self._current.fields.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_body(self, body: bytes) -> None:
        self._current.body += body

    def on_message_complete(self) -> None:
        self._current.status = self.parser.get_status_code()
        self.answer = self._current


def call(port: int, method: str = "GET") -> Answer | None:
    """One request on a new connection; its answer, or None if the gateway closed before it was whole."""
    reader = Reader(head=method == "HEAD")
    with socket.create_connection(("127.0.0.1", port), timeout=READ_SECONDS) as sock:
        sock.sendall(
            f"{method} /v/thing HTTP/1.1\r\nHost: gateway.test\r\nConnection: close\r\n\r\n".encode()
        )
        while reader.answer is None:
            try:
                data = sock.recv(65536)
            except ConnectionResetError:
                return None
            if not data:
                return None
            try:
                reader.parser.feed_data(data)
            except httptools.HttpParserCallbackError as exc:
                if not isinstance(exc.__context__, _HeadDone):
                    raise
    return reader.answer


def script(served: Served, pieces: list[bytes], close: bool) -> None:
    async def set_it() -> None:  # on the loop, between two answers
        served.script.pieces, served.script.close = pieces, close

    served.run(set_it(), 5)


# -- the properties ------------------------------------------------------------------------------


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    reply=replies, points=st.lists(st.integers(0, 10**6), max_size=6), method=st.sampled_from(["GET", "HEAD"])
)
def test_a_vendor_answer_in_any_pieces_reaches_the_caller_as_sent(
    served: Served, reply: Reply, points: list[int], method: str
) -> None:
    script(served, cut(reply.wire(head=method == "HEAD"), points), close=reply.framing == "eof")
    before = served.script.requests
    answer = call(served.port, method)
    assert answer is not None, "the gateway closed without an answer"
    assert served.script.requests == before + 1
    assert answer.status == reply.status, answer.body[:300]
    assert answer.values("x-v-") == [(n.lower(), v) for n, v in reply.fields]
    assert answer.body == (reply.body if reply.has_body and method == "GET" else b"")
    assert served.unexpected() == []


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    reply=replies,
    how=st.lists(MUTATIONS, min_size=1, max_size=3),
    points=st.lists(st.integers(0, 10**6), max_size=3),
)
def test_a_damaged_vendor_answer_is_relayed_or_502_and_leaves_the_pool_sound(
    served: Served, reply: Reply, how: list[tuple[str, int, bytes]], points: list[int]
) -> None:
    wire = reply.wire()
    for change in how:
        wire = mutate(wire, change) or b"\r\n"
    script(served, cut(wire, points), close=True)
    answer = call(served.port)
    if answer is not None and any(
        v == "application/problem+json" for n, v in answer.fields if n.lower() == "content-type"
    ):
        problem = orjson.loads(answer.body)
        assert problem["status"] == answer.status and answer.status in (502, 504), problem
    assert served.unexpected() == []
    # Whatever that answer did to its connection, the next request gets a sound one.
    script(served, [GOOD], close=False)
    after = call(served.port)
    assert after is not None and (after.status, after.body) == (200, b"ok")
