"""Request-target parsing: which vendor, and a vendor path that cannot leave the vendor's base path.

Invariant: the raw vendor path returned by ``parse_target`` is forwarded byte-for-byte, appended to
the vendor's base path. It is accepted only if no segment, once percent-decoded, is ``.`` or ``..``
(also as ``..;params`` and in Unicode look-alikes), none decodes to a ``/`` or ``\\``, no segment is
empty but the last (``//host``), and nothing decodes to a control character. So whatever the vendor
or an intermediary normalises, the request stays on the vendor's host and under its base path.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

from .errors import BadRequest

_HEX = frozenset("0123456789abcdefABCDEF")


@dataclass(slots=True)  # not frozen: a frozen dataclass's __init__ costs four times as much, per request
class Target:
    vendor: str
    path: str  # raw vendor path as the caller sent it, "" or starting with "/"
    query: str | None  # raw query string without the "?"; None when there is no "?" ("" for a bare one)
    segments: tuple[str, ...]  # decoded path segments, for route matching


def parse_target(raw: str) -> Target:
    """Split an origin-form request-target into vendor, vendor path and query; BadRequest if unsafe."""
    # Absolute-form ("http://evil/x"), authority-form and asterisk-form never address a vendor.
    if not raw.startswith("/") or raw.startswith("//"):
        raise BadRequest("request target must be a path starting with a single '/'")
    path, mark, text = raw.partition("?")
    query = text if mark else None
    if "#" in path:
        raise BadRequest("request target must not contain a fragment")
    slash = path.find("/", 1)
    if slash == -1:
        vendor, rest = path[1:], ""
    else:
        vendor, rest = path[1:slash], path[slash:]
    if not rest:
        return Target(vendor, "", query, ())
    raw_segments = rest[1:].split("/")
    if "%" not in rest and "\\" not in rest and "/." not in rest and "//" not in rest and rest.isascii():
        # Nothing to decode, no empty segment but maybe the last, none starting with ".": as sent.
        return Target(vendor, rest, query, tuple(raw_segments))
    last = len(raw_segments) - 1
    segments: list[str] = []
    for i, seg in enumerate(raw_segments):
        if not seg:
            if i == last:
                segments.append("")
                continue
            raise BadRequest("path must not contain empty segments ('//')")
        decoded = _decode_segment(seg) if ("%" in seg or "\\" in seg or not seg.isascii()) else seg
        if decoded.partition(";")[0] in (".", ".."):
            raise BadRequest("path must not contain '.' or '..' segments")
        segments.append(decoded)
    return Target(vendor, rest, query, tuple(segments))


def _decode_segment(seg: str) -> str:
    i = seg.find("%")
    while i != -1:
        if i + 2 >= len(seg) or seg[i + 1] not in _HEX or seg[i + 2] not in _HEX:
            raise BadRequest("path has an invalid percent-escape")
        i = seg.find("%", i + 3)
    try:
        decoded = unquote_to_bytes(seg).decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("path is not valid UTF-8 once percent-decoded") from None
    if "/" in decoded or "\\" in decoded:
        raise BadRequest("path must not contain encoded '/' or any '\\'")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in decoded):
        raise BadRequest("path must not contain control characters")
    if not decoded.isascii():
        # Full-width dots and the like become "." under NFKC, which some servers apply.
        folded = unicodedata.normalize("NFKC", decoded)
        if folded.partition(";")[0] in (".", "..") or "/" in folded or "\\" in folded:
            raise BadRequest("path must not contain '.' or '..' segments")
    return decoded
