"""Secret references, resolved at load; a literal value is refused without being echoed.

- ``"env:NAME"``: the environment variable; ``"file:/path"``: the file's contents, stripped (read again
  on every reload, so a rotated file takes effect).
- ``"aws-sm:NAME"`` or ``"aws-sm:NAME#field"``: AWS Secrets Manager's secret NAME (its SecretString, or
  one string field of it as JSON); ``"vault:PATH#field"``: a field of HashiCorp Vault's KV v2 secret at
  PATH, whose first segment is the mount (``vault:secret/stripe#api_key`` reads ``secret/data/stripe``).

Secret-manager references are gathered while the config is read (``collecting``) and fetched together
once it is read (``resolve_managed``): one read per secret however many fields are used, all at once.
What was read is kept per process (``_cache``) for ``[secrets] refresh_seconds``: a reload within that
time reads nothing again, and ``upstream.secret_managers.refresh`` reads every secret each period and
reloads when one changed. A read that fails keeps the last value (a warning); with no last value it is
a config problem, so ``gateway run`` does not start and ``gateway check`` says why.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from .model import Problem, Secret, SecretsSettings

AWS_PREFIX = "aws-sm:"
VAULT_PREFIX = "vault:"
MANAGED_PREFIXES = (AWS_PREFIX, VAULT_PREFIX)
REFERENCE_FORMS = '"env:NAME", "file:/path", "aws-sm:NAME[#field]" or "vault:PATH#field"'


@dataclass(frozen=True, slots=True)
class Managed:
    """One secret-manager reference: where its secret lives (``source``) and which field of it."""

    source: tuple[str, str]  # ("aws", NAME) or ("vault", PATH)
    field: str | None

    @classmethod
    def parse(cls, reference: str) -> Managed | str:
        """The reference's parts, or what is wrong with it."""
        kind = "aws" if reference.startswith(AWS_PREFIX) else "vault"
        body = reference[len(AWS_PREFIX if kind == "aws" else VAULT_PREFIX) :]
        name, sep, field = body.rpartition("#") if "#" in body else (body, "", "")
        if sep and not field:
            return "names no field after '#'"
        if kind == "aws":
            return cls(("aws", name), field or None) if name else "names no secret (aws-sm:NAME[#field])"
        if not field:
            return "needs a field: vault:PATH#field (a KV v2 secret holds several)"
        mount, _, path = name.strip("/").partition("/")
        if not mount or not path:
            return "must be vault:MOUNT/PATH#field, like vault:secret/stripe#api_key"
        return cls(("vault", f"{mount}/{path}"), field)


@dataclass(frozen=True, slots=True)
class _Pending:
    secret: Secret
    managed: Managed
    file: str
    key: str


@dataclass(slots=True)
class _Read:
    value: Any  # aws: the SecretString; vault: the secret's fields
    at: float  # time.time() of the read


# (settings the source depends on, source) -> the last successful read. Per process, for the refresh.
_cache: dict[tuple[Any, tuple[str, str]], _Read] = {}
_collecting: ContextVar[list[_Pending] | None] = ContextVar("managed_secrets", default=None)


@contextlib.contextmanager
def collecting() -> Iterator[list[_Pending]]:
    """While a config is read: the secret-manager references met, to fetch them once it is read."""
    pending: list[_Pending] = []
    token = _collecting.set(pending)
    try:
        yield pending
    finally:
        _collecting.reset(token)


def resolve_secret(
    reference: str, base_dir: Path, report: Any, *, where: tuple[str, str] | None = None
) -> Secret | None:
    """``where`` (file, key): where a secret-manager reference may stand; without it only ``env:`` and
    ``file:`` are accepted (the secret managers' own credentials, webhook secrets checked at once)."""
    if reference.startswith("env:"):
        var = reference[4:]
        if not var:
            report("env: reference names no variable")
            return None
        value = os.environ.get(var)
        if value is None:
            report(f"environment variable {var} is not set")
            return None
        if not value:
            report(f"environment variable {var} is empty")
            return None
        return Secret(reference, value)
    if reference.startswith("file:"):
        file = Path(reference[5:])
        if not reference[5:]:
            report("file: reference names no file")
            return None
        file = file if file.is_absolute() else base_dir / file
        try:
            value = file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            report(f"cannot read secret file {file}: {exc.strerror or exc}")
            return None
        if not value:
            report(f"secret file {file} is empty")
            return None
        return Secret(reference, value)
    if reference.startswith(MANAGED_PREFIXES):
        pending = _collecting.get()
        if where is None or pending is None:
            report('must be "env:NAME" or "file:/path" here (secret managers are not read for this key)')
            return None
        managed = Managed.parse(reference)
        if isinstance(managed, str):
            report(f"{reference.partition(':')[0]}: reference {managed}")
            return None
        secret = Secret(reference, "")  # its value is filled in by resolve_managed
        pending.append(_Pending(secret, managed, *where))
        return secret
    # The value itself is never echoed: it may be a real credential pasted by mistake.
    forms = REFERENCE_FORMS if where is not None else '"env:NAME" or "file:/path"'
    report(f"must be a reference ({forms}), not a literal secret")
    return None


def _scope(kind: str, settings: SecretsSettings) -> Any:
    """What a read of this kind depends on besides the secret's name (the cache is keyed by it)."""
    if kind == "aws":
        aws = settings.aws
        return ("aws", aws.region if aws else None, aws.endpoint_url if aws else None)
    vault = settings.vault
    return ("vault", str(vault.address) if vault else None)


def cached(settings: SecretsSettings, source: tuple[str, str]) -> _Read | None:
    return _cache.get((_scope(source[0], settings), source))


def remember(settings: SecretsSettings, source: tuple[str, str], value: Any, at: float) -> bool:
    """Keep a successful read; True when it differs from the one kept before (a rotated secret)."""
    key = (_scope(source[0], settings), source)
    before = _cache.get(key)
    _cache[key] = _Read(value, at)
    return before is not None and before.value != value


def field_of(managed: Managed, value: Any) -> str:
    """The secret's value for ``managed`` out of what its source holds; raises ValueError saying why
    not (naming fields, never values)."""
    if managed.source[0] == "aws" and managed.field is None:
        if not isinstance(value, str) or not value:
            raise ValueError("holds no SecretString (a binary secret cannot be used)")
        return value
    fields = value
    if managed.source[0] == "aws":
        try:
            fields = orjson.loads(value) if isinstance(value, str) else None
        except orjson.JSONDecodeError:
            fields = None
        if not isinstance(fields, dict):
            raise ValueError(f"is not a JSON object, so it has no field {managed.field!r}")
    assert isinstance(fields, dict)
    if managed.field not in fields:
        names = ", ".join(sorted(map(str, fields))) or "none"
        raise ValueError(f"has no field {managed.field!r} (its fields: {names})")
    found = fields[managed.field]
    if not isinstance(found, str) or not found:
        raise ValueError(f"field {managed.field!r} is not a non-empty string")
    return found


def resolve_managed(
    pending: list[_Pending], settings: SecretsSettings
) -> tuple[list[Problem], list[Problem]]:
    """Fill in every gathered reference: (problems, warnings). Reads what the cache holds no fresh
    value for, each secret once, all together (``upstream.secret_managers.read``)."""
    problems: list[Problem] = []
    warnings: list[Problem] = []
    if not pending:
        return problems, warnings
    for entry in pending:
        kind = entry.managed.source[0]
        if kind == "aws" and settings.aws is None and not _aws_region_in_env():
            problems.append(
                Problem(entry.file, entry.key, "aws-sm: references need [secrets.aws] region (or AWS_REGION)")
            )
        if kind == "vault" and settings.vault is None:
            problems.append(Problem(entry.file, entry.key, "vault: references need [secrets.vault] address"))
    if problems:
        return problems, warnings
    now = time.time()
    sources = {entry.managed.source for entry in pending}
    stale = sorted(
        source
        for source in sources
        if (read := cached(settings, source)) is None or now - read.at >= settings.refresh_seconds
    )
    failures: dict[tuple[str, str], str] = {}
    if stale:
        from ..upstream.secret_managers import read_blocking  # aiobotocore is imported only when used

        for source, outcome in read_blocking(settings, stale).items():
            if isinstance(outcome, Failure):
                failures[source] = outcome.reason
            else:
                remember(settings, source, outcome, now)
    for entry in pending:
        source = entry.managed.source
        read = cached(settings, source)
        reference = entry.secret.reference
        if read is None:
            problems.append(Problem(entry.file, entry.key, f"cannot read {reference}: {failures[source]}"))
            continue
        if source in failures:
            age = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(read.at))
            warnings.append(
                Problem(
                    entry.file,
                    entry.key,
                    f"cannot read {reference} again ({failures[source]}); the value read at {age} is kept",
                )
            )
        try:
            entry.secret._value = field_of(entry.managed, read.value)
        except ValueError as exc:
            problems.append(Problem(entry.file, entry.key, f"{reference}: the secret {exc}"))
    return problems, warnings


@dataclass(frozen=True, slots=True)
class Failure:
    """A read that failed, and why (never a secret's value)."""

    reason: str


def _aws_region_in_env() -> bool:
    return bool(os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION"))
