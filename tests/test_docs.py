"""docs/ standing on its own: the problem types it lists are the gateway's, every link in it and in the
README resolves inside the repository (a file that exists, a heading that exists), and no file of the
repository cites documents a clone does not have."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from gateway.errors import problem_types

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")


def test_the_problem_types_in_http_md_are_the_error_classes() -> None:
    lines = (ROOT / "docs" / "http.md").read_text().splitlines()
    start = lines.index("<!-- problem types -->")
    rows = []
    for line in lines[start + 3 :]:
        if not line.startswith("|"):
            break
        slug, status, title = (cell.strip() for cell in line.strip("|").split("|"))
        rows.append((slug.strip("`"), int(status), title))
    assert rows == [(cls.slug, cls.status, cls.title) for cls in problem_types()]


def anchors(page: Path) -> set[str]:
    """The heading ids GitHub gives a Markdown page: lowercased, punctuation dropped, spaces as '-'."""
    found: set[str] = set()
    in_code = False
    for line in page.read_text().splitlines():
        if line.startswith("```"):
            in_code = not in_code
        if in_code or not line.startswith("#"):
            continue
        text = line.lstrip("#").strip().lower()
        slug = re.sub(r"[^\w\- ]", "", text).replace(" ", "-")
        candidate, n = slug, 0
        while candidate in found:
            n += 1
            candidate = f"{slug}-{n}"
        found.add(candidate)
    return found


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_link_resolves_inside_the_repository(page: Path) -> None:
    broken = []
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)  # links in code blocks are code
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target):
            continue  # an outside address (an RFC, say): not a file of the repository
        file_part, _, anchor = target.partition("#")
        file = (page.parent / file_part).resolve() if file_part else page
        if ROOT not in file.parents and file != ROOT:
            broken.append(f"{target}: outside the repository")
        elif not file.exists():
            broken.append(f"{target}: no such file")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{target}: no heading #{anchor} in {file.relative_to(ROOT)}")
    assert broken == []


# What a clone of the repository does not have: the contract and design notes it was built from.
OUTSIDE = re.compile(r"\.\./shared/|\b(SPEC|DESIGN)\.md\b|\bSPEC( sections?\b| leaves\b|:| \d)")


def repository_files() -> list[Path]:
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    return [ROOT / name for name in listed if (ROOT / name).is_file() and name != "tests/test_docs.py"]


def test_nothing_in_the_repository_cites_a_document_outside_it() -> None:
    """Code comments, config comments and docs cite docs/ (SPEC section N means nothing to a clone)."""
    found = []
    for path in repository_files():
        try:
            text = path.read_text()
        except (UnicodeDecodeError, OSError):
            continue
        for number, line in enumerate(text.splitlines(), start=1):
            if OUTSIDE.search(line):
                found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()[:100]}")
    assert found == [], "cite docs/ instead:\n" + "\n".join(found)
