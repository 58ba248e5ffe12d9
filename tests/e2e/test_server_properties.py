"""The gateway's own HTTP/1.1 server under generated input (hypothesis), over real sockets.

A vendor and the gateway run on an event loop in a thread of their own for the whole module; each
example opens a connection to the gateway with a blocking socket, as a caller would. The vendor is a
raw httptools server that echoes what reached it (method, raw target, chosen headers, body), so both
ends of a request are seen byte for byte.

- Well-formed requests, one to four pipelined on a connection, with Content-Length or chunked bodies,
  cut into arbitrary pieces on the wire: every one is answered, in order, by the vendor, with exactly
  the target, headers and body that were sent.
- The same requests with bytes changed, inserted or cut out, then the caller's side shut: whatever
  comes back parses as HTTP/1.1, every answer is the vendor's or a problem+json of the gateway naming
  a caller's fault (never a 5xx of its own), nothing is logged as unexpected, and the connection is
  closed within the server's timeouts.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import cast

import httptools
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.threaded_gateway import MUTATIONS, Threaded, cut, gateway_beside, mutate

READ_SECONDS = 10.0  # far above the gateway's timeouts below: a connection still open then hangs
VENDOR_MARK = "X-Echo-Vendor"


class EchoVendor(asyncio.Protocol):
    """Answers each request with what it received, as JSON; a request it cannot parse gets a 400
    marked as the vendor's, then a close."""

    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self._reset()

    def _reset(self) -> None:
        self.url = b""
        self.headers: dict[str, str] = {}
        self.body = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not asyncio.Transport subclasses

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.write(
                f"HTTP/1.1 400 Bad Request\r\n{VENDOR_MARK}: 1\r\nContent-Length: 0\r\n\r\n".encode()
            )
            self.transport.close()

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower().startswith(b"x-test-"):
            self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        assert self.transport is not None
        method = self.parser.get_method().decode()
        echo = {"method": method, "target": self.url.decode("latin-1"), "headers": self.headers}
        body = orjson.dumps({**echo, "body": self.body.hex()})
        head = f"HTTP/1.1 200 OK\r\n{VENDOR_MARK}: 1\r\nContent-Type: application/json\r\n"
        self.transport.write(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
        self._reset()


CONFIG = """\
[gateway]
header_timeout_seconds = 1
body_timeout_seconds = 1
keepalive_timeout_seconds = 2

[vendors.v]
base_url = "http://127.0.0.1:{port}"
"""


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Threaded]:
    with gateway_beside(
        EchoVendor, lambda port: CONFIG.format(port=port), tmp_path_factory.mktemp("server")
    ) as it:
        yield it


# -- what callers send ---------------------------------------------------------------------------

# Path characters that stay one segment and never decode to a dot-segment, a slash or a control.
PATH_PIECES = [*"abcXYZ019-_~!$&'()*+,;=:@", "%20", "%41", "%25", "%7E", "%C3%A9"]
QUERY_PIECES = [*"abcXYZ019-_~.!$'()*+,;:@/?", "=", "&", "%20", "%26", "%3D"]


@dataclass(frozen=True)
class Sent:
    method: str
    target: str  # the vendor path and query after /v
    headers: tuple[tuple[str, str], ...]
    body: bytes
    chunks: tuple[int, ...] | None  # chunked: the sizes of the body's chunks; None: Content-Length

    def wire(self) -> bytes:
        lines = [f"{self.method} /v{self.target} HTTP/1.1", "Host: gateway.test"]
        lines += [f"{name}: {value}" for name, value in self.headers]
        payload = self.body
        if self.chunks is not None:
            lines.append("Transfer-Encoding: chunked")
            pieces, at = [], 0
            for size in (*self.chunks, len(self.body)):
                piece, at = self.body[at : at + size], min(len(self.body), at + size)
                if piece:
                    pieces.append(b"%x\r\n%b\r\n" % (len(piece), piece))
            payload = b"".join(pieces) + b"0\r\n\r\n"
        elif self.body or self.method in ("POST", "PUT", "PATCH"):
            lines.append(f"Content-Length: {len(self.body)}")
        return "\r\n".join(lines).encode() + b"\r\n\r\n" + payload


segment = st.lists(st.sampled_from(PATH_PIECES), min_size=1, max_size=8).map("".join)
targets = st.builds(
    lambda segments, query: "/" + "/".join(segments) + (f"?{query}" if query is not None else ""),
    st.lists(segment, min_size=1, max_size=4),
    st.none() | st.lists(st.sampled_from(QUERY_PIECES), max_size=12).map("".join),
)
header_values = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=40)
requests = st.builds(
    Sent,
    method=st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE"]),
    target=targets,
    headers=st.lists(
        st.tuples(st.sampled_from(["X-Test-A", "X-Test-B", "X-Test-Long-Name"]), header_values),
        max_size=3,
        unique_by=lambda pair: pair[0],
    ).map(tuple),
    body=st.binary(max_size=3000),
    chunks=st.none() | st.lists(st.integers(1, 1500), max_size=4).map(tuple),
)


# -- reading answers -----------------------------------------------------------------------------


@dataclass
class Answer:
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


class Answers:
    """Every complete HTTP/1.1 answer in what the gateway sent; HttpParserError if it is not HTTP."""

    def __init__(self) -> None:
        self.done: list[Answer] = []
        self._current = Answer()
        self.parser = httptools.HttpResponseParser(self)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._current.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        self._current.body += body

    def on_message_complete(self) -> None:
        self._current.status = self.parser.get_status_code()
        self.done.append(self._current)
        self._current = Answer()


def converse(
    port: int, pieces: list[bytes], *, wanted: int | None = None, shut: bool = False
) -> tuple[list[Answer], bool]:
    """Send ``pieces`` one after the other, then (``shut``) shut the sending side; read until
    ``wanted`` answers are in or the gateway closes. (answers, whether the gateway closed)."""
    answers = Answers()
    with socket.create_connection(("127.0.0.1", port), timeout=READ_SECONDS) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for piece in pieces:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # it may refuse and close early
                sock.sendall(piece)
            time.sleep(0.001)  # a piece of its own on the wire, most of the time
        if shut:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_WR)
        deadline = time.monotonic() + READ_SECONDS
        while wanted is None or len(answers.done) < wanted:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = sock.recv(65536)
            except ConnectionResetError:
                return answers.done, True
            except TimeoutError:
                return answers.done, False
            if not data:
                return answers.done, True
            answers.parser.feed_data(data)
    return answers.done, False


# -- the properties ------------------------------------------------------------------------------


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sent=st.lists(requests, min_size=1, max_size=4), points=st.lists(st.integers(0, 10**6), max_size=6))
def test_pipelined_requests_in_any_pieces_reach_the_vendor_as_sent_and_are_answered_in_order(
    served: Threaded, sent: list[Sent], points: list[int]
) -> None:
    wire = b"".join(request.wire() for request in sent)
    answers, _ = converse(served.port, cut(wire, points), wanted=len(sent))
    assert len(answers) == len(sent), [a.status for a in answers]
    for request, answer in zip(sent, answers, strict=True):
        assert answer.status == 200, answer.body[:300]
        assert answer.headers[VENDOR_MARK.lower()] == "1"
        echo = orjson.loads(answer.body)
        assert echo["method"] == request.method
        assert echo["target"] == request.target  # byte for byte, after the vendor's base path
        assert echo["headers"] == {name.lower(): value for name, value in request.headers}
        assert bytes.fromhex(echo["body"]) == request.body
        assert answer.headers["x-request-id"]
    assert served.unexpected() == []


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sent=st.lists(requests, min_size=1, max_size=2), how=st.lists(MUTATIONS, min_size=1, max_size=3))
def test_damaged_requests_get_well_formed_answers_blaming_the_caller_and_a_close(
    served: Threaded, sent: list[Sent], how: list[tuple[str, int, bytes]]
) -> None:
    wire = b"".join(request.wire() for request in sent)
    for change in how:
        wire = mutate(wire, change) or b"\r\n"
    answers, closed = converse(served.port, [wire], shut=True)
    assert closed, "the gateway kept the connection open past its timeouts after the caller's EOF"
    for answer in answers:
        if answer.headers.get(VENDOR_MARK.lower()) == "1":
            continue  # what reached the vendor, and its answer
        assert answer.headers["content-type"] == "application/problem+json", (
            answer.status,
            answer.body[:300],
        )
        problem = orjson.loads(answer.body)
        assert problem["status"] == answer.status
        assert 400 <= answer.status < 500 or answer.status in (501, 505), problem
    assert served.unexpected() == []
