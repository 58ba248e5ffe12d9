"""The README's examples run as pasted: every shell block is marked run or norun, and the run blocks,
executed in order in a fresh copy of the repository against the sandbox, print what the README shows.

How blocks are marked and run: ``tests/readme_runner.py``. The run happens in private network, mount
and PID namespaces (``unshare -rnmpf``) when the machine allows them, so the README's ports (8080,
8081 ...) are free and its /tmp is private whatever else runs here, and whatever the examples leave
running ends with the run; elsewhere the runner moves those ports to free ones.
"""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from tests import readme_runner
from tests.gateway_proc import free_ports
from tests.readme_runner import README, ROOT, check_markers, expected_output, match_output, parse


def test_every_shell_block_is_marked_and_every_marker_is_valid() -> None:
    assert check_markers(parse(README.read_text())) == []


def test_markers_are_read_and_an_unmarked_block_is_named() -> None:
    text = "\n".join(
        [
            "<!-- run -->",
            "```sh",
            "echo hi",
            "```",
            "",
            "<!-- norun: needs Docker -->",
            "```sh",
            "docker ps",
            "```",
            "<!-- run: append config.toml -->",
            "```toml",
            "[vendors.x]",
            "```",
            "```sh",
            "echo unmarked",
            "```",
            "  <!-- run: background -->",
            "  ```sh",
            "  sleep 1",
            "  ```",
        ]
    )
    blocks = parse(text)
    assert [(b.lang, b.marker, b.options, b.text) for b in blocks] == [
        ("sh", "run", "", "echo hi\n"),
        ("sh", "norun", "needs Docker", "docker ps\n"),
        ("toml", "run", "append config.toml", "[vendors.x]\n"),
        ("sh", None, "", "echo unmarked\n"),
        ("sh", "run", "background", "sleep 1\n"),
    ]
    assert check_markers(blocks) == ["README.md:14: a sh block needs <!-- run --> or <!-- norun: why -->"]


def test_expected_output_is_the_comments_right_after_a_command() -> None:
    script = "\n".join(
        [
            "# prose before anything",
            "curl -s x   # a trailing note",
            '# {"a":1}',
            "#",
            "#   indented",
            "",
            "# prose after a blank line",
            "cat > f <<'EOF'",
            "# inside a heredoc: not output",
            "EOF",
            "cat f",
            "# what cat prints",
        ]
    )
    assert expected_output(script) == ['{"a":1}', "", "  indented", "what cat prints"]


@pytest.mark.parametrize(
    ("expected", "output", "ok"),
    [
        (['{"a":1,...}'], 'noise\n{"a":1,"b":2}\n', True),
        (["HTTP/1.1 429 ...", "Retry-After: 5"], "HTTP/1.1 429 Too Many\r\nX: y\r\nRetry-After: 5\r\n", True),
        (["Retry-After: 5", "HTTP/1.1 429 ..."], "HTTP/1.1 429 Too Many\r\nRetry-After: 5\r\n", False),
        (['{"a":1}'], '{"a":1}{"b":2}', False),
        (["401"], "4011\n", False),
        (["a.b"], "axb\n", False),
    ],
)
def test_output_matching(expected: list[str], output: str, ok: bool) -> None:
    assert (match_output(expected, output) is None) is ok


def _netns_works() -> bool:
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return False
    probe = subprocess.run(
        ["unshare", "-rnmpf", "--mount-proc", "ip", "link", "set", "lo", "up"],
        capture_output=True,
        timeout=10,
    )
    return probe.returncode == 0


@pytest.mark.slow
def test_the_readme_runs_as_pasted() -> None:
    runner = [sys.executable, str(ROOT / "tests" / "readme_runner.py")]
    if _netns_works():
        command = ["unshare", "-rnmpf", "--mount-proc", *runner, "--isolate"]
    else:
        moves = zip(readme_runner.PORTS, free_ports(len(readme_runner.PORTS)), strict=True)
        command = [*runner, "--ports", ",".join(f"{old}={new}" for old, new in moves)]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=150)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-12000:]
    assert "every run block passed" in result.stdout
