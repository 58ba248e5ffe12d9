"""parse_target's invariant over generated paths: whatever it accepts stays under the vendor's path."""

from __future__ import annotations

from urllib.parse import unquote

from hypothesis import given
from hypothesis import strategies as st

from gateway.errors import BadRequest
from gateway.target import parse_target

PIECES = st.sampled_from(["a", "b1", ".", "..", ";x", "%2e", "%2E", "%2F", "%41", "%", "\\", "é", "/", "-"])


@given(st.lists(PIECES, max_size=10), st.sampled_from(["", "?", "?q=1", "?a=%2e"]))
def test_an_accepted_path_has_no_dot_or_empty_segment_and_is_forwarded_as_sent(
    pieces: list[str], query: str
) -> None:
    rest = "/" + "".join(pieces)
    try:
        target = parse_target("/v" + rest + query)
    except BadRequest:
        return
    # No "?": no query (None); a bare "?": an empty one, forwarded as such.
    assert (target.vendor, target.path, target.query) == ("v", rest, query[1:] if query else None)
    for i, segment in enumerate(target.segments):
        assert segment.partition(";")[0] not in (".", "..")
        assert segment or i == len(target.segments) - 1
        assert "/" not in segment and "\\" not in segment
    assert "/".join(target.segments) == unquote(rest[1:])


def test_plain_paths_are_split_as_sent() -> None:
    assert parse_target("/v/a/b.json/").segments == ("a", "b.json", "")
    assert parse_target("/v/a;x/.hidden%41").segments == ("a;x", ".hiddenA")
