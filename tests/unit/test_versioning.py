"""Path-prefix pinning: which leading caller segments give way to the configured version."""

from __future__ import annotations

import pytest

from gateway.config import VersionPin
from gateway.target import parse_target
from gateway.versioning import unversioned


def pin(prefix: str) -> VersionPin:
    segments = tuple(prefix.strip("/").split("/"))
    return VersionPin(kind="path_prefix", value=prefix, segments=segments)


@pytest.mark.parametrize(
    ("prefix", "raw", "path", "segments"),
    [
        ("/v2", "/a/customers", "/customers", ("customers",)),
        ("/v2", "/a/v2/customers", "/customers", ("customers",)),
        ("/v2", "/a/v10/customers", "/customers", ("customers",)),
        ("/v2", "/a/V1.1/customers", "/customers", ("customers",)),
        ("/v2", "/a/v1alpha2/customers", "/customers", ("customers",)),
        ("/v2", "/a/version/customers", "/version/customers", ("version", "customers")),
        ("/v2", "/a/v1_customers", "/v1_customers", ("v1_customers",)),
        ("/v2", "/a/v1/", "/", ("",)),
        ("/v2", "/a/v1", "", ()),
        ("/2024-06-20", "/a/2023-01-01/x", "/x", ("x",)),
        ("/api/v3", "/a/api/v1/x", "/x", ("x",)),
        ("/api/v3", "/a/v1/x", "/v1/x", ("v1", "x")),  # does not have the prefix's shape: kept
        ("/api/v3", "/a/api", "/api", ("api",)),
        ("/stable", "/a/stable/x", "/x", ("x",)),
        ("/stable", "/a/v1/x", "/v1/x", ("v1", "x")),
        ("/v2", "/a/v1%2Dx/y", "/v1%2Dx/y", ("v1-x", "y")),
    ],
)
def test_unversioned(prefix: str, raw: str, path: str, segments: tuple[str, ...]) -> None:
    target = unversioned(parse_target(raw + "?q=1"), pin(prefix))
    assert (target.vendor, target.path, target.segments, target.query) == ("a", path, segments, "q=1")
