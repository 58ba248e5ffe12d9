"""Loading: config.toml and routes/*.toml -> the model, validated once.

Every problem is collected (not just the first) and reported as ``FILE: key.path: message``.
Config objects are immutable; secrets are resolved at load and hidden from ``repr()``.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import difflib
import ipaddress
import math
import os
import re
import tomllib
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal, TypeVar

from yarl import URL

from ..bus.subjects import parse_template
from ..features.contract.examples import Example, ExampleError, load_example
from ..features.payload.schemas import CompiledSchema, SchemaFileError, SchemaRegistry
from ..transform import TransformSpec, TransformSpecError, load_spec
from ..transform.pointer import PointerSyntaxError, compile_pointer
from ..transform.spec import toml_type
from .model import (
    _HEADER_NAME,
    _VENDOR_NAME,
    ALERT_KINDS,
    ALERT_MAX_WINDOW_SECONDS,
    AUTH_TYPES,
    DELIVERY_MODES,
    HTTP_METHODS,
    IDEMPOTENCY_MODES,
    RATE_SCOPES,
    SUBJECT_ATTRIBUTES,
    TLS_VERSIONS,
    TYPE_POINTER,
    WEBHOOK_DEFAULT_ID,
    WEBHOOK_DEFAULT_TYPE,
    WEBHOOK_SCHEMES,
    AlertRule,
    AlertSettings,
    AllowRule,
    Auth,
    AwsSecretsManager,
    BusSettings,
    CertSubject,
    Circuit,
    Client,
    Config,
    ConfigError,
    DeliverySettings,
    EventField,
    Faults,
    GatewaySettings,
    Idempotency,
    Listen,
    ListenerTls,
    OAuth2ClientCredentials,
    PathSegment,
    Problem,
    Publish,
    RateLimit,
    Retry,
    Route,
    Secret,
    SecretsSettings,
    Timeout,
    Tls,
    TracingSettings,
    Vault,
    Vendor,
    VersionPin,
    Webhook,
    WebhookVerify,
)
from .secrets import collecting, resolve_managed, resolve_secret
from .tls import ca_file_problem, key_pair_problem

# --------------------------------------------------------------------------------------------
# Reading: a cursor over one TOML table that knows its file and key path and collects problems.

_MISSING: Any = object()


class _Table:
    def __init__(self, problems: list[Problem], file: str, path: str, data: Mapping[str, Any]) -> None:
        self._problems = problems
        self.file = file
        self.path = path
        self.data = data
        self._seen: dict[str, None] = {}  # keys asked for, in order: what done() suggests from

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def problem(self, name: str, message: str) -> None:
        self._problems.append(Problem(self.file, self.key(name) if name else self.path, message))

    def has(self, name: str) -> bool:
        return name in self.data

    def raw(self, name: str) -> Any:
        self._seen[name] = None
        return self.data.get(name, _MISSING)

    def _typed(self, name: str, kinds: tuple[type, ...], label: str, default: Any) -> Any:
        value = self.raw(name)
        if value is _MISSING:
            if default is _MISSING:
                self.problem(name, "is required")
                return None
            return default
        # bool is an int in Python; a TOML `true` is never a valid number here.
        if isinstance(value, bool) and bool not in kinds:
            self.problem(name, f"must be {label}, not a boolean")
            return None
        if not isinstance(value, kinds):
            self.problem(name, f"must be {label}, not {toml_type(value)}")
            return None
        return value

    def string(self, name: str, default: Any = _MISSING, *, choices: tuple[str, ...] = ()) -> Any:
        value = self._typed(name, (str,), "a string", default)
        if isinstance(value, str) and value is not default:
            if choices and value not in choices:
                # A stricter cutoff than for keys: short values ("1.1" against "1.3") are no typos.
                close = difflib.get_close_matches(value, choices, n=1, cutoff=0.75)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                self.problem(
                    name, f"must be one of {', '.join(repr(c) for c in choices)}, not {value!r}{hint}"
                )
                return None
            if not choices and not value:
                self.problem(name, "must not be empty")
                return None
        return value

    def number(self, name: str, default: Any = _MISSING, *, positive: bool = True) -> Any:
        value = self._typed(name, (int, float), "a number", default)
        if isinstance(value, int | float) and value is not default:
            if math.isnan(value) or math.isinf(value):
                self.problem(name, "must be a finite number")
                return None
            if positive and value <= 0:
                self.problem(name, f"must be greater than 0, not {value}")
                return None
            if value < 0:
                self.problem(name, f"must not be negative, not {value}")
                return None
            return float(value)
        return value

    def integer(self, name: str, default: Any = _MISSING, *, minimum: int = 1) -> Any:
        value = self._typed(name, (int,), "an integer", default)
        if isinstance(value, int) and value is not default and value < minimum:
            self.problem(name, f"must be at least {minimum}, not {value}")
            return None
        return value

    def boolean(self, name: str, default: Any = _MISSING) -> Any:
        return self._typed(name, (bool,), "true or false", default)

    def table(self, name: str, *, required: bool = False) -> _Table | None:
        value = self.raw(name)
        if value is _MISSING:
            if required:
                self.problem(name, "is required")
            return None
        if not isinstance(value, dict):
            self.problem(name, f"must be a table, not {toml_type(value)}")
            return None
        return _Table(self._problems, self.file, self.key(name), value)

    def tables(self, name: str) -> Iterator[_Table]:
        """Each table of an array of tables (``[[route]]``), keyed ``name[1]``, ``name[2]``, ..."""
        value = self.raw(name)
        if value is _MISSING:
            return
        if not isinstance(value, list):
            self.problem(name, f"must be an array of tables, not {toml_type(value)}")
            return
        for i, item in enumerate(value, start=1):
            if not isinstance(item, dict):
                self.problem(f"{name}[{i}]", f"must be a table, not {toml_type(item)}")
                continue
            yield _Table(self._problems, self.file, self.key(f"{name}[{i}]"), item)

    def secret(self, name: str, base_dir: Path, default: Any = _MISSING) -> Any:
        value = self.string(name, default)
        if not isinstance(value, str) or value is default:
            return value
        report = lambda msg: self.problem(name, msg)  # noqa: E731
        return resolve_secret(value, base_dir, report, where=(self.file, self.key(name)))

    def skip_rest(self) -> None:
        """Ask for every key: after a problem that decides what the table may hold (a misspelled
        ``auth.type``), its other keys are not known to be wrong, so ``done`` does not report them."""
        for name in self.data:
            self._seen[name] = None

    def done(self) -> None:
        """Report keys nobody asked for: a typo must not silently turn a limit off. The nearest key
        asked for is suggested (as in transform specs), else the keys this table takes."""
        for name in self.data:
            if name not in self._seen:
                close = difflib.get_close_matches(name, list(self._seen), n=1)
                if close:
                    self.problem(name, f'unknown key; did you mean "{close[0]}"?')
                elif self._seen:
                    self.problem(name, f"unknown key; expected one of {', '.join(sorted(self._seen))}")
                else:
                    self.problem(name, "unknown key")


def parse_listen(value: str) -> Listen:
    """``HOST:PORT`` or ``[IPv6]:PORT`` -> Listen; raises ValueError with a readable message."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not host:
        raise ValueError(f"must be HOST:PORT, not {value!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"port must be a number from 0 to 65535, not {port_text!r}")
    return Listen(host=host, port=int(port_text))


def _parse_base_url(t: _Table) -> URL | None:
    text = t.string("base_url")
    if not isinstance(text, str):
        return None
    try:
        url = URL(text, encoded=True)
    except ValueError as exc:
        t.problem("base_url", f"is not a valid URL: {exc}")
        return None
    if url.scheme not in ("http", "https"):
        t.problem("base_url", f"must be an http:// or https:// URL, not {text!r}")
        return None
    if not url.raw_host:
        t.problem("base_url", f"has no host: {text!r}")
        return None
    if url.raw_user or url.raw_password:
        t.problem("base_url", "must not carry credentials; use auth instead")
        return None
    if url.raw_query_string or url.raw_fragment:
        t.problem("base_url", "must not have a query string or fragment")
        return None
    return url


def _compile_route_path(path: str) -> tuple[PathSegment, ...] | str:
    """Route path glob -> segments, or an error message."""
    if not path.startswith("/"):
        return f"must start with '/', not {path!r}"
    if "?" in path or "#" in path:
        return "must not contain a query string or fragment"
    segments = tuple(path[1:].split("/")) if path != "/" else ()
    for i, seg in enumerate(segments):
        if seg == "**" and i != len(segments) - 1:
            return "'**' may only be the last segment"
        if seg in (".", ".."):
            return "must not contain '.' or '..' segments"
        if ("*" in seg and seg not in ("*", "**")) or (not seg and i != len(segments) - 1):
            return f"segment {seg!r} is not allowed (use '*' for one whole segment, '**' for the rest)"
    return segments


class _Assets:
    """Schema files and transform specs named by routes, each loaded and compiled once per load."""

    def __init__(self, transforms_dir: Path) -> None:
        self.transforms_dir = transforms_dir
        self.schemas = SchemaRegistry(transforms_dir)
        self.schema_errors: dict[str, SchemaFileError] = {}
        self.listed: set[Path] = set()  # schema files whose own problems are listed already
        self.specs: dict[str, TransformSpec | TransformSpecError] = {}
        self.examples: dict[str, Example | ExampleError] = {}

    def schema(self, t: _Table, key: str) -> CompiledSchema | None:
        name = t.string(key, None)
        if not isinstance(name, str):
            return None
        if name not in self.schema_errors:
            try:
                return self.schemas.load(name)
            except SchemaFileError as exc:
                self.schema_errors[name] = exc
        error = self.schema_errors[name]
        if error.file is None:
            t.problem(key, str(error))
            return None
        # The file breaks its metaschema: every place it does, listed once, under the file itself.
        count = len(error.problems)
        if error.file == (self.transforms_dir / name).resolve():
            t.problem(key, f"{name} has {count} problem(s), listed under its own file")
        else:
            t.problem(key, f"{name} refers to {_display(error.file)}, which has {count} problem(s)")
        if error.file not in self.listed:
            self.listed.add(error.file)
            display = _display(error.file)
            t._problems.extend(Problem(display, where, message) for where, message in error.problems)
        return None

    def transform(self, t: _Table, key: str) -> TransformSpec | None:
        name = t.string(key, None)
        if not isinstance(name, str):
            return None
        if name not in self.specs:
            path = self.transforms_dir / name
            try:
                self.specs[name] = load_spec(path, display_name=_display(path))
            except TransformSpecError as exc:
                self.specs[name] = exc
        spec = self.specs[name]
        if isinstance(spec, TransformSpecError):
            t.problem(key, f"{name} has {len(spec.problems)} problem(s), listed under its own file")
            for line in spec.problems:
                file, _, rest = line.partition(": ")
                t._problems.append(Problem(file, "", rest))
            return None
        return spec

    def example_list(self, t: _Table) -> tuple[Example, ...]:
        """A route's ``examples``: files under the transforms folder, each loaded once per load."""
        raw = t.raw("examples")
        if raw is _MISSING:
            return ()
        if not isinstance(raw, list):
            t.problem("examples", f"must be an array of file names under transforms/, not {toml_type(raw)}")
            return ()
        found: list[Example] = []
        for i, name in enumerate(raw, start=1):
            key = f"examples[{i}]"
            if not isinstance(name, str) or not name:
                t.problem(key, f"must be a file name under transforms/, not {toml_type(name)}")
                continue
            if name not in self.examples:
                try:
                    self.examples[name] = load_example(self.transforms_dir, name, HTTP_METHODS)
                except ExampleError as exc:
                    self.examples[name] = exc
            example = self.examples[name]
            if isinstance(example, ExampleError):
                display = _display(self.transforms_dir / name)
                keyed = [(where, message) for where, message in example.problems if where]
                if keyed:
                    t.problem(key, f"{name} has {len(keyed)} problem(s), listed under its own file")
                    t._problems.extend(Problem(display, where, message) for where, message in keyed)
                for where, message in example.problems:
                    if not where:
                        t.problem(key, message)
                continue
            found.append(example)
        return tuple(found)


def _parse_route(t: _Table, assets: _Assets) -> Route | None:
    method = t.string("method", "*")
    if isinstance(method, str):
        method = method.upper()
        if method != "*" and method not in HTTP_METHODS:
            t.problem("method", f"must be an HTTP method or '*', not {method!r}")
            method = None
    path = t.string("path")
    segments: tuple[str, ...] | None = None
    if isinstance(path, str):
        compiled = _compile_route_path(path)
        if isinstance(compiled, str):
            t.problem("path", compiled)
        else:
            segments = compiled
    idempotency = t.string("idempotency", None, choices=IDEMPOTENCY_MODES)
    request_schema = assets.schema(t, "request_schema")
    response_schema = assets.schema(t, "response_schema")
    schema_mode = t.string("response_schema_mode", "enforce", choices=("enforce", "report"))
    request_transform = assets.transform(t, "request_transform")
    response_transform = assets.transform(t, "response_transform")
    rate_limit = _parse_rate_limit(rt) if (rt := t.table("rate_limit")) is not None else None
    delivery = t.string("delivery", "sync", choices=DELIVERY_MODES)
    faults = _parse_faults(ft) if (ft := t.table("faults")) is not None else None
    examples = assets.example_list(t)
    t.done()
    if method is None or segments is None:
        return None
    return Route(
        method=method,
        path=path,
        segments=segments,
        source=f"{t.file}: {t.path}",
        idempotency=idempotency,
        request_schema=request_schema,
        response_schema=response_schema,
        response_schema_mode="report" if schema_mode == "report" else "enforce",
        request_transform=request_transform,
        response_transform=response_transform,
        rate_limit=rate_limit,
        delivery="async" if delivery == "async" else "prefer" if delivery == "prefer" else "sync",
        faults=faults,
        examples=examples,
    )


_T = TypeVar("_T")


def _given(cls: Callable[..., _T], **values: Any) -> _T:
    """``cls(**values)`` without the values that are None (absent, or refused with a problem): those
    take the dataclass's own default, so each default is written once, in the model."""
    return cls(**{name: value for name, value in values.items() if value is not None})


def _parse_vendor(t: _Table, name: str, default_max_body: int, base_dir: Path) -> Vendor | None:
    if not _VENDOR_NAME.match(name):
        t.problem("", "vendor names are lowercase letters, digits, '-' and '_' (they are URL segments)")
    base_url = _parse_base_url(t)
    timeout = Timeout()
    if (tt := t.table("timeout")) is not None:
        timeout = _given(
            Timeout,
            connect_seconds=tt.number("connect_seconds", None),
            total_seconds=tt.number("total_seconds", None),
            read_idle_seconds=tt.number("read_idle_seconds", None),
        )
        tt.done()
    tls = _parse_vendor_tls(tl, base_dir) if (tl := t.table("tls")) is not None else Tls()
    auth = None
    if (at := t.table("auth")) is not None:
        auth = _parse_auth(at, base_dir)
    version = None
    if (vt := t.table("version")) is not None:
        version = _parse_version(vt, auth)
    max_body = t.integer("max_body_bytes", default_max_body) or default_max_body
    idempotency = Idempotency()
    if (it := t.table("idempotency")) is not None:
        idempotency = _parse_idempotency(it)
    rate_limit = _parse_rate_limit(rt, vendor=True) if (rt := t.table("rate_limit")) is not None else None
    concurrency = t.integer("concurrency", None)
    retry = _parse_retry(rt) if (rt := t.table("retry")) is not None else Retry()
    circuit = _parse_circuit(ct) if (ct := t.table("circuit")) is not None else Circuit()
    faults = _parse_faults(ft) if (ft := t.table("faults")) is not None else None
    allow_plaintext = t.boolean("allow_plaintext", False) is True
    t.done()
    if base_url is None:
        return None
    _refuse_plaintext(t, "base_url", base_url, allow_plaintext)
    if isinstance(auth, OAuth2ClientCredentials):
        _refuse_plaintext(t, "auth.token_url", auth.token_url, allow_plaintext)
    return Vendor(
        name=name,
        base_url=base_url,
        timeout=timeout,
        tls=tls,
        auth=auth,
        version=version,
        max_body_bytes=max_body,
        idempotency=idempotency,
        rate_limit=rate_limit,
        concurrency=concurrency,
        retry=retry,
        circuit=circuit,
        faults=faults,
        allow_plaintext=allow_plaintext,
    )


def _refuse_plaintext(t: _Table, key: str, url: URL, allowed: bool) -> None:
    """Plain http:// leaves this machine only when the vendor says ``allow_plaintext = true`` (and then
    with a warning, see ``_warnings``)."""
    if url.scheme == "http" and not is_loopback(url.raw_host or "") and not allowed:
        t.problem(
            key,
            f"is plain http:// to {url.raw_host}, which is not this machine: requests, answers and "
            "credentials would cross the network unencrypted; use https://, or set allow_plaintext = true",
        )


def _tls_file(t: _Table, key: str, base_dir: Path, *, required: bool = False) -> Path | None:
    text = t.string(key, _MISSING if required else None)
    if not isinstance(text, str):
        return None
    path = Path(text)
    path = path if path.is_absolute() else base_dir / path
    if not path.is_file():
        t.problem(key, f"file not found: {path}")
        return None
    return path


def _parse_vendor_tls(t: _Table, base_dir: Path) -> Tls:
    verify = t.boolean("verify", True)
    ca_file = _tls_file(t, "ca_file", base_dir)
    if t.has("ca_file") and verify is False:
        t.problem("ca_file", "is never used with verify = false; drop one of them")
    elif ca_file is not None and (why := ca_file_problem(ca_file)) is not None:
        t.problem("ca_file", why)
    cert_file = _tls_file(t, "cert_file", base_dir)
    key_file = _tls_file(t, "key_file", base_dir)
    for given, missing in (("cert_file", "key_file"), ("key_file", "cert_file")):
        if t.has(given) and not t.has(missing):
            t.problem(missing, f"is required with {given} (the client certificate and its key)")
    if cert_file is not None and key_file is not None and (why := key_pair_problem(cert_file, key_file)):
        t.problem("cert_file", why)
    min_version = t.string("min_version", "1.2", choices=TLS_VERSIONS)
    t.done()
    return _given(
        Tls,
        verify=verify is not False,
        ca_file=ca_file,
        cert_file=cert_file if key_file is not None else None,
        key_file=key_file if cert_file is not None else None,
        min_version=min_version,
    )


def _parse_retry(t: _Table) -> Retry:
    retry_on: frozenset[int] | None = None
    raw = t.raw("retry_on")
    if raw is not _MISSING:
        if not isinstance(raw, list):
            t.problem("retry_on", f"must be an array of HTTP status codes, not {toml_type(raw)}")
        else:
            codes: set[int] = set()
            for i, code in enumerate(raw, start=1):
                if isinstance(code, bool) or not isinstance(code, int) or not 400 <= code <= 599:
                    t.problem(f"retry_on[{i}]", f"must be a 4xx or 5xx status code, not {code!r}")
                else:
                    codes.add(code)
            retry_on = frozenset(codes)
    retry = _given(
        Retry,
        attempts=t.integer("attempts", None),
        base_delay_seconds=t.number("base_delay_seconds", None, positive=False),
        max_delay_seconds=t.number("max_delay_seconds", None, positive=False),
        retry_on=retry_on,
        budget_ratio=t.number("budget_ratio", None, positive=False),
        budget_min_per_second=t.number("budget_min_per_second", None, positive=False),
    )
    if retry.max_delay_seconds < retry.base_delay_seconds:
        base, cap = retry.base_delay_seconds, retry.max_delay_seconds
        t.problem("max_delay_seconds", f"must be at least base_delay_seconds ({base:g}), not {cap:g}")
    t.done()
    return retry


def _parse_circuit(t: _Table) -> Circuit:
    enabled = t.boolean("enabled", True)
    ratio = t.number("failure_ratio", None)
    if isinstance(ratio, float) and ratio > 1:
        t.problem("failure_ratio", f"must be greater than 0 and at most 1, not {ratio:g}")
        ratio = None
    circuit = _given(
        Circuit,
        enabled=enabled is not False,
        failure_ratio=ratio,
        min_requests=t.integer("min_requests", None),
        window_seconds=t.number("window_seconds", None),
        open_seconds=t.number("open_seconds", None),
    )
    t.done()
    return circuit


def _parse_faults(t: _Table) -> Faults:
    """``faults = { abort = { percent, status }, delay = { percent, seconds }, reset = { percent },
    header_control }`` (docs/configuration.md)."""
    values: dict[str, Any] = {}
    for kind in ("abort", "delay", "reset"):
        if (kt := t.table(kind)) is None:
            continue
        percent = kt.number("percent", positive=False)
        if isinstance(percent, float) and percent > 100:
            kt.problem("percent", f"must be from 0 to 100, not {percent:g}")
            percent = None
        values[f"{kind}_percent"] = percent
        if kind == "abort":
            status = kt.integer("status", None, minimum=400)
            if isinstance(status, int) and status > 599:
                kt.problem("status", f"must be a 4xx or 5xx status code, not {status}")
                status = None
            values["abort_status"] = status
        elif kind == "delay":
            values["delay_seconds"] = kt.number("seconds")
        kt.done()
    values["header_control"] = t.boolean("header_control", None)
    faults = _given(Faults, **values)
    if faults.abort_percent + faults.reset_percent > 100:
        t.problem(
            "reset.percent",
            f"abort and reset exclude each other, so their percents add up to at most 100, not "
            f"{faults.abort_percent:g} + {faults.reset_percent:g}",
        )
    t.done()
    return faults


def _fault_warnings(config_file: str, vendors: Mapping[str, Vendor]) -> tuple[Problem, ...]:
    """Faults are for tests: say so wherever they are on, so they never reach production unnoticed."""
    found: list[Problem] = []

    def describe(faults: Faults) -> str:
        parts = []
        if faults.abort_percent:
            parts.append(f"{faults.abort_percent:g}% answered {faults.abort_status}")
        if faults.delay_percent:
            parts.append(f"{faults.delay_percent:g}% delayed {faults.delay_seconds:g}s")
        if faults.reset_percent:
            parts.append(f"{faults.reset_percent:g}% reset")
        if faults.header_control:
            parts.append("callers may ask for faults with X-Gateway-Fault")
        return "fault injection is on (" + "; ".join(parts) + "): vendor calls fail on purpose"

    for name, vendor in vendors.items():
        if vendor.faults is not None and vendor.faults.enabled:
            found.append(Problem(config_file, f"vendors.{name}.faults", describe(vendor.faults)))
        for route in vendor.routes:
            if route.faults is not None and route.faults.enabled:
                file, _, where = route.source.partition(": ")
                found.append(Problem(file, f"{where}.faults", describe(route.faults)))
    return tuple(found)


def _parse_delivery(t: _Table) -> DeliverySettings:
    settings = _given(
        DeliverySettings,
        workers=t.integer("workers", None),
        max_attempts=t.integer("max_attempts", None),
        claim_after_seconds=t.number("claim_after_seconds", None),
        keep_seconds=t.number("keep_seconds", None),
        publish=_parse_publish(pt, DELIVERY_PLACEHOLDERS) if (pt := t.table("publish")) is not None else None,
    )
    t.done()
    return settings


_ALERT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_RATIO_KINDS = ("error_ratio", "rejected_ratio")
_GAUGE_KINDS = ("dlq_depth", "circuit_open")  # read as they are now: no window


def _parse_alerts(t: _Table, base_dir: Path, vendors: Collection[str]) -> AlertSettings:
    webhook_url = None
    text = t.string("webhook_url", None)
    if isinstance(text, str) and text.startswith(("env:", "file:")):
        # A webhook URL often carries its own credential (a token in the path): it may be a reference.
        secret = resolve_secret(text, base_dir, lambda msg: t.problem("webhook_url", msg))
        text = secret.reveal() if secret is not None else None
    if isinstance(text, str):
        try:
            url = URL(text, encoded=True)
        except ValueError:
            url = None
        if url is None or url.scheme not in ("http", "https") or not url.raw_host or url.raw_fragment:
            # Not echoed: it may have come from a secret reference.
            t.problem("webhook_url", "must be an absolute http:// or https:// URL with no fragment")
        else:
            webhook_url = url
    rules: list[AlertRule] = []
    names: set[str] = set()
    for rt in t.tables("rule"):
        rule = _parse_alert_rule(rt, vendors)
        if rule is None:
            continue
        if rule.name in names:
            rt.problem("name", f"{rule.name!r} is already the name of another rule; each needs its own")
            continue
        names.add(rule.name)
        rules.append(rule)
    evaluate = t.number("evaluate_seconds", None)
    if isinstance(evaluate, float) and evaluate < 1:
        t.problem("evaluate_seconds", f"must be at least 1, not {evaluate:g}")
        evaluate = None
    settings = _given(
        AlertSettings,
        evaluate_seconds=evaluate,
        webhook_url=webhook_url,
        webhook_timeout_seconds=t.number("webhook_timeout_seconds", None),
        webhook_attempts=t.integer("webhook_attempts", None),
        rules=tuple(rules),
    )
    t.done()
    return settings


def _parse_alert_rule(t: _Table, vendors: Collection[str]) -> AlertRule | None:
    name = t.string("name")
    if isinstance(name, str) and not _ALERT_NAME.match(name):
        t.problem("name", "rule names are letters, digits, '.', '-' and '_' (they are metric labels)")
        name = None
    vendor = t.string("vendor")
    if isinstance(vendor, str) and vendor != "*" and vendor not in vendors:
        t.problem("vendor", f'no [vendors.{vendor}] in the config (or "*" for every vendor)')
        vendor = None
    kind = t.string("kind", choices=ALERT_KINDS)
    threshold = None
    if kind == "circuit_open":
        if t.has("threshold"):
            t.raw("threshold")
            t.problem("threshold", "is not used with kind 'circuit_open' (it fires while open)")
    elif kind is not None:
        threshold = t.number("threshold", positive=kind == "p99_latency")
        if isinstance(threshold, float) and kind in _RATIO_KINDS and threshold >= 1:
            t.problem("threshold", f"is a ratio: at least 0 and below 1, not {threshold:g}")
            threshold = None
    window = None
    if kind in _GAUGE_KINDS and t.has("window_seconds"):
        t.raw("window_seconds")
        t.problem("window_seconds", f"is not used with kind {kind!r}: it is read as it is now")
    else:
        window = t.number("window_seconds", None)
        if isinstance(window, float) and not 1 <= window <= ALERT_MAX_WINDOW_SECONDS:
            t.problem("window_seconds", f"must be from 1 to {ALERT_MAX_WINDOW_SECONDS:g}, not {window:g}")
            window = None
    min_requests = None
    if kind is not None and kind not in _RATIO_KINDS and t.has("min_requests"):
        t.raw("min_requests")
        t.problem("min_requests", "is used only by kinds 'error_ratio' and 'rejected_ratio'")
    else:
        min_requests = t.integer("min_requests", None, minimum=0)
    for_seconds = t.number("for_seconds", None, positive=False)
    t.done()
    if name is None or vendor is None or kind is None or (threshold is None and kind != "circuit_open"):
        return None
    return _given(
        AlertRule,
        name=name,
        vendor=vendor,
        kind=kind,
        threshold=threshold,
        window_seconds=window,
        for_seconds=for_seconds,
        min_requests=min_requests,
    )


def _parse_rate_limit(t: _Table, *, vendor: bool = False) -> RateLimit | None:
    """A ``rate_limit`` table; ``vendor``: a vendor's, the only one that takes ``max_pause_seconds``."""
    requests = t.integer("requests")
    scope = t.string("scope", None, choices=RATE_SCOPES)
    burst = t.integer("burst", None)
    max_queue = t.integer("max_queue", None, minimum=0)
    max_pause = None
    if vendor:
        max_pause = t.number("max_pause_seconds", None)
    elif t.has("max_pause_seconds"):
        t.raw("max_pause_seconds")
        t.problem(
            "max_pause_seconds",
            "only a vendor's rate_limit has this (a vendor's pause holds the vendor's queue)",
        )
    count = requests if isinstance(requests, int) else 1  # refused: a problem, and no limit built from it
    limit = _given(
        RateLimit,
        requests=count,
        per_seconds=t.number("per_seconds", None),
        max_wait_seconds=t.number("max_wait_seconds", None, positive=False),
        scope=scope,
        burst=burst if burst is not None else count,
        max_queue=max_queue if max_queue is not None else 0,
        max_pause_seconds=max_pause,
    )
    t.done()
    if not isinstance(requests, int):
        return None
    if max_queue is None:
        # As many as the limit can admit within max_wait_seconds: a longer queue only turns immediate
        # 429s into slower ones, and costs memory under a flood.
        queue = math.ceil(limit.requests * limit.max_wait_seconds / limit.per_seconds - 1e-9)
        limit = dataclasses.replace(limit, max_queue=queue)
    return limit


def _parse_idempotency(t: _Table) -> Idempotency:
    forward = t.string("forward_header", None)
    if isinstance(forward, str) and not _HEADER_NAME.match(forward):
        t.problem("forward_header", f"is not a valid header name: {forward!r}")
        forward = None
    settings = _given(
        Idempotency,
        forward_header=forward,
        ttl_seconds=t.number("ttl_seconds", None),
        lease_seconds=t.number("lease_seconds", None),
        max_body_bytes=t.integer("max_body_bytes", None, minimum=0),
    )
    t.done()
    return settings


def _parse_auth(t: _Table, base_dir: Path) -> Auth | OAuth2ClientCredentials | None:
    kind = t.string("type", choices=AUTH_TYPES)
    auth: Auth | OAuth2ClientCredentials | None = None
    if kind == "bearer":
        token = t.secret("token", base_dir)
        auth = Auth(type="bearer", secret=token) if token else None
    elif kind in ("header", "query"):
        name = t.string("name")
        if kind == "header" and isinstance(name, str) and not _HEADER_NAME.match(name):
            t.problem("name", f"is not a valid header name: {name!r}")
            name = None
        value = t.secret("value", base_dir)
        auth = Auth(type=kind, name=name, secret=value) if name and value else None
    elif kind == "basic":
        username = t.string("username")
        if isinstance(username, str) and ":" in username:
            t.problem("username", "must not contain ':'")
            username = None
        password = t.secret("password", base_dir)
        auth = Auth(type="basic", username=username, secret=password) if username and password else None
    elif kind == "oauth2_client_credentials":
        auth = _parse_oauth2(t, base_dir)
    else:
        t.skip_rest()  # which keys belong here depends on the type, already reported
    t.done()
    return auth


def _parse_oauth2(t: _Table, base_dir: Path) -> OAuth2ClientCredentials | None:
    token_url: URL | None = None
    text = t.string("token_url")
    if isinstance(text, str):
        try:
            token_url = URL(text, encoded=True)
        except ValueError as exc:
            t.problem("token_url", f"is not a valid URL: {exc}")
        if token_url is not None and (token_url.scheme not in ("http", "https") or not token_url.raw_host):
            t.problem("token_url", f"must be an absolute http:// or https:// URL, not {text!r}")
            token_url = None
        if token_url is not None and (token_url.raw_user or token_url.raw_password or token_url.raw_fragment):
            t.problem("token_url", "must not carry credentials or a fragment")
            token_url = None
    client_id = t.secret("client_id", base_dir)
    client_secret = t.secret("client_secret", base_dir)
    scope = t.string("scope", "")
    if isinstance(scope, str) and any(c in scope for c in '\r\n"\\'):
        t.problem("scope", "must be space-separated scope tokens")
        scope = None
    client_auth = t.string("client_auth", "basic", choices=("basic", "body"))
    if token_url is None or not client_id or not client_secret or scope is None or client_auth is None:
        return None
    return OAuth2ClientCredentials(
        token_url=token_url,
        client_id=client_id,
        client_secret=client_secret,
        scope=scope,
        client_auth="body" if client_auth == "body" else "basic",
    )


# A path segment the gateway may put in front of vendor paths (no escapes, globs or dot segments).
_PREFIX_SEGMENT = re.compile(r"^[A-Za-z0-9_~-][A-Za-z0-9._~-]*$")


def _parse_version(t: _Table, auth: Auth | OAuth2ClientCredentials | None) -> VersionPin | None:
    kinds = [k for k in ("header", "query", "path_prefix") if t.has(k)]
    if len(kinds) != 1:
        for key in ("header", "query", "path_prefix", "value"):
            t.raw(key)
        t.problem(
            "", 'needs exactly one of header, query or path_prefix, e.g. { header = "X-V", value = "1" }'
        )
        return None
    kind = kinds[0]
    if kind == "path_prefix":
        prefix = t.string("path_prefix")
        if t.has("value"):
            t.raw("value")
            t.problem("value", "is not used with path_prefix (the prefix is the version)")
        t.done()
        if not isinstance(prefix, str):
            return None
        segments = tuple(prefix.strip("/").split("/"))
        if not prefix.startswith("/") or not all(_PREFIX_SEGMENT.match(seg) for seg in segments):
            t.problem(
                "path_prefix", f"must be a path like '/v2' (letters, digits, '.', '_', '~', '-'): {prefix!r}"
            )
            return None
        return VersionPin(kind="path_prefix", value="/" + "/".join(segments), segments=segments)
    name = t.string(kind)
    value = t.string("value")
    t.done()
    if isinstance(name, str) and kind == "header" and not _HEADER_NAME.match(name):
        t.problem("header", f"is not a valid header name: {name!r}")
        name = None
    if isinstance(value, str) and not (value.isprintable() and value.isascii()):
        t.problem("value", "must be printable ASCII")
        value = None
    if isinstance(name, str) and (kind, name.lower() if kind == "header" else name) in _auth_sets(auth):
        t.problem(kind, f"{name!r} is already set by auth")
        name = None
    if not isinstance(name, str) or not isinstance(value, str):
        return None
    return VersionPin(kind="header" if kind == "header" else "query", name=name, value=value)


def _auth_sets(auth: Auth | OAuth2ClientCredentials | None) -> set[tuple[str, str]]:
    """The ("header", lowercase name) or ("query", name) that auth injects."""
    if auth is None:
        return set()
    if isinstance(auth, OAuth2ClientCredentials) or auth.type in ("bearer", "basic"):
        return {("header", "authorization")}
    return {("header", auth.name.lower())} if auth.type == "header" else {("query", auth.name)}


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address, IPv6 without brackets) is this machine. A name is
    loopback only when it is ``localhost`` (RFC 6761): ``127.example.com`` is somebody else's."""
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


_CLIENT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


def _parse_clients(
    t: _Table, base_dir: Path, vendors: Collection[str], client_certs: bool
) -> dict[str, Client]:
    """``client_certs``: callers present certificates ([gateway] tls.client_ca_file), so a client may
    be known by its certificate's subject instead of (or as well as) a key."""
    clients: dict[str, Client] = {}
    if not t.data:
        t.problem("", "has no clients; remove [clients] to run without caller authentication")
    seen_keys: dict[str, str] = {}  # key value -> client name, to refuse two clients with one key
    subjects: dict[str, CertSubject] = {}
    for name in t.data:
        ct = t.table(name)
        if ct is None:
            continue
        if not _CLIENT_NAME.match(name):
            ct.problem("", "client names are letters, digits, '.', '-' and '_'")
        subject = _parse_cert_subject(ct, client_certs)
        if subject is not None:
            for other, known in subjects.items():
                if known.attributes <= subject.attributes or subject.attributes <= known.attributes:
                    ct.problem(
                        "cert_subject",
                        f"cannot be told apart from clients.{other}.cert_subject ({known.text!r}): a "
                        "certificate could match both",
                    )
            subjects[name] = subject
        if not ct.has("key") and not ct.has("cert_subject"):
            ct.problem(
                "key",
                'is required: a gateway key ("env:NAME" or "file:/path"), or a cert_subject when callers '
                "present certificates ([gateway] tls.client_ca_file)",
            )
        key = ct.secret("key", base_dir, None)
        rules: list[AllowRule] = []
        allow = ct.raw("allow")
        if allow is _MISSING:
            ct.problem("allow", 'is required: a list of "vendor" or "vendor:METHOD /path/glob"')
        elif not isinstance(allow, list):
            ct.problem("allow", f"must be an array of strings, not {toml_type(allow)}")
        else:
            for i, entry in enumerate(allow, start=1):
                rule = _parse_allow(ct, f"allow[{i}]", entry, vendors)
                if rule is not None:
                    rules.append(rule)
        rate_limit = _parse_rate_limit(rt) if (rt := ct.table("rate_limit")) is not None else None
        ct.done()
        if isinstance(key, Secret):
            other = seen_keys.setdefault(key.reveal(), name)
            if other != name:
                ct.problem("key", f"is the same key as clients.{other}; each client needs its own")
                continue
        if isinstance(key, Secret) or subject is not None:
            clients[name] = Client(
                name=name,
                key=key if isinstance(key, Secret) else None,
                cert_subject=subject,
                allow=tuple(rules),
                rate_limit=rate_limit,
            )
    return clients


def _parse_cert_subject(ct: _Table, client_certs: bool) -> CertSubject | None:
    text = ct.string("cert_subject", None)
    if not isinstance(text, str):
        return None
    if not client_certs:
        ct.problem(
            "cert_subject",
            "needs [gateway] tls with client_ca_file: only then do callers present certificates",
        )
        return None
    attributes: set[tuple[str, str]] = set()
    for part in text.split(","):
        name, sep, value = (piece.strip() for piece in part.partition("="))
        if not sep or not value or name not in SUBJECT_ATTRIBUTES:
            known = ", ".join(SUBJECT_ATTRIBUTES)
            ct.problem(
                "cert_subject",
                f'must be ATTRIBUTE=value pairs separated by commas, like "CN=billing,O=Acme" ({known}); '
                f"{part.strip()!r} is not one",
            )
            return None
        attributes.add((SUBJECT_ATTRIBUTES[name], value))
    return CertSubject(text=text, attributes=frozenset(attributes))


def _parse_listener_tls(t: _Table, base_dir: Path) -> ListenerTls | None:
    cert_file = _tls_file(t, "cert_file", base_dir, required=True)
    key_file = _tls_file(t, "key_file", base_dir, required=True)
    client_ca_file = _tls_file(t, "client_ca_file", base_dir)
    t.done()
    if cert_file is not None and key_file is not None and (why := key_pair_problem(cert_file, key_file)):
        t.problem("cert_file", why)
    if client_ca_file is not None and (why := ca_file_problem(client_ca_file)):
        t.problem("client_ca_file", why)
    if cert_file is None or key_file is None:
        return None
    return ListenerTls(cert_file=cert_file, key_file=key_file, client_ca_file=client_ca_file)


def _parse_allow(ct: _Table, where: str, entry: object, vendors: Collection[str]) -> AllowRule | None:
    if not isinstance(entry, str):
        ct.problem(where, f"must be a string, not {toml_type(entry)}")
        return None
    vendor, sep, rest = entry.partition(":")
    vendor = vendor.strip()
    if vendor not in vendors:
        ct.problem(where, f"no [vendors.{vendor}] in the config")
        return None
    if not sep:
        return AllowRule(vendor=vendor)
    method, _, path = rest.strip().partition(" ")
    method, path = method.upper(), path.strip()
    if method != "*" and method not in HTTP_METHODS:
        ct.problem(where, f'must be "vendor" or "vendor:METHOD /path/glob"; {method!r} is not a method or *')
        return None
    compiled = _compile_route_path(path)
    if isinstance(compiled, str):
        ct.problem(where, f"path {compiled}")
        return None
    route = Route(method=method, path=path, segments=compiled, source=f"{ct.file}: {ct.key(where)}")
    return AllowRule(vendor=vendor, route=route)


def _warnings(config_file: str, vendors: Mapping[str, Vendor]) -> tuple[Problem, ...]:
    found: list[Problem] = []
    for name, vendor in vendors.items():
        if not vendor.tls.verify:
            found.append(
                Problem(
                    config_file,
                    f"vendors.{name}.tls.verify",
                    "is false: the vendor's certificate is not checked, so anyone on the network path can "
                    "read and change this traffic, credentials included",
                )
            )
        urls = [("base_url", vendor.base_url, "requests, answers and credentials")]
        if isinstance(auth := vendor.auth, OAuth2ClientCredentials):
            urls.append(("auth.token_url", auth.token_url, "the client secret and tokens"))
        for key, url, what in urls:
            if url.scheme == "http" and not is_loopback(url.raw_host or ""):  # allow_plaintext said so
                found.append(
                    Problem(
                        config_file,
                        f"vendors.{name}.{key}",
                        f"is plain http (allow_plaintext = true): {what} cross the network unencrypted",
                    )
                )
    return tuple(found)


def _rate_warnings(
    config_file: str, store: str, vendors: Mapping[str, Vendor], clients: Mapping[str, Client]
) -> tuple[Problem, ...]:
    """A global limit on the memory store is shared by nobody: each process would get the whole limit."""
    if store != "memory://":
        return ()
    found: list[Problem] = []
    message = 'is "global" but the store is memory://: each gateway process enforces the limit on its own'
    for name, vendor in vendors.items():
        if vendor.rate_limit is not None and vendor.rate_limit.scope == "global":
            found.append(Problem(config_file, f"vendors.{name}.rate_limit.scope", message))
        for route in vendor.routes:
            if route.rate_limit is not None and route.rate_limit.scope == "global":
                file, _, where = route.source.partition(": ")
                found.append(Problem(file, f"{where}.rate_limit.scope", message))
    for name, client in clients.items():
        if client.rate_limit is not None and client.rate_limit.scope == "global":
            found.append(Problem(config_file, f"clients.{name}.rate_limit.scope", message))
    return tuple(found)


def _toml_file(path: Path, display: str, problems: list[Problem]) -> dict[str, Any] | None:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        problems.append(Problem(display, "", "file not found"))
    except OSError as exc:
        problems.append(Problem(display, "", f"cannot read: {exc.strerror or exc}"))
    except tomllib.TOMLDecodeError as exc:
        problems.append(Problem(display, "", f"invalid TOML: {exc}"))
    return None


def _display(path: Path) -> str:
    """Paths in messages are relative to the working directory when they are below it."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def load_config(path: str | os.PathLike[str]) -> Config:
    """Load config.toml and its routes; raise ConfigError listing every problem found."""
    with collecting() as managed:  # secret-manager references, read together at the end
        return _load_config(path, managed)


def _load_config(path: str | os.PathLike[str], managed: list[Any]) -> Config:
    config_path = Path(path).absolute()
    base_dir = config_path.parent
    problems: list[Problem] = []
    display = _display(config_path)
    data = _toml_file(config_path, display, problems)
    if data is None:
        raise ConfigError(problems)
    root = _Table(problems, display, "", data)

    g = root.table("gateway") or _Table(problems, display, "gateway", {})
    listen = None
    listen_text = g.string("listen", None)
    if isinstance(listen_text, str):
        try:
            listen = parse_listen(listen_text)
        except ValueError as exc:
            g.problem("listen", str(exc))
    store = g.string("store", None)
    if isinstance(store, str) and not (store == "memory://" or store.startswith(("redis://", "rediss://"))):
        g.problem("store", f"must be 'memory://' or a redis:// URL, not {store!r}")
        store = None
    dirs: dict[str, Path] = {}
    for key, default in (("routes_dir", "routes"), ("transforms_dir", "transforms")):
        text = g.string(key, default)
        folder = base_dir / (text if isinstance(text, str) else default)
        if g.has(key) and not folder.is_dir():
            g.problem(key, f"folder not found: {_display(folder)}")
        dirs[key] = folder
    settings = _given(
        GatewaySettings,
        listen=listen,
        store=store,
        max_body_bytes=g.integer("max_body_bytes", None),
        routes_dir=dirs["routes_dir"],
        transforms_dir=dirs["transforms_dir"],
        shutdown_timeout_seconds=g.number("shutdown_timeout_seconds", None, positive=False),
        header_timeout_seconds=g.number("header_timeout_seconds", None),
        body_timeout_seconds=g.number("body_timeout_seconds", None),
        keepalive_timeout_seconds=g.number("keepalive_timeout_seconds", None),
        max_url_bytes=g.integer("max_url_bytes", None, minimum=256),
        max_header_bytes=g.integer("max_header_bytes", None, minimum=1024),
        max_connections=g.integer("max_connections", None),
        tls=_parse_listener_tls(gt, base_dir) if (gt := g.table("tls")) is not None else None,
        admin_key=g.secret("admin_key", base_dir, None),
    )
    g.done()
    max_body = settings.max_body_bytes

    vendors: dict[str, Vendor] = {}
    if (vt := root.table("vendors")) is not None:
        for name in vt.data:
            vendor_table = vt.table(name)
            if vendor_table is not None and (vendor := _parse_vendor(vendor_table, name, max_body, base_dir)):
                vendors[name] = vendor
    clients: dict[str, Client] = {}
    if (ct := root.table("clients")) is not None:
        client_certs = settings.tls is not None and settings.tls.client_ca_file is not None
        clients = _parse_clients(ct, base_dir, set(vt.data) if vt else set(), client_certs)
    tracing = _parse_tracing(tt) if (tt := root.table("tracing")) is not None else TracingSettings()
    delivery = _parse_delivery(dt) if (dt := root.table("delivery")) is not None else DeliverySettings()
    bus = _parse_bus(bt, base_dir) if (bt := root.table("bus")) is not None else BusSettings()
    assets = _Assets(settings.transforms_dir)
    webhooks: dict[str, Webhook] = {}
    if (wt := root.table("webhooks")) is not None:
        for name in wt.data:
            if (hook_table := wt.table(name)) is not None and (
                hook := _parse_webhook(hook_table, name, base_dir, assets)
            ):
                webhooks[name] = hook
    at = root.table("alerts")
    alerts = _parse_alerts(at, base_dir, set(vt.data) if vt else set()) if at else AlertSettings()
    secrets = _parse_secrets(st, base_dir) if (st := root.table("secrets")) is not None else SecretsSettings()
    root.done()
    problems += _bus_problems(display, settings.store, bus, webhooks, delivery)

    vendors = _load_routes(
        settings.routes_dir,
        vendors,
        problems,
        known=set(vt.data) if vt else set(),
        assets=assets,
    )
    secret_warnings: list[Problem] = []
    if not problems:  # the secret managers are asked only about a config that is otherwise sound
        found, secret_warnings = resolve_managed(managed, secrets)
        problems += found + _admin_key_problems(display, settings, clients)
    if problems:
        raise ConfigError(problems)
    secrets = replace(secrets, managed=tuple(sorted({entry.secret.reference for entry in managed})))
    return Config(
        path=config_path,
        gateway=settings,
        vendors=vendors,
        clients=clients,
        tracing=tracing,
        delivery=delivery,
        webhooks=webhooks,
        bus=bus,
        alerts=alerts,
        warnings=_warnings(display, vendors)
        + _rate_warnings(display, settings.store, vendors, clients)
        + _delivery_warnings(settings.store, vendors)
        + _fault_warnings(display, vendors)
        + tuple(secret_warnings)
        + _admin_warnings(display, settings, clients),
        secrets=secrets,
    )


def _admin_key_problems(file: str, settings: GatewaySettings, clients: Mapping[str, Client]) -> list[Problem]:
    admin = settings.admin_key
    if admin is None:
        return []
    for name, client in clients.items():
        if client.key is not None and client.key.reveal() == admin.reveal():
            return [
                Problem(file, "gateway.admin_key", f"is the same key as clients.{name}; it needs its own")
            ]
    return []


def _admin_warnings(
    file: str, settings: GatewaySettings, clients: Mapping[str, Client]
) -> tuple[Problem, ...]:
    if not clients or settings.admin_key is not None:
        return ()
    message = (
        "is not set while [clients] is: /_gateway/metrics, dashboard, deprecations and the other admin "
        "endpoints answer 403 to everyone (health and ready stay open; clients still read their own "
        "deliveries); set admin_key for operators and Prometheus"
    )
    return (Problem(file, "gateway.admin_key", message),)


def _parse_secrets(t: _Table, base_dir: Path) -> SecretsSettings:
    """``[secrets]``: the secret managers. Their own credentials are env: or file: references only."""

    def credential(table: _Table, name: str) -> Secret | None:
        text = table.string(name, None)
        if not isinstance(text, str):
            return None
        return resolve_secret(text, base_dir, lambda msg: table.problem(name, msg))

    aws = None
    if (at := t.table("aws")) is not None:
        region = at.string("region", None)
        endpoint = _secrets_url(at, "endpoint_url", required=False)
        at.done()
        aws = AwsSecretsManager(region=region, endpoint_url=str(endpoint) if endpoint else None)
    vault = None
    if (vt := t.table("vault")) is not None:
        address = _secrets_url(vt, "address", required=True)
        token = credential(vt, "token")
        role_id = secret_id = None
        if (rt := vt.table("approle")) is not None:
            for key in ("role_id", "secret_id"):
                if not rt.has(key):
                    rt.problem(key, "is required")
            role_id, secret_id = credential(rt, "role_id"), credential(rt, "secret_id")
            rt.done()
        if vt.has("token") == vt.has("approle"):
            vt.problem(
                "", "needs token = SECRET or approle = { role_id = SECRET, secret_id = SECRET }, one of them"
            )
        ca_file = _tls_file(vt, "ca_file", base_dir)
        if ca_file is not None and (why := ca_file_problem(ca_file)):
            vt.problem("ca_file", why)
        vt.done()
        if address is not None:
            vault = Vault(address=address, token=token, role_id=role_id, secret_id=secret_id, ca_file=ca_file)
    settings = _given(
        SecretsSettings, refresh_seconds=t.number("refresh_seconds", None), aws=aws, vault=vault
    )
    t.done()
    return settings


def _secrets_url(t: _Table, key: str, *, required: bool) -> URL | None:
    text = t.string(key, _MISSING if required else None)
    if not isinstance(text, str):
        return None
    try:
        url = URL(text, encoded=True)
    except ValueError as exc:
        t.problem(key, f"is not a valid URL: {exc}")
        return None
    if url.scheme not in ("http", "https") or not url.raw_host or url.raw_query_string or url.raw_fragment:
        t.problem(key, f"must be an http:// or https:// URL with a host and no query, not {text!r}")
        return None
    if url.scheme == "http" and not is_loopback(url.raw_host):
        t.problem(
            key,
            f"is plain http:// to {url.raw_host}: secrets would cross the network unencrypted; use https://",
        )
        return None
    return url


def _delivery_warnings(store: str, vendors: Mapping[str, Vendor]) -> tuple[Problem, ...]:
    """Async routes on the memory store: the queue lives in this one process and dies with it."""
    if store != "memory://":
        return ()
    found: list[Problem] = []
    for vendor in vendors.values():
        for route in vendor.routes:
            if route.delivery != "sync":
                file, _, where = route.source.partition(": ")
                found.append(
                    Problem(
                        file,
                        f"{where}.delivery",
                        f"is {route.delivery!r} but the store is memory://: accepted deliveries live in "
                        "this process only and are lost if it stops; use a redis:// store to keep them",
                    )
                )
    return tuple(found)


def _parse_tracing(t: _Table) -> TracingSettings:
    exporter = t.string("exporter", "none", choices=("none", "console", "otlp"))
    endpoint = t.string("endpoint", None)
    if isinstance(endpoint, str) and not endpoint.startswith(("http://", "https://")):
        t.problem("endpoint", f"must be an http:// or https:// URL, not {endpoint!r}")
        endpoint = None
    if exporter == "otlp" and not t.has("endpoint"):
        t.problem("endpoint", 'is required with exporter = "otlp" (e.g. "http://127.0.0.1:4318/v1/traces")')
    ratio = t.number("sample_ratio", 1.0, positive=False)
    if isinstance(ratio, float) and ratio > 1:
        t.problem("sample_ratio", f"must be from 0 to 1, not {ratio:g}")
        ratio = None
    service = t.string("service_name", "egress-gateway")
    t.done()
    return TracingSettings(
        exporter=exporter if exporter in ("console", "otlp") else "none",
        endpoint=endpoint,
        sample_ratio=ratio if ratio is not None else 1.0,
        service_name=service if isinstance(service, str) else "egress-gateway",
    )


def _load_routes(
    routes_dir: Path, vendors: dict[str, Vendor], problems: list[Problem], *, known: set[str], assets: _Assets
) -> dict[str, Vendor]:
    routes: dict[str, list[Route]] = {}
    expose: dict[str, tuple[str, str]] = {}  # vendor -> (expose, file that said so)
    files = sorted(routes_dir.glob("*.toml")) if routes_dir.is_dir() else []
    for file in files:
        display = _display(file)
        data = _toml_file(file, display, problems)
        if data is None:
            continue
        t = _Table(problems, display, "", data)
        vendor = t.string("vendor")
        if isinstance(vendor, str) and vendor not in known:
            t.problem("vendor", f"no [vendors.{vendor}] in the config")
            vendor = None
        mode = t.string("expose", "declared", choices=("declared", "all"))
        parsed = [r for rt in t.tables("route") if (r := _parse_route(rt, assets)) is not None]
        t.done()
        if not isinstance(vendor, str) or not isinstance(mode, str):
            continue
        if vendor in expose and expose[vendor][0] != mode:
            t.problem("expose", f"{mode!r} contradicts {expose[vendor][0]!r} in {expose[vendor][1]}")
        expose.setdefault(vendor, (mode, display))
        routes.setdefault(vendor, []).extend(parsed)
    result: dict[str, Vendor] = {}
    for name, vendor in vendors.items():
        if name in expose:
            exposed: Literal["all", "declared"] = "all" if expose[name][0] == "all" else "declared"
            vendor = replace(vendor, expose=exposed, routes=tuple(routes[name]))
            _check_examples(vendor, problems)
        result[name] = vendor
    return result


def _check_examples(vendor: Vendor, problems: list[Problem]) -> None:
    """Each example must reach the route that lists it: routes match in order, so an earlier route
    that matches it too would take it."""
    for route in vendor.routes:
        file, _, where = route.source.partition(": ")
        for i, example in enumerate(route.examples, start=1):
            found = vendor.find_route(example.method, example.segments)
            if found is route:
                continue
            sends = f"{example.name} sends {example.method} {example.path}"
            if found is None or not route.matches(example.method, example.segments):
                message = f"{sends}, which this route ({route.method} {route.path}) does not match"
            else:
                earlier = found.source.partition(": ")[2]
                message = f"{sends}, which the earlier {earlier} ({found.method} {found.path}) takes"
            problems.append(Problem(file, f"{where}.examples[{i}]", message))


# -- [bus] and [webhooks.NAME] (docs/configuration.md) -------------------------------------------------------

_NATS_STREAM = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
WEBHOOK_PLACEHOLDERS = ("type", "id", "webhook")
DELIVERY_PLACEHOLDERS = ("state", "vendor")


def _parse_bus(t: _Table, base_dir: Path) -> BusSettings:
    url = t.string("nats_url", None)
    if isinstance(url, str):
        parsed: URL | None = None
        try:
            parsed = URL(url)
        except ValueError as exc:
            t.problem("nats_url", f"is not a valid URL: {exc}")
        if parsed is not None and (parsed.scheme not in ("nats", "tls") or not parsed.host):
            t.problem("nats_url", f"must be a nats:// or tls:// URL with a host, not {url!r}")
            url = None
        elif parsed is not None and (parsed.user or parsed.password):
            t.problem("nats_url", "must not carry credentials; use nats_token")
            url = None
    stream = t.string("nats_stream", None)
    if isinstance(stream, str) and not _NATS_STREAM.match(stream):
        t.problem("nats_stream", f"must be letters, digits, '-' and '_' (a stream name), not {stream!r}")
        stream = None
    settings = _given(
        BusSettings,
        nats_url=url,
        nats_token=t.secret("nats_token", base_dir, None),
        nats_stream=stream,
        publish_timeout_seconds=t.number("publish_timeout_seconds", None),
    )
    t.done()
    return settings


def _parse_publish(t: _Table, allowed: tuple[str, ...]) -> Publish | None:
    bus = t.string("bus", choices=("nats", "redis"))
    key = "stream" if bus == "redis" else "subject"
    other = "subject" if key == "stream" else "stream"
    if t.has(other):
        t.raw(other)
        t.problem(other, f'is not used with bus = "{bus}" (it takes {key})')
    text = t.string(key)
    max_length = t.integer("max_length", None)
    if max_length is not None and bus != "redis":
        t.problem("max_length", 'only a bus = "redis" stream is trimmed')
    t.done()
    if bus is None or not isinstance(text, str):
        return None
    template = parse_template(text, allowed, nats=bus == "nats")
    if isinstance(template, str):
        t.problem(key, template)
        return None
    return Publish(bus="redis" if bus == "redis" else "nats", subject=template, max_length=max_length)


def _parse_event_field(t: _Table, key: str) -> EventField | None:
    """``"/json/pointer"`` into the body, or ``"header:NAME"``."""
    text = t.string(key, None)
    if not isinstance(text, str):
        return None
    if text.startswith("header:"):
        name = text[len("header:") :]
        if not _HEADER_NAME.match(name):
            t.problem(key, f"is not a valid header name: {name!r}")
            return None
        return EventField(kind="header", name=name)
    try:
        tokens = compile_pointer(text)
    except PointerSyntaxError as exc:
        t.problem(key, f'{exc}; or "header:NAME" for a request header')
        return None
    if not tokens:
        t.problem(key, 'must point into the body ("/id"), not be the whole body')
        return None
    return EventField(kind="pointer", name=text, tokens=tokens)


def _parse_secret_list(
    t: _Table, key: str, base_dir: Path, check: Callable[[str], str | None] | None = None
) -> tuple[Secret, ...]:
    """A secret reference, or a list of them (every one is accepted: a secret being rotated);
    ``check`` says what is wrong with a resolved value, if anything (never echoing it)."""
    raw = t.raw(key)
    if raw is _MISSING:
        t.problem(key, "is required")
        return ()
    items = raw if isinstance(raw, list) else [raw]
    if not items:
        t.problem(key, "must name at least one secret")
    found: list[Secret] = []
    for i, item in enumerate(items, start=1):
        where = f"{key}[{i}]" if isinstance(raw, list) else key
        if not isinstance(item, str):
            t.problem(where, f"must be a secret reference string, not {toml_type(item)}")
            continue
        secret = resolve_secret(item, base_dir, lambda msg, where=where: t.problem(where, msg))
        if secret is not None and check is not None and (message := check(secret.reveal())) is not None:
            t.problem(where, message)
            secret = None
        if secret is not None:
            found.append(secret)
    return tuple(found)


def standard_webhook_key(secret: str) -> bytes | None:
    """A Standard Webhooks secret (``whsec_`` and base64) as its key bytes; None if it is not one."""
    text = secret.removeprefix("whsec_")
    try:  # padding optional, as the standardwebhooks libraries take it
        key = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (ValueError, binascii.Error):
        return None
    return key or None


def _check_standard_secret(value: str) -> str | None:
    if standard_webhook_key(value) is None:
        return "is not a Standard Webhooks secret (whsec_ followed by base64)"
    return None


def _parse_verify(t: _Table, base_dir: Path) -> WebhookVerify | None:
    scheme = t.string("scheme", choices=WEBHOOK_SCHEMES)
    secrets = _parse_secret_list(
        t, "secret", base_dir, _check_standard_secret if scheme == "standard" else None
    )
    tolerance = t.number("tolerance_seconds", None)
    if tolerance is not None and scheme not in ("stripe", "standard"):
        t.problem("tolerance_seconds", "only the stripe and standard schemes sign a timestamp")
    header = prefix = encoding = None
    if scheme == "hmac-sha256":
        header = t.string("header")
        if isinstance(header, str) and not _HEADER_NAME.match(header):
            t.problem("header", f"is not a valid header name: {header!r}")
            header = None
        prefix = t.string("prefix", None)
        encoding = t.string("encoding", None, choices=("hex", "base64"))
    else:
        for key in ("header", "prefix", "encoding"):
            if t.has(key):
                t.raw(key)
                t.problem(key, f'only scheme = "hmac-sha256" takes {key} (scheme {scheme!r} fixes it)')
    t.done()
    if scheme is None or not secrets or (scheme == "hmac-sha256" and header is None):
        return None
    return _given(
        WebhookVerify,
        scheme=scheme,
        secrets=secrets,
        tolerance_seconds=tolerance,
        header=header,
        prefix=prefix,
        encoding=encoding,
    )


def _parse_webhook(t: _Table, name: str, base_dir: Path, assets: _Assets) -> Webhook | None:
    if not _VENDOR_NAME.match(name):
        t.problem("", "webhook names are lowercase letters, digits, '-' and '_' (they are URL segments)")
    verify = _parse_verify(vt, base_dir) if (vt := t.table("verify", required=True)) is not None else None
    scheme = verify.scheme if verify is not None else None
    event_id = _parse_event_field(t, "event_id")
    if event_id is None and not t.has("event_id") and scheme is not None:
        event_id = WEBHOOK_DEFAULT_ID.get(scheme)
        if event_id is None:
            t.problem("event_id", f'is required with scheme {scheme!r}: a JSON Pointer or "header:NAME"')
    event_type = _parse_event_field(t, "event_type")
    if event_type is None and not t.has("event_type") and scheme is not None:
        event_type = WEBHOOK_DEFAULT_TYPE.get(scheme, TYPE_POINTER)
    dedupe = t.number("dedupe_seconds", None)
    publish = _parse_publish(pt, WEBHOOK_PLACEHOLDERS) if (pt := t.table("publish", required=True)) else None
    request_schema = assets.schema(t, "request_schema")
    request_transform = assets.transform(t, "request_transform")
    t.done()
    if verify is None or event_id is None or event_type is None or publish is None:
        return None
    return _given(
        Webhook,
        name=name,
        verify=verify,
        event_id=event_id,
        event_type=event_type,
        publish=publish,
        dedupe_seconds=dedupe,
        request_schema=request_schema,
        request_transform=request_transform,
    )


def _bus_problems(
    file: str, store: str, bus: BusSettings, webhooks: Mapping[str, Webhook], delivery: DeliverySettings
) -> list[Problem]:
    """Each publish names a bus that is configured: NATS needs [bus] nats_url, Redis a redis:// store."""
    found: list[Problem] = []
    targets = [(f"webhooks.{name}.publish.bus", hook.publish) for name, hook in webhooks.items()]
    if delivery.publish is not None:
        targets.append(("delivery.publish.bus", delivery.publish))
    for key, publish in targets:
        if publish.bus == "nats" and bus.nats_url is None:
            found.append(Problem(file, key, 'is "nats" but [bus] has no nats_url'))
        if publish.bus == "redis" and store == "memory://":
            found.append(
                Problem(
                    file, key, 'is "redis" but the store is memory://: set [gateway] store = "redis://..."'
                )
            )
    return found
