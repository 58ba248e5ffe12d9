"""A route's ``examples`` (docs/configuration.md): loaded and checked with the config, every problem naming its
file and key, and each example must reach the route that lists it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.config import ConfigError, load_config

VENDOR = '[vendors.shop]\nbase_url = "https://shop.example"\n'


def problems(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return [str(p).replace(str(path.parent) + "/", "") for p in info.value.problems]


def test_examples_load(write_config: Callable[..., Path]) -> None:
    path = write_config(
        VENDOR,
        routes={
            "shop": """
            vendor = "shop"
            [[route]]
            method = "POST"
            path = "/v1/orders"
            examples = ["shop/order.json", "shop/order.json"]
            [[route]]
            path = "/v1/items/*"
            examples = ["shop/item.json"]
            """
        },
        files={
            "transforms/shop/order.json": """
            {"method": "post", "path": "/v1/orders", "query": "dry_run=1",
             "headers": {"Idempotency-Key": "k1"}, "body": {"sku": "A-1", "qty": 2}}
            """,
            "transforms/shop/item.json": """
            {"method": "GET", "path": "/v1/items/a%20b", "query": {"expand": ["x", "y"], "n": 1, "ok": true}}
            """,
        },
    )
    orders, items = load_config(path).vendors["shop"].routes
    order = orders.examples[0]
    assert orders.examples == (order, order)
    assert (order.name, order.method, order.target) == ("shop/order.json", "POST", "/v1/orders?dry_run=1")
    assert order.headers == (("Idempotency-Key", "k1"), ("Content-Type", "application/json"))
    assert order.body == b'{"sku":"A-1","qty":2}' and order.header("idempotency-key") == "k1"
    (item,) = items.examples
    assert item.target == "/v1/items/a%20b?expand=x&expand=y&n=1&ok=true"
    assert item.segments == ("v1", "items", "a b") and item.body is None and item.headers == ()


def test_every_problem_names_its_file_and_key(write_config: Callable[..., Path]) -> None:
    path = write_config(
        VENDOR,
        routes={
            "shop": """
            vendor = "shop"
            [[route]]
            method = "GET"
            path = "/v1/items/*"
            examples = ["bad.json", "missing.json", "list.json", "notjson.json", "../config.toml", 3]
            [[route]]
            method = "GET"
            path = "/v1/other"
            examples = "other.json"
            """
        },
        files={
            "transforms/bad.json": """
            {"method": "FETCH", "path": "v1/x?y=1", "query": [1], "headers": {"X Bad": "1", "X-Num": 2},
             "body": null, "extra": 1}
            """,
            "transforms/list.json": "[]",
            "transforms/notjson.json": "{",
        },
    )
    found = problems(path)
    assert found[:7] == [
        "routes/shop.toml: route[1].examples[1]: bad.json has 6 problem(s), listed under its own file",
        "transforms/bad.json: extra: unknown key",
        "transforms/bad.json: method: must be one of DELETE, GET, HEAD, OPTIONS, PATCH, POST, PUT, not 'FETCH'",
        "transforms/bad.json: path: must start with '/' and hold no query or fragment (use query), not 'v1/x?y=1'",
        "transforms/bad.json: query: must be a string or an object, not an array",
        "transforms/bad.json: headers.X Bad: is not a valid header name",
        "transforms/bad.json: headers.X-Num: must be a string, not a number",
    ]
    rest = found[7:]
    assert rest[0].startswith("routes/shop.toml: route[1].examples[2]: file not found: ")
    assert (
        rest[1]
        == "routes/shop.toml: route[1].examples[3]: list.json must hold a JSON object with method, path, query, headers, body"
    )
    assert rest[2].startswith("routes/shop.toml: route[1].examples[4]: notjson.json is not valid JSON: ")
    assert rest[3].startswith(
        "routes/shop.toml: route[1].examples[5]: ../config.toml is outside the transforms folder"
    )
    assert (
        rest[4]
        == "routes/shop.toml: route[1].examples[6]: must be a file name under transforms/, not an integer"
    )
    assert (
        rest[5]
        == "routes/shop.toml: route[2].examples: must be an array of file names under transforms/, not a string"
    )
    assert len(rest) == 6


def test_an_example_must_reach_the_route_that_lists_it(write_config: Callable[..., Path]) -> None:
    path = write_config(
        VENDOR,
        routes={
            "shop": """
            vendor = "shop"
            [[route]]
            path = "/v1/items/**"
            [[route]]
            method = "GET"
            path = "/v1/items/*"
            examples = ["get.json", "post.json"]
            [[route]]
            method = "GET"
            path = "/v1/safe/*"
            examples = ["escape.json"]
            """
        },
        files={
            "transforms/get.json": '{"method": "GET", "path": "/v1/items/7"}',
            "transforms/post.json": '{"method": "POST", "path": "/v1/items/7"}',
            "transforms/escape.json": '{"method": "GET", "path": "/v1/safe/%2e%2e"}',
        },
    )
    assert problems(path) == [
        "routes/shop.toml: route[3].examples[1]: escape.json has 1 problem(s), listed under its own file",
        "transforms/escape.json: path: path must not contain '.' or '..' segments",
        "routes/shop.toml: route[2].examples[1]: get.json sends GET /v1/items/7, which the earlier route[1] "
        "(* /v1/items/**) takes",
        "routes/shop.toml: route[2].examples[2]: post.json sends POST /v1/items/7, which this route "
        "(GET /v1/items/*) does not match",
    ]
