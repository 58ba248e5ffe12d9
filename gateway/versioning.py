"""Version pinning by path prefix: the caller's own version segment gives way to the configured one.

With ``version = { path_prefix = "/v2" }`` the forwarder puts ``/v2`` in front of every vendor path
(``upstream.vendor_transport``). A caller may address the vendor with or without a version:
``/acme/customers``, ``/acme/v2/customers`` and ``/acme/v1/customers`` all reach ``/v2/customers``.
The caller's leading segments are taken off when they have the prefix's shape: each one equal to the
prefix's segment, or both version-like (``v1``, ``v2.1``, ``v1beta2``, ``2024-06-20``). Route paths and
allow rules are written without the prefix and are matched after this.
"""

from __future__ import annotations

import re

from .config import VersionPin
from .target import Target

_VERSION_SEGMENT = re.compile(r"^(?:[vV]\d+(?:\.\d+)*(?:(?:alpha|beta|preview|rc)\d*)?|\d{4}-\d{2}-\d{2})$")


def unversioned(target: Target, pin: VersionPin) -> Target:
    """``target`` without a leading version of the caller's (see the module docstring)."""
    prefix = pin.segments
    given = target.segments
    if len(given) < len(prefix) or not all(
        have == want or (_VERSION_SEGMENT.match(have) and _VERSION_SEGMENT.match(want))
        for have, want in zip(given, prefix, strict=False)
    ):
        return target
    raw = target.path[1:].split("/")[len(prefix) :]
    return Target(target.vendor, "/" + "/".join(raw) if raw else "", target.query, given[len(prefix) :])
