"""The Runtime alone: how a request finds its handler, and build first, commit second."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from gateway import runtime as runtime_module
from gateway.config import load_config
from gateway.errors import NotFound, Unauthorized
from gateway.observability.logging import Logger
from gateway.runtime import build_runtime, commit
from gateway.services import Services
from gateway.target import parse_target

NO_FIELDS: CIMultiDictProxy[str] = CIMultiDictProxy(CIMultiDict())


def config_text(rate: int, breaker_ratio: float = 0.5) -> str:
    return f"""
        [vendors.a]
        base_url = "http://127.0.0.1:1"
        rate_limit = {{ requests = {rate}, per_seconds = 1 }}
        circuit = {{ failure_ratio = {breaker_ratio} }}
        version = {{ path_prefix = "/v2" }}

        [vendors.b]
        base_url = "http://127.0.0.1:2"
    """


ROUTES = {
    "a": """
        vendor = "a"
        expose = "declared"

        [[route]]
        method = "GET"
        path = "/things/*"
    """
}


def services() -> Services:
    return Services(logger=Logger(stream=io.BytesIO()))


def test_resolve_finds_the_route_the_passthrough_or_404(write_config: Callable[..., Path]) -> None:
    config = load_config(write_config(config_text(10), ROUTES))
    svc = services()
    rt = build_runtime(config, svc)
    commit(rt, svc)
    vendor, route, handler, target, client, _ = rt.resolve(
        "GET", parse_target("/a/v2/things/1?x=1"), NO_FIELDS
    )
    assert (vendor.name, route is not None, target.path, target.query) == ("a", True, "/things/1", "x=1")
    assert route is not None and handler is rt.route_handlers[id(route)] and client is None
    _, route, handler, *_ = rt.resolve("POST", parse_target("/b/anything"), NO_FIELDS)
    assert route is None and handler is rt.passthrough["b"]
    with pytest.raises(NotFound, match="exposes no route for POST /things/1"):
        rt.resolve("POST", parse_target("/a/v2/things/1"), NO_FIELDS)
    with pytest.raises(NotFound, match="no vendor named 'c'"):
        rt.resolve("GET", parse_target("/c/x"), NO_FIELDS)


def test_with_clients_an_unknown_caller_is_401_before_any_404_a_known_one_is_named(
    write_config: Callable[..., Path],
) -> None:
    text = config_text(10) + '\n[clients.billing]\nkey = "env:RT_TEST_KEY"\nallow = ["a"]\n'
    import os

    os.environ["RT_TEST_KEY"] = "k-123456789012345678901234"
    config = load_config(write_config(text, ROUTES))
    rt = build_runtime(config, services())
    with pytest.raises(Unauthorized):
        rt.resolve("GET", parse_target("/c/x"), NO_FIELDS)
    bearer = CIMultiDictProxy(CIMultiDict({"Authorization": "Bearer k-123456789012345678901234"}))
    keyed = CIMultiDictProxy(CIMultiDict({"X-Gateway-Key": "k-123456789012345678901234"}))
    for _ in range(2):  # the second time from what the authenticator remembered
        assert rt.resolve("GET", parse_target("/a/v2/things/1"), bearer)[4:] == ("billing", True)
        assert rt.resolve("GET", parse_target("/a/v2/things/1"), keyed)[4:] == ("billing", False)
    with pytest.raises(NotFound):  # a route that does not exist is that, not a refusal
        rt.resolve("GET", parse_target("/a/v2/nothing"), keyed)
    assert rt.resolve("GET", parse_target("/b/x"), keyed).client == "billing"  # routed; admit refuses


def test_a_built_runtime_changes_shared_limits_only_when_committed(write_config: Callable[..., Path]) -> None:
    svc = services()
    first = load_config(write_config(config_text(10, 0.5), ROUTES))
    commit(build_runtime(first, svc), svc)
    limiter = svc.ratelimits.vendor(first.vendors["a"])
    breaker = svc.circuits.breaker(first.vendors["a"])
    svc.discard()  # the two look-ups above prepared nothing new
    assert limiter.settings.rate is not None and limiter.settings.rate.requests == 10
    assert breaker is not None and breaker.settings.failure_ratio == 0.5

    second = load_config(write_config(config_text(40, 0.9), ROUTES))
    build_runtime(second, svc)
    # Built, not committed (a reload that failed after this point): the running limits are untouched.
    assert limiter.settings.rate.requests == 10 and breaker.settings.failure_ratio == 0.5
    svc.discard()
    commit(build_runtime(first, svc), svc)
    assert limiter.settings.rate.requests == 10 and breaker.settings.failure_ratio == 0.5

    commit(build_runtime(second, svc), svc)
    assert limiter.settings.rate.requests == 40 and breaker.settings.failure_ratio == 0.9


async def test_a_reload_that_fails_half_way_leaves_the_running_limits(
    write_config: Callable[..., Path], monkeypatch: Any, gateway: Any
) -> None:
    from gateway.http.app import reload

    client = await gateway(config_text(10), ROUTES)
    app = client.app
    svc = app.services
    limiter = svc.ratelimits.vendor(app.live.runtime.config.vendors["a"])
    svc.discard()
    write_config(config_text(40), ROUTES)
    calls = []
    real = runtime_module.route_stages

    def failing(config: Any, vendor: Any, route: Any, services: Any) -> Any:
        calls.append(vendor.name)
        if vendor.name == "b":  # after vendor a's limiter was prepared with 40/s
            raise RuntimeError("built half-way")
        return real(config, vendor, route, services)

    monkeypatch.setattr(runtime_module, "route_stages", failing)
    assert await reload(app) is False
    assert "a" in calls and limiter.settings.rate is not None
    assert limiter.settings.rate.requests == 10  # before: the half-built reload had set 40/s
    monkeypatch.setattr(runtime_module, "route_stages", real)
    assert await reload(app) is True
    assert limiter.settings.rate.requests == 40
