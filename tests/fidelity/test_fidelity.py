"""Fidelity: every case is sent to httpbin directly and through the gateway, and the answers must match.

httpbin (the PyPI app, under gunicorn) is a vendor nobody here wrote, and ``requests`` and ``httpx``
are callers nobody here wrote, so what is checked is HTTP as others speak it, not as our own test
vendors do. A faithful proxy gives the caller what the vendor said: the same status, the same
headers (minus those that describe one connection or hop: Date, Server, Connection, Keep-Alive,
Transfer-Encoding, Proxy-Authenticate, and the gateway's X-Request-Id), the same body bytes,
compressed or not.

Each caller sends its own ``X-Request-Id`` on both legs, and the gateway keeps a caller's id, so
httpbin's echo endpoints (which echo request headers, args, url and origin) answer byte for byte the
same both ways; where a gateway path legitimately changes what the vendor gets (the response-schema
route asks for an uncompressed answer), only those echoed fields are left out of the comparison.
httpbin's access log shows the raw request line, so query and path bytes are checked as they arrived.

The suite runs on three gateway paths: a plain pass-through vendor, a route with a permissive
``response_schema`` in report mode (answers are read whole), and a route with ``idempotency =
"optional"`` where callers send a fresh ``Idempotency-Key`` on POST, PUT and PATCH (answers are
captured for replay). The vendor's ``total_seconds`` is short so a stalled answer fails fast.
"""

from __future__ import annotations

import gzip
import json
import textwrap
import uuid
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import pytest

from tests.fidelity.httpbin_server import HttpbinServer, httpbin_required, missing_modules
from tests.gateway_proc import GatewayProcess

try:
    import httpx
    import requests
except ImportError as exc:  # pragma: no cover - the dev extra installs both
    if httpbin_required():
        raise
    pytest.skip(
        f"{exc.name} is not installed, so gateway fidelity is NOT TESTED (pip install -e '.[dev]')",
        allow_module_level=True,
    )

PATHS = ("passthrough", "schema_report", "idempotency")
TOTAL_SECONDS = 5  # the vendor's timeout: a stalled answer ends in 504 after this, not in a hang
CALLER_TIMEOUT = 30  # past TOTAL_SECONDS, so the gateway's own answer to a stall is what a test sees
MAX_BODY_BYTES = 8 * 1024 * 1024  # room for the 5 MB uploads
LARGE_UPLOAD = 5 * 1024 * 1024
# Fields that describe one connection or one hop, which a proxy legitimately sets anew. The gateway
# drops Proxy-Authenticate as hop-by-hop (RFC 9110 section 11.7.1: it is for the next client only).
IGNORED = frozenset(
    ("date", "server", "x-request-id", "connection", "keep-alive", "transfer-encoding", "proxy-authenticate")
)
# Request fields a gateway path legitimately changes before httpbin echoes them: the response-schema
# stage inspects the answer, so it asks the vendor for it uncompressed (gateway/stages/payload.py).
ECHO_DROPS = {
    "passthrough": frozenset(),
    "schema_report": frozenset({"accept-encoding"}),
    "idempotency": frozenset(),
}
KEYED_METHODS = frozenset({"POST", "PUT", "PATCH"})


# --- the vendor and the three gateways -------------------------------------------------------------


@pytest.fixture(scope="session")
def httpbin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpbinServer]:
    """httpbin under gunicorn for the whole session; skipped loudly (failed under CI=true) if it
    cannot start, as tests/redis_server.py does for redis."""

    def unavailable(reason: str) -> None:
        reason = f"{reason}, so gateway fidelity is NOT TESTED (pip install -e '.[dev]')"
        if httpbin_required():
            pytest.fail(reason + "; CI=true or GATEWAY_REQUIRE_HTTPBIN=1 requires it")
        pytest.skip(reason)

    if missing := missing_modules():
        unavailable(f"{' and '.join(missing)} not installed")
    server = HttpbinServer(tmp_path_factory.mktemp("httpbin"))
    try:
        server.start()
    except (RuntimeError, TimeoutError, OSError) as exc:
        server.stop()
        unavailable(f"httpbin under gunicorn did not start ({exc})")
    yield server
    server.stop()


def gateway_files(path: str, httpbin_url: str) -> tuple[str, dict[str, str]]:
    """config.toml and the other files (routes, schemas) of one gateway path."""
    idempotency = 'idempotency = { forward_header = "Idempotency-Key" }' if path == "idempotency" else ""
    config = f"""
        [gateway]
        max_body_bytes = {MAX_BODY_BYTES}

        [vendors.httpbin]
        base_url = "{httpbin_url}"
        timeout = {{ connect_seconds = 2, total_seconds = {TOTAL_SECONDS} }}
        # A few hundred /status/5xx on purpose would open the breaker: that is resilience, not fidelity.
        circuit = {{ enabled = false }}
        {idempotency}
        """
    files: dict[str, str] = {}
    if path == "schema_report":
        files["routes/httpbin.toml"] = """
            vendor = "httpbin"
            expose = "all"

            [[route]]
            method = "*"
            path = "/**"
            response_schema = "fidelity/any.schema.json"
            response_schema_mode = "report"
            """
        files["transforms/fidelity/any.schema.json"] = json.dumps(
            {
                "$schema": "https://json-schema.org/draft/2020-12/schema",
                "type": ["object", "array", "string", "number", "boolean", "null"],
            }
        )
    elif path == "idempotency":
        files["routes/httpbin.toml"] = """
            vendor = "httpbin"
            expose = "all"

            [[route]]
            method = "*"
            path = "/**"
            idempotency = "optional"
            """
    return textwrap.dedent(config), files


@dataclass
class Gateway:
    path: str
    url: str
    process: GatewayProcess


@pytest.fixture(scope="session", params=PATHS)
def gateway_path(
    request: pytest.FixtureRequest, httpbin: HttpbinServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    path: str = request.param
    folder = tmp_path_factory.mktemp(f"gateway-{path}")
    config, files = gateway_files(path, httpbin.url)
    for name in ("routes", "transforms"):
        (folder / name).mkdir()
    (folder / "config.toml").write_text(config)
    for name, text in files.items():
        target = folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(textwrap.dedent(text))
    process = GatewayProcess(folder / "config.toml")
    try:
        process.wait_ready()
    except BaseException:
        process.stop()
        raise
    yield Gateway(path=path, url=f"{process.url}/httpbin", process=process)
    process.stop()


# --- callers ---------------------------------------------------------------------------------------

Body = bytes | Callable[[], Iterator[bytes]] | None  # a callable: a fresh generator per leg (chunked)


@dataclass
class Answer:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def values(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name]

    def fields(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for name, value in self.headers:
            lower = name.lower()
            if lower not in IGNORED and lower != "content-length":
                out.setdefault(lower, []).append(value)
        return out


class Caller(Protocol):
    name: str

    def send(self, method: str, url: str, headers: list[tuple[str, str]], body: Body) -> Answer: ...

    def close(self) -> None: ...


class RequestsCaller:
    """``requests``: the URL is sent as given (requests would re-quote it), bodies raw. Sent through the
    transport adapter, below the Session's redirect handling (which reads and decodes a redirect's body
    even when told not to follow it) and its cookie jar."""

    name = "requests"

    def __init__(self) -> None:
        self.session = requests.Session()
        self.session.trust_env = False  # no proxy from the environment
        del self.session.headers["Connection"]  # see HttpxCaller

    def send(self, method: str, url: str, headers: list[tuple[str, str]], body: Body) -> Answer:
        names = [name.lower() for name, _ in headers]
        assert len(names) == len(set(names)), "requests cannot send a header twice: use httpx"
        data = body() if callable(body) else body
        prepared = self.session.prepare_request(
            requests.Request(method, url, headers=dict(headers), data=data)
        )
        prepared.url = url
        adapter = self.session.get_adapter(url)
        resp = adapter.send(prepared, stream=True, timeout=(5, CALLER_TIMEOUT))
        try:
            raw = resp.raw.read(decode_content=False)
            return Answer(resp.status_code, list(resp.raw.headers.items()), raw)
        finally:
            resp.close()

    def close(self) -> None:
        self.session.close()


class HttpxCaller:
    """``httpx``: keeps the URL's bytes and repeated headers; raw (still encoded) body, no redirects."""

    name = "httpx"

    def __init__(self) -> None:
        self.client = httpx.Client(
            follow_redirects=False,
            trust_env=False,
            timeout=httpx.Timeout(CALLER_TIMEOUT, connect=5),
        )
        # Hop-by-hop, so the gateway drops it and httpbin would echo it on the direct leg only; HTTP/1.1
        # keeps connections open without it.
        del self.client.headers["Connection"]

    def send(self, method: str, url: str, headers: list[tuple[str, str]], body: Body) -> Answer:
        content = body() if callable(body) else body
        self.client.cookies.clear()  # a caller that kept httpbin's cookies would send them back
        request = self.client.build_request(method, url, headers=headers, content=content)
        resp = self.client.send(request, stream=True)
        try:
            raw = b"".join(resp.iter_raw())
            return Answer(resp.status_code, list(resp.headers.multi_items()), raw)
        finally:
            resp.close()

    def close(self) -> None:
        self.client.close()


@pytest.fixture(scope="session")
def callers() -> Iterator[dict[str, Caller]]:
    made: dict[str, Caller] = {"requests": RequestsCaller(), "httpx": HttpxCaller()}
    yield made
    for caller in made.values():
        caller.close()


# --- one case, both ways ---------------------------------------------------------------------------


@dataclass
class Echo:
    """How to compare the body of an endpoint that echoes the request (JSON, or JSON lines)."""

    drops: frozenset[str] = frozenset()  # echoed request headers that may differ in this case
    lines: bool = False  # /stream/N: one JSON document per line
    decode: Callable[[bytes], bytes] | None = None  # compressed bodies (/gzip, /deflate)


@dataclass
class Pair:
    direct: Answer
    via: Answer
    request_id: str
    sent: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class Fidelity:
    gateway: Gateway
    httpbin: HttpbinServer
    callers: dict[str, Caller]

    def exchange(
        self,
        method: str,
        target: str,
        headers: list[tuple[str, str]] | None = None,
        body: Body = None,
        caller: str = "requests",
        *,
        lines: bool = False,
    ) -> Pair:
        """Send one request to httpbin, then the same through the gateway (same X-Request-Id, and on the
        idempotency path the same fresh Idempotency-Key on POST, PUT and PATCH). ``lines``: the raw
        request lines will be read (``arrived``), so the direct leg's must be logged first."""
        request_id = f"fid-{uuid.uuid4().hex}"
        sent = [("X-Request-Id", request_id), *(headers or [])]
        if self.gateway.path == "idempotency" and method in KEYED_METHODS:
            sent.append(("Idempotency-Key", f"fid-{uuid.uuid4().hex}"))
        client = self.callers[caller]
        direct = client.send(method, self.httpbin.url + target, sent, body)
        if lines:  # gunicorn logs after answering: wait, so the two lines are in the legs' order
            self.httpbin.request_lines(request_id, 1)
        via = client.send(method, self.gateway.url + target, sent, body)
        return Pair(direct, via, request_id, sent)

    def echo(self, case: Echo | None = None) -> Echo:
        case = case or Echo()
        return Echo(case.drops | ECHO_DROPS[self.gateway.path], case.lines, case.decode)

    def arrived(self, pair: Pair) -> list[str]:
        """The raw request lines httpbin logged for both legs."""
        return self.httpbin.request_lines(pair.request_id, 2)


@pytest.fixture
def fid(gateway_path: Gateway, httpbin: HttpbinServer, callers: dict[str, Caller]) -> Fidelity:
    return Fidelity(gateway_path, httpbin, callers)


# --- comparing answers -----------------------------------------------------------------------------


def _snippet(body: bytes, at: int) -> str:
    return repr(body[max(0, at - 20) : at + 40])


def _body_difference(direct: bytes, via: bytes) -> str:
    at = next(
        (i for i, (a, b) in enumerate(zip(direct, via, strict=False)) if a != b), min(len(direct), len(via))
    )
    return (
        f"body: direct {len(direct)} bytes, gateway {len(via)} bytes, first difference at byte {at}: "
        f"direct {_snippet(direct, at)} gateway {_snippet(via, at)}"
    )


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 160 else f"{text[:120]}... ({len(text)} chars)"


def _doc_differences(expected: Any, got: Any, where: str) -> list[str]:
    """Where two echoed documents differ, as JSON-pointer-ish paths with short values."""
    if isinstance(expected, dict) and isinstance(got, dict):
        out: list[str] = []
        for key in sorted(expected.keys() | got.keys()):
            if key not in got:
                out.append(f"{where}/{key}: direct {_short(expected[key])}, gateway missing")
            elif key not in expected:
                out.append(f"{where}/{key}: direct missing, gateway {_short(got[key])}")
            else:
                out += _doc_differences(expected[key], got[key], f"{where}/{key}")
        return out
    if isinstance(expected, list) and isinstance(got, list) and len(expected) == len(got):
        return [
            d
            for i, (e, g) in enumerate(zip(expected, got, strict=True))
            for d in _doc_differences(e, g, f"{where}/{i}")
        ]
    if expected != got:
        return [f"{where or '/'}: direct {_short(expected)}, gateway {_short(got)}"]
    return []


def _without(document: Any, drops: frozenset[str]) -> Any:
    """An echo minus the request fields that may differ; ``Content-Length: 0`` and none are the same
    framing (a request without either field has no body), and the gateway sends the former."""
    if isinstance(document, dict) and isinstance(document.get("headers"), dict):
        kept = {
            k: v
            for k, v in document["headers"].items()
            if k.lower() not in drops and not (k.lower() == "content-length" and v == "0")
        }
        return {**document, "headers": kept}
    return document


def _echoed(body: bytes, echo: Echo) -> Any:
    data = echo.decode(body) if echo.decode is not None else body
    if echo.lines:
        return [_without(json.loads(line), echo.drops) for line in data.splitlines() if line.strip()]
    return _without(json.loads(data), echo.drops)


def differences(pair: Pair, *, method: str = "GET", echo: Echo | None = None) -> list[str]:
    """What the caller saw differently through the gateway: status, fields, Content-Length, body."""
    direct, via = pair.direct, pair.via
    problems: list[str] = []
    if direct.status != via.status:
        problems.append(f"status: direct {direct.status}, gateway {via.status}")
    if via.values("content-type") == ["application/problem+json"] != direct.values("content-type"):
        # The gateway answered itself: say what it said, not how its problem differs from the echo.
        try:
            problem = json.loads(via.body)
        except ValueError:
            problem = {}
        problems.append(f"gateway problem+json: {problem.get('title')}: {problem.get('detail')}")
        echo = None
    d_fields, v_fields = direct.fields(), via.fields()
    for name in sorted(d_fields.keys() | v_fields.keys()):
        if d_fields.get(name) != v_fields.get(name):
            problems.append(f"header {name}: direct {d_fields.get(name)}, gateway {v_fields.get(name)}")
    expected: Any = None
    if echo is not None and direct.body != via.body:
        try:
            expected = _echoed(direct.body, echo)
        except ValueError:  # not an echo after all (an error page): bytes it is
            echo = None
    bodiless = method == "HEAD" or via.status in (204, 304) or 100 <= via.status < 200
    # An echo may differ in the request fields this case allows; anything else is byte for byte, and
    # so is an echo that came back identical (Content-Length included).
    # A HEAD answer's Content-Length is that of the echo it leaves out, which may differ the same way.
    exact = echo is None or (direct.body == via.body and not (bodiless and echo.drops))
    d_length, v_length = direct.values("content-length"), via.values("content-length")
    if len(v_length) > 1:
        problems.append(f"content-length sent {len(v_length)} times: {v_length}")
    if exact and d_length and d_length != v_length:
        problems.append(f"content-length: direct {d_length}, gateway {v_length or 'none (chunked)'}")
    elif v_length and not bodiless and v_length[0] != str(len(via.body)):
        problems.append(f"content-length: gateway says {v_length[0]}, sent {len(via.body)} bytes")
    if echo is None:
        if direct.body != via.body:
            problems.append(_body_difference(direct.body, via.body))
    elif direct.body != via.body:
        try:
            got = _echoed(via.body, echo)
        except ValueError:
            problems.append(f"body: not an echo through the gateway: {via.body[:300]!r}")
        else:
            if got != expected:
                problems += [f"echo {where}" for where in _doc_differences(expected, got, "")]
    return problems


def assert_same(pair: Pair, *, method: str = "GET", echo: Echo | None = None) -> None:
    problems = differences(pair, method=method, echo=echo)
    assert not problems, "through the gateway:\n  " + "\n  ".join(problems)


def echoed_headers(answer: Answer, echo: Echo | None = None) -> dict[str, str]:
    document = _echoed(answer.body, echo or Echo())
    first = document[0] if isinstance(document, list) else document
    return {k.lower(): v for k, v in first["headers"].items()}


def assert_arrived(pair: Pair, headers: list[tuple[str, str]], echo: Echo | None = None) -> None:
    """The caller's own fields reached httpbin through the gateway unchanged (repeated ones joined)."""
    got = echoed_headers(pair.via, echo)
    expected: dict[str, list[str]] = {}
    for name, value in headers:
        expected.setdefault(name.lower(), []).append(value)
    for name, values in expected.items():
        assert got.get(name) == ",".join(values), f"{name}: sent {values}, httpbin got {got.get(name)!r}"


# --- query, path and header fidelity -----------------------------------------------------------------

QUERIES = {
    "repeated": "a=1&a=2&a=&b=x&a=3",
    "percent-case": "u=%c3%a9&U=%C3%A9&t=%7E&T=%7e&tilde=~",
    "plus-space": "p=a+b&s=a%20b&l=%2B&both=+%20%2B",
    "reserved": "amp=%26&eq=%3D%3D&q=%3F&h=%23&pct=%25&sl=%2F&br=%5B%5D",
    "sub-delims": "k=*'()!$,;&semi=a;b&c=a:b@c/d?e&at=@",
    "bare": "flag&=v&&x==y&empty=",
    "utf8": "name=%E2%9C%93%20ok&jp=%E6%97%A5%E6%9C%AC",
}


@pytest.mark.parametrize("caller", ["requests", "httpx"])
@pytest.mark.parametrize("query", list(QUERIES), ids=list(QUERIES))
def test_query_string_arrives_byte_for_byte(fid: Fidelity, caller: str, query: str) -> None:
    target = f"/anything?{QUERIES[query]}"
    pair = fid.exchange("GET", target, caller=caller, lines=True)
    direct_line, via_line = fid.arrived(pair)
    assert via_line == direct_line, f"request line: direct {direct_line!r}, gateway {via_line!r}"
    if caller == "httpx":  # requests' urllib3 upper-cases %xx escapes itself; httpx sends them as given
        assert direct_line == f"GET {target} HTTP/1.1"
    assert_same(pair, echo=fid.echo())
    assert _echoed(pair.via.body, fid.echo())["args"] == _echoed(pair.direct.body, fid.echo())["args"]


PATHS_ODD = {
    "sub-delims": "/anything/a;b=c/d,e/f!$&'()*+=@:",
    "escapes": "/anything/caf%C3%A9/%41%62/sp%20ace/~user",
    "lowercase-escape": "/anything/caf%c3%a9",
    "trailing-slash": "/anything/x/",
}


@pytest.mark.parametrize("path", list(PATHS_ODD), ids=list(PATHS_ODD))
def test_path_arrives_byte_for_byte(fid: Fidelity, path: str) -> None:
    pair = fid.exchange("GET", PATHS_ODD[path] + "?k=1", caller="httpx", lines=True)
    direct_line, via_line = fid.arrived(pair)
    assert via_line == direct_line, f"request line: direct {direct_line!r}, gateway {via_line!r}"
    assert_same(pair, echo=fid.echo())


ODD_HEADERS = [
    ("X-Tchar", "!#$%&'*+-.^_`|~"),
    ("X-Spaces", "a  b\tc"),
    ("X-Quoted", '"q\\"x", "y"'),
    ("X-List", "a, b,c ,, d"),
    ("X-Empty", ""),
    ("X-Long", "v" * 4000),
    ("X-Json", '{"a": [1, 2], "b": null}'),
    ("Authorization", "Bearer caller-token-1"),
    ("Cookie", "a=b; c=d"),
    ("Accept", "application/json;q=0.9, text/*;q=0.5, */*;q=0.1"),
    ("Accept-Language", "fr-CH, fr;q=0.9, en;q=0.8"),
    ("If-None-Match", 'W/"xyz", "abc"'),
    ("Cache-Control", "no-cache, max-age=0"),
    ("User-Agent", "fidelity-suite/1.0 (+odd; chars)"),
]


@pytest.mark.parametrize("caller", ["requests", "httpx"])
def test_request_headers_arrive_unchanged(fid: Fidelity, caller: str) -> None:
    pair = fid.exchange("GET", "/headers", headers=ODD_HEADERS, caller=caller)
    assert_same(pair, echo=fid.echo())
    assert_arrived(pair, ODD_HEADERS, fid.echo())


def test_repeated_request_headers_arrive_in_order(fid: Fidelity) -> None:
    headers = [("X-Multi", "1"), ("X-Other", "o"), ("X-Multi", "2"), ("X-Multi", "3, 4")]
    pair = fid.exchange("GET", "/anything", headers=headers, caller="httpx")
    assert_same(pair, echo=fid.echo())
    assert_arrived(pair, headers, fid.echo())


def test_obs_text_request_header_arrives_unchanged(fid: Fidelity) -> None:
    # requests sends a str header as Latin-1: the 0xE9 byte is obs-text (RFC 9110 section 5.5).
    headers = [("X-Latin", "caf\u00e9"), ("X-After", "1")]
    pair = fid.exchange("GET", "/headers", headers=headers, caller="requests")
    assert_same(pair, echo=fid.echo())
    assert_arrived(pair, headers, fid.echo())


def test_long_query_string(fid: Fidelity) -> None:
    target = "/anything?q=" + "%41b" * 900 + "&r=" + "z" * 300  # gunicorn takes request lines to 4094
    pair = fid.exchange("GET", target, caller="httpx", lines=True)
    direct_line, via_line = fid.arrived(pair)
    assert via_line == direct_line == f"GET {target} HTTP/1.1"
    assert_same(pair, echo=fid.echo())


def test_caller_user_agent_is_kept(fid: Fidelity) -> None:
    pair = fid.exchange("GET", "/user-agent", headers=[("User-Agent", "my-service/2.3")])
    assert_same(pair)
    assert json.loads(pair.via.body) == {"user-agent": "my-service/2.3"}


# --- request bodies --------------------------------------------------------------------------------

BOUNDARY = "fidelityBoundary7MA4YWxkTrZu0gW"
BINARY = bytes(range(256)) * 64


def multipart_body() -> bytes:
    return (
        f"--{BOUNDARY}\r\n"
        'Content-Disposition: form-data; name="field"\r\n\r\n'
        "caf\u00e9 & co\r\n"
        f"--{BOUNDARY}\r\n"
        'Content-Disposition: form-data; name="list"\r\n\r\n'
        "1\r\n"
        f"--{BOUNDARY}\r\n"
        'Content-Disposition: form-data; name="list"\r\n\r\n'
        "2\r\n"
        f"--{BOUNDARY}\r\n"
        'Content-Disposition: form-data; name="file"; filename="data.txt"\r\n'
        "Content-Type: text/plain\r\n\r\n"
        "line one\nline two\n\r\n"
        f"--{BOUNDARY}--\r\n"
    ).encode()


BODIES: dict[str, tuple[str, bytes]] = {
    "json": (
        "application/json",
        json.dumps({"a": 1, "s": "caf\u00e9 \u2713", "n": None, "l": [1, 2.5]}).encode(),
    ),
    "form": ("application/x-www-form-urlencoded", b"a=1&a=2&b=%26%3D&c=caf%C3%A9&d=+x+"),
    "multipart": (f"multipart/form-data; boundary={BOUNDARY}", multipart_body()),
    "binary": ("application/octet-stream", BINARY),
    "text": ("text/plain; charset=utf-8", "caf\u00e9\r\nno trailing newline".encode()),
    "empty": ("application/json", b""),
}
ENDPOINTS = [
    ("POST", "/post"),
    ("PUT", "/put"),
    ("PATCH", "/patch"),
    ("DELETE", "/delete"),
    ("POST", "/anything/nested/path"),
]


@pytest.mark.parametrize("caller", ["requests", "httpx"])
@pytest.mark.parametrize("kind", list(BODIES))
@pytest.mark.parametrize(("method", "target"), ENDPOINTS, ids=[f"{m}{t}" for m, t in ENDPOINTS])
def test_request_body_arrives_unchanged(
    fid: Fidelity, method: str, target: str, kind: str, caller: str
) -> None:
    content_type, body = BODIES[kind]
    headers = [("Content-Type", content_type), ("X-Case", kind)]
    pair = fid.exchange(method, target + "?via=body", headers=headers, body=body, caller=caller)
    assert_same(pair, method=method, echo=fid.echo())
    assert_arrived(pair, headers, fid.echo())


def test_get_with_a_body(fid: Fidelity) -> None:
    # Odd but legal (RFC 9110 section 9.3.1): the body has no defined meaning, but it is sent.
    headers = [("Content-Type", "application/json")]
    pair = fid.exchange("GET", "/anything", headers=headers, body=b'{"q": "in the body"}', caller="httpx")
    assert_same(pair, echo=fid.echo())
    assert json.loads(pair.via.body)["json"] == {"q": "in the body"}


@pytest.mark.parametrize(
    ("method", "target"), [("OPTIONS", "/get"), ("OPTIONS", "/anything"), ("TRACE", "/anything")]
)
def test_other_methods(fid: Fidelity, method: str, target: str) -> None:
    pair = fid.exchange(method, target, caller="httpx")
    assert_same(pair, method=method, echo=fid.echo() if method == "TRACE" else None)


def chunks(parts: list[bytes]) -> Callable[[], Iterator[bytes]]:
    def generate() -> Iterator[bytes]:
        yield from parts

    return generate


CHUNKED_DROPS = frozenset({"content-length", "transfer-encoding"})  # the framing a proxy may choose


@pytest.mark.parametrize("caller", ["requests", "httpx"])
def test_chunked_upload_arrives_unchanged(fid: Fidelity, caller: str) -> None:
    headers = [("Content-Type", "application/json")]
    body = chunks([b'{"part": ', b'"one", "two": ', b"[1, 2, 3]}"])
    pair = fid.exchange("POST", "/post", headers=headers, body=body, caller=caller)
    echo = fid.echo(Echo(drops=CHUNKED_DROPS))
    assert_same(pair, method="POST", echo=echo)
    assert json.loads(pair.via.body)["json"] == {"part": "one", "two": [1, 2, 3]}


def large_payload() -> bytes:
    return (BINARY * (LARGE_UPLOAD // len(BINARY) + 1))[:LARGE_UPLOAD]


def test_upload_of_600_kb_and_its_800_kb_echo(fid: Fidelity) -> None:
    # Past the 256 KiB the pool buffers per connection, within the 1 MiB idempotency keeps for a replay.
    body = large_payload()[: 600 * 1024]
    pair = fid.exchange(
        "POST", "/anything", headers=[("Content-Type", "application/octet-stream")], body=body
    )
    assert_same(pair, method="POST", echo=fid.echo())
    assert 256 * 1024 < len(pair.direct.body) < 1024 * 1024


def test_large_upload_of_5_mb_and_its_6_mb_echo(fid: Fidelity) -> None:
    body = large_payload()
    pair = fid.exchange("POST", "/post", headers=[("Content-Type", "application/octet-stream")], body=body)
    assert_same(pair, method="POST", echo=fid.echo())
    assert len(pair.via.body) > len(body)


def test_large_chunked_upload_of_5_mb(fid: Fidelity) -> None:
    payload = large_payload()
    parts = [payload[i : i + 65536] for i in range(0, len(payload), 65536)]
    pair = fid.exchange(
        "PUT",
        "/put",
        headers=[("Content-Type", "application/octet-stream")],
        body=chunks(parts),
        caller="httpx",
    )
    assert_same(pair, method="PUT", echo=fid.echo(Echo(drops=CHUNKED_DROPS)))


# --- compression -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "encoding", "decode"),
    [
        ("/gzip", "gzip", gzip.decompress),
        ("/deflate", "deflate", zlib.decompress),
    ],
    ids=["gzip", "deflate"],
)
def test_compressed_answer_passes_unchanged(
    fid: Fidelity, target: str, encoding: str, decode: Callable[[bytes], bytes]
) -> None:
    pair = fid.exchange("GET", target, headers=[("Accept-Encoding", encoding)])
    assert pair.direct.values("content-encoding") == [encoding]
    assert_same(pair, echo=fid.echo(Echo(decode=decode)))
    decode(pair.via.body)  # still compressed: the gateway did not decode it for the caller


def test_brotli_answer_passes_unchanged(fid: Fidelity) -> None:
    pair = fid.exchange("GET", "/brotli", headers=[("Accept-Encoding", "br")])
    assert pair.direct.values("content-encoding") == ["br"]
    import brotlicffi  # httpbin's own dependency, for /brotli

    assert_same(pair, echo=fid.echo(Echo(decode=brotlicffi.decompress)))


def test_identity_answer_is_not_compressed_for_a_caller_that_accepts_gzip(fid: Fidelity) -> None:
    pair = fid.exchange("GET", "/encoding/utf8", headers=[("Accept-Encoding", "gzip, deflate, br")])
    assert_same(pair)
    assert len(pair.via.body) > 1000


# --- streamed and ranged answers -------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 5, 100])
def test_stream_of_json_lines(fid: Fidelity, n: int) -> None:
    pair = fid.exchange("GET", f"/stream/{n}")
    assert pair.direct.values("content-length") == []  # chunked at the vendor
    assert_same(pair, echo=fid.echo(Echo(lines=True)))
    assert len(pair.via.body.splitlines()) == n


def test_large_chunked_download_of_600_kb(fid: Fidelity) -> None:
    # httpbin caps /stream-bytes and /bytes at 100 KiB; 100 echoed lines of a 6000-byte field is ~620 KB.
    headers = [("X-Pad", "p" * 6000)]
    pair = fid.exchange("GET", "/stream/100", headers=headers)
    assert len(pair.direct.body) > 600_000
    assert_same(pair, echo=fid.echo(Echo(lines=True)))


@pytest.mark.parametrize(
    "target",
    [
        "/bytes/1024?seed=1",
        "/bytes/102400?seed=2",
        "/stream-bytes/1000?seed=3",
        "/stream-bytes/102400?seed=4&chunk_size=4096",
        "/stream-bytes/5000?seed=5&chunk_size=1",
        "/drip?duration=0.5&numbytes=20&delay=0.2",
        "/drip?duration=0.2&numbytes=5&code=418",
        "/range/102400?chunk_size=1000",
    ],
)
def test_download(fid: Fidelity, target: str) -> None:
    assert_same(fid.exchange("GET", target))


@pytest.mark.parametrize(
    ("size", "header"),
    [
        (1024, "bytes=0-9"),
        (1024, "bytes=10-"),
        (1024, "bytes=-5"),
        (1024, "bytes=0-1023"),
        (1024, "bytes=1000-2000"),
        (1024, "bytes=2000-3000"),
        (102400, "bytes=100-50099"),
    ],
)
def test_range_request(fid: Fidelity, size: int, header: str) -> None:
    pair = fid.exchange("GET", f"/range/{size}", headers=[("Range", header)])
    assert pair.direct.status in (200, 206, 416)
    assert_same(pair)


# --- every status httpbin serves ------------------------------------------------------------------


@pytest.mark.parametrize("code", range(200, 600))
def test_status_code(fid: Fidelity, code: int) -> None:
    """GET without a body (requests) and POST with one (httpx), same answer both ways."""
    problems: list[str] = []
    for method, body, caller in (("GET", None, "requests"), ("POST", b'{"k": 1}', "httpx")):
        headers = [("Content-Type", "application/json")] if body is not None else []
        pair = fid.exchange(method, f"/status/{code}", headers=headers, body=body, caller=caller)
        assert pair.direct.status == code
        problems += [f"{method}: {p}" for p in differences(pair, method=method)]
    assert not problems, "through the gateway:\n  " + "\n  ".join(problems)


# --- HEAD ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "target",
    [
        "/get",
        "/bytes/2048?seed=9",
        "/stream-bytes/2048?seed=9",
        "/range/4096",
        "/status/200",
        "/status/404",
        "/response-headers?X-A=1&X-A=2",
        "/gzip",
        "/html",
        "/cookies/set?a=b",
        "/redirect/1",
    ],
)
def test_head(fid: Fidelity, target: str) -> None:
    pair = fid.exchange("HEAD", target)
    assert pair.direct.body == b""
    assert_same(pair, method="HEAD", echo=fid.echo() if target in ("/get", "/gzip") else None)


# --- response fields -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "query",
    [
        "X-A=1&X-A=2",
        "X-A=2&X-B=b&X-A=1&X-A=3",
        "Set-Cookie=a%3D1%3B%20Path%3D%2F&Set-Cookie=b%3D2%3B%20HttpOnly%3B%20Secure",
        "ETag=%22v1%22&Cache-Control=no-store&Vary=Accept&Link=%3C%2Fnext%3E%3B%20rel%3D%22next%22",
        "Content-Type=text%2Fplain%3B%20charset%3Dlatin-1&X-Empty=",
        "Location=%2Fsomewhere&Content-Language=de",
        "WWW-Authenticate=Bearer%20realm%3D%22x%22&Retry-After=120",
        "X-Long=" + "h" * 3000,
        # httpbin sends this one as Latin-1 (obs-text, RFC 9110 section 5.5): one 0xE9 byte.
        "X-Latin=caf%C3%A9&X-After=1",
    ],
    ids=[
        "repeated",
        "interleaved",
        "set-cookie",
        "caching",
        "content-type",
        "location",
        "auth",
        "long",
        "obs-text",
    ],
)
def test_response_headers(fid: Fidelity, query: str) -> None:
    assert_same(fid.exchange("GET", f"/response-headers?{query}"))


def test_response_headers_on_post(fid: Fidelity) -> None:
    pair = fid.exchange("POST", "/response-headers?X-A=1&X-A=2&Set-Cookie=s%3D1", body=b"", caller="httpx")
    assert_same(pair, method="POST")


@pytest.mark.parametrize(
    ("target", "headers"),
    [
        ("/html", []),
        ("/xml", []),
        ("/json", []),
        ("/robots.txt", []),
        ("/deny", []),
        ("/encoding/utf8", []),
        ("/base64/SFRUUEJJTiBpcyBhd2Vzb21l", []),
        ("/links/10/3", []),
        ("/image/png", [("Accept", "image/png")]),
        ("/image/svg", [("Accept", "image/svg+xml")]),
        ("/etag/abc", []),
        ("/etag/abc", [("If-None-Match", '"abc"')]),
        ("/etag/abc", [("If-Match", '"nope"')]),
        ("/cache", [("If-Modified-Since", "Sat, 01 Jan 2000 00:00:00 GMT")]),
        ("/cache/60", []),
        ("/basic-auth/u/p", [("Authorization", "Basic dTpw")]),
        ("/basic-auth/u/p", []),
        ("/bearer", [("Authorization", "Bearer t0ken")]),
        ("/bearer", []),
        ("/hidden-basic-auth/u/p", []),
    ],
    ids=lambda v: v if isinstance(v, str) else ",".join(k for k, _ in v) or "no-headers",
)
def test_content_types_and_conditionals(fid: Fidelity, target: str, headers: list[tuple[str, str]]) -> None:
    # /etag and /cache answer with an echo of the request.
    assert_same(fid.exchange("GET", target, headers=headers), echo=fid.echo())


# --- cookies and redirects: the caller gets them, the gateway neither follows nor keeps them -------


@pytest.mark.parametrize(
    "target",
    [
        "/cookies/set?a=b",
        "/cookies/set?a=b&c=d%20e",
        "/cookies/set/name/value",
        "/cookies/delete?a",
    ],
)
def test_set_cookie_302_comes_back_unfollowed(fid: Fidelity, target: str) -> None:
    pair = fid.exchange("GET", target)
    assert pair.direct.status == 302 and pair.direct.values("set-cookie")
    assert_same(pair)


def test_the_gateway_keeps_no_vendor_cookies(fid: Fidelity) -> None:
    fid.exchange("GET", "/cookies/set?kept=no")
    pair = fid.exchange("GET", "/cookies")  # the callers keep none either
    assert_same(pair)
    assert json.loads(pair.via.body) == {"cookies": {}}


def test_caller_cookies_reach_httpbin(fid: Fidelity) -> None:
    pair = fid.exchange("GET", "/cookies", headers=[("Cookie", "a=1; b=two")])
    assert_same(pair)
    assert json.loads(pair.via.body) == {"cookies": {"a": "1", "b": "two"}}


@pytest.mark.parametrize(
    ("method", "target"),
    [
        ("GET", "/redirect-to?url=http%3A%2F%2Fexample.invalid%2Fx%3Fy%3D1"),
        ("GET", "/redirect-to?url=%2Fget&status_code=307"),
        ("GET", "/redirect-to?url=%2Fget&status_code=301"),
        ("POST", "/redirect-to?url=%2Fanything&status_code=308"),
        ("PUT", "/redirect-to?url=%2Fput&status_code=303"),
        ("GET", "/redirect/2"),
        ("GET", "/relative-redirect/2"),
        ("GET", "/absolute-redirect/2"),
        ("GET", "/status/302"),
    ],
)
def test_redirect_comes_back_unfollowed(fid: Fidelity, method: str, target: str) -> None:
    body = b"x=1" if method != "GET" else None
    pair = fid.exchange(method, target, body=body)
    assert 300 <= pair.direct.status < 400 and pair.direct.values("location")
    assert_same(pair, method=method)


# --- what each gateway path adds must really be there ----------------------------------------------


def test_the_path_under_test_is_configured(fid: Fidelity) -> None:
    """A 2xx answer that is not JSON is logged by the report-mode schema route; a keyed PUT is replayed
    on the idempotency route; the pass-through vendor does neither. Guards against testing the wrong setup."""
    pair = fid.exchange("GET", "/html")
    assert_same(pair)
    logged = any(
        '"response_schema_failed"' in line and pair.request_id in line
        for line in fid.gateway.process.output().splitlines()
    )
    assert logged == (fid.gateway.path == "schema_report")
    # PUT is keyed only where the route says idempotency = "optional" (the default keys POST and PATCH).
    key = f"fid-{uuid.uuid4().hex}"
    caller = fid.callers["requests"]
    headers = [("Idempotency-Key", key), ("Content-Type", "application/json")]
    first = caller.send("PUT", fid.gateway.url + "/put", headers, b"{}")
    again = caller.send("PUT", fid.gateway.url + "/put", headers, b"{}")
    assert first.status == again.status == 200
    replayed = again.values("idempotent-replayed") == ["true"]
    assert replayed == (fid.gateway.path == "idempotency")


# --- replays: the idempotency path only --------------------------------------------------------------


def replay_pair(fid: Fidelity, target: str, body: bytes) -> tuple[Answer, Answer, str]:
    if fid.gateway.path != "idempotency":
        pytest.skip("replays are the idempotency path's")
    key = f"fid-{uuid.uuid4().hex}"
    request_id = f"fid-{uuid.uuid4().hex}"
    headers = [("Idempotency-Key", key), ("Content-Type", "application/json"), ("X-Request-Id", request_id)]
    caller = fid.callers["httpx"]
    first = caller.send("POST", fid.gateway.url + target, headers, body)
    again = caller.send("POST", fid.gateway.url + target, headers, body)
    return first, again, request_id


def test_replay_is_the_first_answer(fid: Fidelity) -> None:
    first, again, request_id = replay_pair(fid, "/anything?r=1", b'{"order": 42}')
    assert first.status == again.status == 200
    assert again.values("idempotent-replayed") == ["true"]
    assert again.body == first.body
    assert {k: v for k, v in again.fields().items() if k != "idempotent-replayed"} == first.fields()
    assert len(fid.httpbin.request_lines(request_id, 1)) == 1
    assert len(fid.httpbin.request_lines(request_id, 2, timeout=0.5)) == 1  # httpbin was called once


def test_replay_carries_no_vendor_cookie(fid: Fidelity) -> None:
    """README: vendor cookies are never stored or replayed. The first answer has httpbin's Set-Cookie
    (the caller asked for it); a replay, to whichever caller holds the key, must not."""
    first, again, _ = replay_pair(fid, "/response-headers?X-A=1&Set-Cookie=sid%3Dsecret", b"{}")
    assert first.status == again.status == 200
    assert first.values("set-cookie") == ["sid=secret"]
    assert again.values("idempotent-replayed") == ["true"]
    assert again.values("x-a") == ["1"]
    assert again.values("set-cookie") == []
