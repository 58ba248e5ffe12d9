"""Reading secrets from AWS Secrets Manager and HashiCorp Vault, and reading them again on a schedule.

``read`` takes the secrets a config uses (``config.secrets.Managed.source``: ("aws", NAME) or
("vault", MOUNT/PATH)) and reads each once, all at the same time: AWS through ``aiobotocore``
(``GetSecretValue``; credentials from the usual AWS chain), Vault over its HTTP API through the
gateway's own ``Pool`` (``GET /v1/MOUNT/data/PATH``, KV version 2; with AppRole a
``POST /v1/auth/approle/login`` first, so the token used is a fresh, short-lived one). A failure is a
``Failure`` saying why, never an exception, and never carries a secret's value or a token.

``read_blocking`` is the loader's way in (config loading is synchronous): the same reads on an event
loop of their own, in a thread of their own, bounded by ``READ_TIMEOUT_SECONDS``.

``refresh`` runs beside the server: every ``[secrets] refresh_seconds`` it reads every secret the
config in force uses; a changed value is kept and the config reloaded (reason ``secret rotated``),
which picks it up; a failed read logs ``secret_refresh_failed`` and the last value stays in use.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from typing import Any
from urllib.parse import quote

import orjson
from multidict import CIMultiDict

from .. import __version__
from ..config import Config, Secret
from ..config.model import AwsSecretsManager, SecretsSettings, Tls, Vault
from ..config.secrets import Failure, Managed, remember, resolve_secret
from ..observability.logging import Logger
from .forwarder import endpoint_of
from .pool import Pool, PoolError, Timeouts, VendorRequest
from .tls import client_context

READ_TIMEOUT_SECONDS = 30.0  # every read of one round together
CONNECT_SECONDS = 5.0
ANSWER_SECONDS = 10.0
MAX_ANSWER_BYTES = 1024 * 1024

_aws_session: Any = None

Source = tuple[str, str]
Outcome = Any | Failure  # aws: the SecretString; vault: the secret's fields (a dict)


async def read(settings: SecretsSettings, sources: Sequence[Source]) -> dict[Source, Outcome]:
    aws = [name for kind, name in sources if kind == "aws"]
    vault = [path for kind, path in sources if kind == "vault"]
    outcomes: dict[Source, Outcome] = {}
    jobs: list[Awaitable[dict[str, Outcome]]] = []
    if aws:
        jobs.append(_read_aws(settings.aws or AwsSecretsManager(), aws))
    if vault:
        assert settings.vault is not None  # resolve_managed refused vault: references without it
        jobs.append(_read_vault(settings.vault, vault))
    results = await asyncio.gather(*jobs)
    kinds = (["aws"] if aws else []) + (["vault"] if vault else [])
    for kind, result in zip(kinds, results, strict=True):
        outcomes.update({(kind, name): outcome for name, outcome in result.items()})
    return outcomes


def read_blocking(settings: SecretsSettings, sources: Sequence[Source]) -> dict[Source, Outcome]:
    """``read`` from synchronous code, whether or not an event loop runs in the calling thread."""
    pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="secret-managers")
    try:
        return pool.submit(asyncio.run, read(settings, sources)).result(READ_TIMEOUT_SECONDS)
    except concurrent.futures.TimeoutError:
        reason = f"no answer within {READ_TIMEOUT_SECONDS:g}s"
        return {source: Failure(reason) for source in sources}
    finally:
        pool.shutdown(wait=False)


async def _read_aws(settings: AwsSecretsManager, names: list[str]) -> dict[str, Outcome]:
    from aiobotocore.config import AioConfig  # type: ignore[import-untyped]
    from aiobotocore.session import get_session  # type: ignore[import-untyped]
    from botocore.exceptions import BotoCoreError, ClientError  # type: ignore[import-untyped]

    config = AioConfig(
        connect_timeout=CONNECT_SECONDS,
        read_timeout=ANSWER_SECONDS,
        retries={"max_attempts": 2, "mode": "standard"},
        user_agent_extra=f"egress-gateway/{__version__}",
    )

    async def one(client: Any, name: str) -> Outcome:
        try:
            answer = await client.get_secret_value(SecretId=name)
        except ClientError as exc:
            error = exc.response.get("Error", {})
            return Failure(f"AWS Secrets Manager said {error.get('Code', 'no')}: {error.get('Message', '')}")
        except (BotoCoreError, OSError) as exc:
            return Failure(f"AWS Secrets Manager is unreachable: {exc}")
        value = answer.get("SecretString")
        if not isinstance(value, str):
            return Failure("the secret holds no SecretString (a binary secret cannot be used)")
        return value

    global _aws_session
    if _aws_session is None:  # kept: it parses botocore's service models once, not on every read
        _aws_session = get_session()
    try:
        async with _aws_session.create_client(
            "secretsmanager",
            # AWS_REGION as the AWS SDKs and Lambda set it; botocore itself reads AWS_DEFAULT_REGION.
            region_name=settings.region or os.environ.get("AWS_REGION") or None,
            endpoint_url=settings.endpoint_url,
            config=config,
        ) as client:
            outcomes = await asyncio.gather(*(one(client, name) for name in names))
    except (BotoCoreError, OSError, ValueError) as exc:  # no region, no credentials, a bad endpoint
        return {name: Failure(f"AWS Secrets Manager: {exc}") for name in names}
    return dict(zip(names, outcomes, strict=True))


async def _read_vault(settings: Vault, paths: list[str]) -> dict[str, Outcome]:
    endpoint = endpoint_of(settings.address, client_context(Tls(ca_file=settings.ca_file)))
    prefix = settings.address.raw_path.rstrip("/")
    timeouts = Timeouts(total=ANSWER_SECONDS, connect=CONNECT_SECONDS, read_idle=ANSWER_SECONDS)
    pool = Pool(user_agent=f"egress-gateway/{__version__}")
    where = f"Vault at {settings.address}"

    async def call(method: str, path: str, token: str | None, body: Any = None) -> tuple[int, Any]:
        headers = CIMultiDict({"Accept": "application/json"})
        if token is not None:
            headers["X-Vault-Token"] = token
        data = None
        if body is not None:
            headers["Content-Type"] = "application/json"
            data = orjson.dumps(body)
        response = await pool.send(VendorRequest(endpoint, method, prefix + path, headers, data), timeouts)
        try:
            raw = await response.read()
        finally:
            response.release()
        try:
            return response.status, orjson.loads(raw) if raw and len(raw) <= MAX_ANSWER_BYTES else None
        except orjson.JSONDecodeError:
            return response.status, None

    def refusal(what: str, status: int, answer: Any) -> Failure:
        errors = answer.get("errors") if isinstance(answer, dict) else None
        said = "; ".join(str(e)[:200] for e in errors) if isinstance(errors, list) and errors else "no reason"
        return Failure(f"{where} refused {what} with {status} ({said})")

    async def one(token: str, path: str) -> Outcome:
        mount, _, rest = path.partition("/")
        target = f"/v1/{quote(mount, safe='')}/data/" + "/".join(quote(p, safe="") for p in rest.split("/"))
        status, answer = await call("GET", target, token)
        if status == 404:
            return Failure(f"{where} has no secret at {path} (KV version 2 mount {mount!r})")
        if status != 200:
            return refusal(f"reading {path}", status, answer)
        fields = answer.get("data", {}).get("data") if isinstance(answer, dict) else None
        if not isinstance(fields, dict):
            return Failure(f"{where} answered {path} without data.data (is {mount!r} a KV version 2 mount?)")
        return fields

    try:
        if settings.token is not None:
            token = settings.token.reveal()
        else:
            assert settings.role_id is not None and settings.secret_id is not None
            body = {"role_id": settings.role_id.reveal(), "secret_id": settings.secret_id.reveal()}
            status, answer = await call("POST", "/v1/auth/approle/login", None, body)
            login = answer.get("auth") if isinstance(answer, dict) and status == 200 else None
            if not isinstance(login, dict) or not isinstance(login.get("client_token"), str):
                failure = refusal("the AppRole login", status, answer)
                return {path: failure for path in paths}
            token = login["client_token"]
        outcomes = await asyncio.gather(*(one(token, path) for path in paths))
    except PoolError as exc:
        return {path: Failure(f"{where} is unreachable: {exc}") for path in paths}
    finally:
        await pool.close()
    return dict(zip(paths, outcomes, strict=True))


def _fresh_credentials(config: Config) -> SecretsSettings:
    """The secret managers' own credentials read again (a Vault token file rotated by Vault Agent)."""
    settings = config.secrets
    vault = settings.vault
    if vault is None:
        return settings

    def again(secret: Secret | None) -> Secret | None:
        if secret is None:
            return None
        fresh = resolve_secret(secret.reference, config.path.parent, lambda _: None)
        return fresh or secret

    fresh = replace(
        vault, token=again(vault.token), role_id=again(vault.role_id), secret_id=again(vault.secret_id)
    )
    return replace(settings, vault=fresh)


async def refresh(
    current: Callable[[], Config],
    reload: Callable[[str], Awaitable[bool]],
    logger: Logger,
    *,
    stop: asyncio.Event,
) -> None:
    """Read the config's secrets every ``refresh_seconds`` until ``stop``; reload when one changed."""
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), current().secrets.refresh_seconds)
            return
        config = current()
        managed = [Managed.parse(reference) for reference in config.secrets.managed]
        sources = sorted({m.source for m in managed if isinstance(m, Managed)})
        if not sources:
            continue
        settings = _fresh_credentials(config)
        at = time.time()
        outcomes = await read(settings, sources)
        rotated: list[str] = []
        for (kind, name), outcome in sorted(outcomes.items()):
            shown = f"{'aws-sm' if kind == 'aws' else 'vault'}:{name}"
            if isinstance(outcome, Failure):
                logger.event(
                    "secret_refresh_failed",
                    level="warning",
                    secret=shown,
                    error=outcome.reason,
                    detail="the value read before stays in use",
                )
            elif remember(settings, (kind, name), outcome, at):
                rotated.append(shown)
        if rotated:
            await reload("secret rotated: " + ", ".join(rotated))
