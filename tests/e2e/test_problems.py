"""Problem types that resolve: a problem's ``type`` is a reference to a page the gateway itself serves,
made from the error class, for every type; unknown ``/_gateway/...`` paths name the real endpoints."""

from __future__ import annotations

import importlib
import pkgutil
import re
from typing import Any

import pytest
from yarl import URL

import gateway
from gateway.errors import PROBLEM_TYPE_BASE, GatewayError, problem_types

VENDOR = '[vendors.acme]\nbase_url = "http://127.0.0.1:9"\n'


def every_error_class() -> list[type[GatewayError]]:
    """Every GatewayError subclass in the package (features define their own, like RateLimited)."""
    for module in pkgutil.walk_packages(gateway.__path__, "gateway."):
        if not module.name.endswith("__main__"):
            importlib.import_module(module.name)
    found, pending = [], [GatewayError]
    while pending:
        cls = pending.pop()
        found.append(cls)
        pending.extend(cls.__subclasses__())
    return found


def test_a_subclass_without_its_own_type_keeps_its_types_title_and_status() -> None:
    """A type's page is made from the class that sets its slug; a subclass answering with the same
    type must not say something else, or the page would not describe what callers get."""
    types = {cls.slug: cls for cls in problem_types()}
    for cls in every_error_class():
        owner = types[cls.slug]
        assert (cls.title, cls.status) == (owner.title, owner.status), (
            f"{cls.__qualname__} vs {owner.__name__}"
        )


def test_every_problem_type_is_defined_in_gateway_errors() -> None:
    """problem_types() finds the subclasses Python knows of; a type defined in a feature module would
    have no page (and no row in docs/http.md) in a process that never imported that module."""
    elsewhere = [
        f"{cls.__module__}.{cls.__qualname__}"
        for cls in every_error_class()
        if "slug" in cls.__dict__ and cls.__module__ != "gateway.errors"
    ]
    assert elsewhere == [], "move these to gateway/errors.py (and document them in docs/http.md)"


def test_every_problem_type_has_a_description() -> None:
    for cls in problem_types():
        assert cls.__doc__ and len(cls.__doc__.split()) >= 8, f"{cls.__name__} has no docstring to show"


async def test_every_problem_type_has_its_page(gateway: Any) -> None:
    client = await gateway(VENDOR)
    index = await client.get("/_gateway/problems/")
    assert index.status == 200 and index.headers["Content-Type"].startswith("text/html")
    listed = set(re.findall(r'<a href="([a-z0-9-]+)">', await index.text()))
    assert listed == {cls.slug for cls in problem_types()}
    for cls in problem_types():
        resp = await client.get(f"{PROBLEM_TYPE_BASE}{cls.slug}")
        text = await resp.text()
        assert resp.status == 200, cls.slug
        assert (
            f"<h1>{cls.title}</h1>" in text.replace("&#x27;", "'")
            and f"<strong>{cls.status}</strong>" in text
        )
        assert 'href="./"' in text  # back to the index, wherever the gateway is reached


async def test_a_problems_type_resolves_against_the_request_url_to_its_page(gateway: Any) -> None:
    client = await gateway(VENDOR)
    resp = await client.get("/nope/v1/x")
    problem = await resp.json()
    assert resp.status == 404 and problem["type"] == "/_gateway/problems/not-found"
    page = await client.session.get(URL(str(resp.url)).join(URL(problem["type"])))
    assert page.status == 200
    assert f"<h1>{problem['title']}</h1>" in await page.text()


async def test_an_unknown_problem_type_is_a_404_pointing_at_the_list(gateway: Any) -> None:
    client = await gateway(VENDOR)
    resp = await client.get("/_gateway/problems/no-such-thing")
    assert resp.status == 404
    assert "/_gateway/problems/ lists them" in (await resp.json())["detail"]


async def test_unknown_gateway_paths_get_a_404_naming_the_endpoints(gateway: Any) -> None:
    client = await gateway(VENDOR)
    for path in ("/_gateway", "/_gateway?x=1", "/_gateway/", "/_gateway/nope", "/_gateway/deliveries/"):
        resp = await client.get(path)
        detail = (await resp.json())["detail"]
        assert resp.status == 404, path
        assert "no vendor" not in detail
        for endpoint in ("/_gateway/health", "/_gateway/ready", "/_gateway/metrics", "/_gateway/problems/"):
            assert endpoint in detail, (path, detail)


async def test_problem_pages_stay_open_when_the_admin_endpoints_are_closed(
    gateway: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With [clients] and an admin key, /_gateway/* needs the key; the problem types do not, since
    every caller's problem points at them."""
    monkeypatch.setenv("GW_TEST_PROBLEMS_KEY", "client-key-123456")
    monkeypatch.setenv("GW_TEST_PROBLEMS_ADMIN", "admin-key-123456")
    client = await gateway(
        VENDOR
        + '[gateway]\nadmin_key = "env:GW_TEST_PROBLEMS_ADMIN"\n'
        + '[clients.c]\nkey = "env:GW_TEST_PROBLEMS_KEY"\nallow = ["acme"]\n'
    )
    assert (await client.get("/_gateway/metrics")).status == 401
    assert (await client.get("/_gateway/problems/")).status == 200
    assert (await client.get("/_gateway/problems/unauthorized")).status == 200
