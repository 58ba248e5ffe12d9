"""``/_gateway/problems/<type>``: what each problem ``type`` the gateway answers with means.

A problem's ``type`` (``errors.PROBLEM_TYPE_BASE`` + slug) is a reference relative to the gateway, so
it resolves, against the URL the caller used, to a page here: one short HTML page per type, made from
the error class itself (title, status, the first paragraph of its docstring), so the page cannot say
something the code does not do. ``/_gateway/problems/`` lists them all. docs/http.md has the same list.
"""

from __future__ import annotations

import html
import re

from ..errors import PROBLEM_TYPE_BASE, GatewayError, problem_types

_CODE = re.compile(r"``(.+?)``", re.S)

_PAGE = """<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>{title}</title>
<style>body{{font:16px/1.5 system-ui,sans-serif;max-width:44rem;margin:2rem auto;padding:0 1rem}}
code{{background:#f3f3f3;padding:0 .2em}}td,th{{text-align:left;padding:.2rem .8rem .2rem 0}}</style>
</head>
<body>
{body}
</body>
</html>
"""


def description(cls: type[GatewayError]) -> str:
    """The first paragraph of the class's docstring, as one line of text."""
    doc = (cls.__doc__ or "").strip()
    first = doc.split("\n\n", 1)[0]
    return " ".join(first.split())


def _inline(text: str) -> str:
    """Escaped text with ``code`` spans."""
    return _CODE.sub(lambda m: f"<code>{m.group(1)}</code>", html.escape(text, quote=False))


def find(slug: str) -> type[GatewayError] | None:
    return next((cls for cls in problem_types() if cls.slug == slug), None)


def page(cls: type[GatewayError]) -> str:
    body = (
        f"<h1>{html.escape(cls.title)}</h1>\n"
        f"<p>Status <strong>{cls.status}</strong> · type <code>{PROBLEM_TYPE_BASE}{cls.slug}</code></p>\n"
        f"<p>{_inline(description(cls))}</p>\n"
        "<p>Every problem the gateway answers with is <code>application/problem+json</code> (RFC 9457) "
        "with <code>type</code>, <code>title</code>, <code>status</code>, <code>detail</code> (what "
        "happened to this request) and <code>request_id</code> (also in <code>X-Request-Id</code> and in "
        'the gateway\'s logs).</p>\n<p><a href="./">All problem types</a></p>'
    )
    return _PAGE.format(title=html.escape(f"{cls.status} {cls.title}"), body=body)


def index() -> str:
    rows = "\n".join(
        f'<tr><td>{cls.status}</td><td><a href="{cls.slug}"><code>{cls.slug}</code></a></td>'
        f"<td>{html.escape(cls.title)}</td></tr>"
        for cls in problem_types()
    )
    body = (
        "<h1>Problem types</h1>\n<p>The <code>type</code> of each problem the gateway answers with.</p>\n"
        f"<table>\n<tr><th>status</th><th>type</th><th>title</th></tr>\n{rows}\n</table>"
    )
    return _PAGE.format(title="Problem types", body=body)
