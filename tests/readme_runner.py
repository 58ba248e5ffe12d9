"""Run the README's shell examples the way a new user would: in order, pasted into a shell at the root
of a fresh copy of the repository, with the gateway started as the quickstart says.

``tests/test_readme.py`` runs this (in a private network namespace when the machine allows one, so
the README's own ports 8080, 8081 and 8090 are free); ``python tests/readme_runner.py`` does the same
from a terminal.

Each fenced block of the README may carry a marker, an HTML comment on the line before its fence:

``<!-- run -->``
    run the block in a fresh ``bash -e`` at the repository root; it must exit 0 (``<!-- run: status=1
    -->``: exit 1) and print what its comment lines show (below).
``<!-- run: background -->``
    a command that keeps running ("in a second terminal"): started, left running until the end, and
    waited for until it logs its ``started`` event (``background PORT``: until 127.0.0.1:PORT accepts
    connections, for a server that is not the gateway).
``<!-- run: install -->``
    the virtualenv install. Installing every dependency takes half a minute or more, so this one is not
    run: the runner checks the block says ``INSTALL`` and makes ``.venv/bin/gateway`` and
    ``.venv/bin/python`` run this copy with the interpreter the tests run on (which the install itself
    gives: ``scripts/test`` and the container build run it).
``<!-- run: append FILE -->``
    (on a config block) append the block to FILE, as the text before it tells the reader, then wait
    until every running gateway that reads FILE has reloaded it (a refused reload fails).
``<!-- norun: REASON -->``
    not run, for the reason given (it needs Docker, Kubernetes, Redis, root ...).

Options combine with commas: ``<!-- run: background 4222, needs=nats-server -->``. ``needs=CMD``: the
block needs that program; where it is not installed the block is skipped and said so (under
``CI=true`` that fails instead, as the suite's other tests do).

Every ``sh`` block needs a ``run`` or a ``norun`` marker, so a new example is never silently untested.

Expected output: in a run block, the comment lines that directly follow a command (no blank line
between) are what it prints, ``# `` removed. Each must match a line of the block's output (stdout and
stderr together, trailing white space ignored), in order; other output lines may come between. In an
expected line ``...`` stands for any text. Comments anywhere else (a line of their own after a blank
line, or at the end of a command line) are prose.

Each block runs in a new shell: a variable exported in one block is gone in the next (the README keeps
what later blocks need in files). Commands reach the gateway directly (``NO_PROXY`` for 127.0.0.1).
With ``--isolate`` (inside ``unshare -rnm``, as the test runs it) the loopback interface is brought
up and ``/tmp`` is a private tmpfs, so what the README keeps in /tmp meets no other run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
INSTALL = "python3 -m venv .venv && .venv/bin/pip install -q -e ."
SHELL_LANGS = {"sh", "bash", "shell", "console"}
# The README's ports: the gateway, the sandbox, the callers example, the chaos gateway, the webhooks
# gateway, the admin-key gateway, the workers' gateway, the HTTPS gateway, NATS, moto (AWS Secrets
# Manager), Redis.
PORTS = (8080, 8081, 8088, 8090, 8091, 8092, 8093, 8443, 4222, 4566, 6390)
BLOCK_TIMEOUT = 30.0
START_TIMEOUT = 30.0
RELOAD_TIMEOUT = 20.0

_FENCE = re.compile(r"^(\s*)```(\S*)\s*$")
_MARKER = re.compile(r"^<!--\s*(run|norun)\s*(?::\s*(.*?))?\s*-->$")
_HEREDOC = re.compile(r"<<-?\s*'?\"?(\w+)'?\"?")


@dataclass
class Block:
    line: int  # of the opening fence, 1-based
    lang: str
    text: str
    marker: str | None = None  # "run" | "norun"
    options: str = ""

    @property
    def where(self) -> str:
        return f"README.md:{self.line}"

    def option(self, name: str) -> str | None:
        """The value of option ``name`` (``needs=nats-server``: "nats-server"; ``background 4222``:
        "4222"; a bare ``background``: ""), None when the marker does not have it."""
        for part in self.options.split(","):
            word, _, value = part.strip().partition("=")
            head, _, rest = word.partition(" ")
            if head == name:
                return value or rest
        return None

    @property
    def action(self) -> str:
        """The first option's word: "", "background", "install", "status", "append" or "needs"."""
        first = self.options.split(",")[0].strip()
        return first.partition(" ")[0].partition("=")[0]


class ReadmeError(Exception):
    pass


def parse(text: str) -> list[Block]:
    """Every fenced block, with the marker on the line before it (if any)."""
    lines = text.splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        opening = _FENCE.match(lines[i])
        if opening is None:
            i += 1
            continue
        indent, lang = opening.group(1), opening.group(2)
        body: list[str] = []
        j = i + 1
        while j < len(lines) and lines[j].strip() != "```":
            body.append(lines[j][len(indent) :] if lines[j].startswith(indent) else lines[j].lstrip())
            j += 1
        block = Block(line=i + 1, lang=lang, text="\n".join(body) + "\n")
        before = next((lines[k].strip() for k in range(i - 1, -1, -1) if lines[k].strip()), "")
        if marker := _MARKER.match(before):
            block.marker, block.options = marker.group(1), (marker.group(2) or "").strip()
        blocks.append(block)
        i = j + 1
    return blocks


def check_markers(blocks: list[Block]) -> list[str]:
    """What is wrong with the markers: unmarked shell blocks, norun without a reason, unknown options."""
    problems = []
    for block in blocks:
        if block.marker is None:
            if block.lang in SHELL_LANGS:
                problems.append(
                    f"{block.where}: a {block.lang} block needs <!-- run --> or <!-- norun: why -->"
                )
            continue
        if block.marker == "norun":
            if not block.options:
                problems.append(f"{block.where}: <!-- norun: ... --> needs the reason")
            continue
        parts = [part.strip() for part in block.options.split(",")]
        first, rest = parts[0], parts[1:]
        if any(not re.fullmatch(r"needs=[\w.-]+", part) for part in rest):
            problems.append(f"{block.where}: unknown run options {rest!r}")
        if block.lang in SHELL_LANGS:
            if not re.fullmatch(r"|background( \d+)?|install|status=\d+|needs=[\w.-]+", first):
                problems.append(f"{block.where}: unknown run option {first!r}")
            if first == "install" and block.text.strip() != INSTALL:
                problems.append(f"{block.where}: the install block must read {INSTALL!r}")
        elif not re.fullmatch(r"append \S+", first):
            problems.append(
                f"{block.where}: a {block.lang or 'plain'} block can only be run as 'append FILE'"
            )
    return problems


def expected_output(script: str) -> list[str]:
    """The comment lines that directly follow a command: what it prints."""
    expected: list[str] = []
    after_command = False
    heredoc_end: str | None = None
    for line in script.splitlines():
        if heredoc_end is not None:
            if line.strip() == heredoc_end:
                heredoc_end = None
            continue
        stripped = line.strip()
        if not stripped:
            after_command = False
        elif stripped.startswith("#"):
            if after_command:
                expected.append(stripped[2:] if stripped.startswith("# ") else stripped[1:])
        else:
            after_command = True
            if here := _HEREDOC.search(line):
                heredoc_end = here.group(1)
    return expected


def _pattern(expected: str) -> re.Pattern[str]:
    return re.compile(".*?".join(re.escape(part) for part in expected.split("...")))


def match_output(expected: list[str], output: str) -> str | None:
    """None when every expected line matches an output line, in order; else what is missing."""
    actual = [line.rstrip() for line in output.splitlines()]
    position = 0
    for wanted in expected:
        pattern = _pattern(wanted.rstrip())
        while position < len(actual) and not pattern.fullmatch(actual[position]):
            position += 1
        if position == len(actual):
            return f"no line (in order) matches: {wanted}"
        position += 1
    return None


@dataclass
class Background:
    block: Block
    process: subprocess.Popen[bytes]
    log: Path
    config: str | None  # the --config it reads (relative to the root); None: not a gateway
    reloads_seen: int = 0

    def records(self) -> list[dict[str, object]]:
        found = []
        for line in self.log.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if isinstance(record, dict):
                    found.append(record)
        return found

    def reads(self, file: str) -> bool:
        """Whether FILE is this gateway's config, or in the routes/ or transforms/ beside it."""
        if self.config is None:
            return False
        folder = Path(self.config).parent
        path = Path(file)
        return path == Path(self.config) or any(
            (folder / name) in path.parents for name in ("routes", "transforms")
        )


@dataclass
class Runner:
    root: Path
    env: dict[str, str]
    report: list[str] = field(default_factory=list)
    background: list[Background] = field(default_factory=list)

    def say(self, text: str) -> None:
        self.report.append(text)
        print(text, flush=True)

    def run(self, blocks: list[Block]) -> None:
        for block in blocks:
            if block.marker != "run":
                continue
            needs = block.option("needs")
            if needs and shutil.which(needs) is None:
                if os.environ.get("CI", "").lower() == "true":
                    raise ReadmeError(f"{block.where}: needs {needs}, which is not installed")
                self.say(f"{block.where}: SKIPPED: needs {needs}, which is not installed")
                continue
            if block.lang in SHELL_LANGS and block.action == "install":
                self.install()
            elif block.lang in SHELL_LANGS and block.action == "background":
                self.start(block)
            elif block.lang in SHELL_LANGS:
                self.foreground(block)
            else:
                self.append(block)
            for bg in self.background:
                if bg.process.poll() is not None:
                    raise ReadmeError(
                        f"{bg.block.where}: the background command exited ({bg.process.returncode}) "
                        f"during {block.where}:\n{bg.log.read_text(errors='replace')[-3000:]}"
                    )

    def install(self) -> None:
        venv = self.root / ".venv" / "bin"
        venv.mkdir(parents=True)
        path = f'PYTHONPATH="{self.root}${{PYTHONPATH:+:$PYTHONPATH}}"'
        # The tools the install gives (moto_server, ...), as the interpreter's own environment has them.
        tools = Path(sys.executable).parent
        for tool in sorted(tools.iterdir()):
            if (
                tool.is_file()
                and os.access(tool, os.X_OK)
                and not tool.name.startswith(("python", "gateway"))
            ):
                (venv / tool.name).write_text(f'#!/bin/sh\n{path} exec "{tool}" "$@"\n')
                (venv / tool.name).chmod(0o755)
        for name, command in (("python", ""), ("gateway", "-m gateway ")):
            script = venv / name
            script.write_text(f'#!/bin/sh\n{path} exec "{sys.executable}" {command}"$@"\n')
            script.chmod(0o755)
        self.say(f"install: .venv/bin/ runs this copy with {sys.executable} and the tools beside it")

    def start(self, block: Block) -> None:
        log = self.root.parent / f"background-{block.line}.log"
        config = re.search(r"--config\s+(\S+)", block.text)
        with log.open("wb") as out:
            process = subprocess.Popen(
                ["bash", "-e", "-c", block.text],
                cwd=self.root,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        gateway = "gateway run" in block.text
        bg = Background(
            block, process, log, (config.group(1) if config else "config.toml") if gateway else None
        )
        self.background.append(bg)
        deadline = time.monotonic() + START_TIMEOUT
        port = block.option("background")

        def up() -> bool:
            if not port:
                return any(r.get("event") == "started" for r in bg.records())
            with socket.socket() as probe:
                return probe.connect_ex(("127.0.0.1", int(port))) == 0

        while not up():
            if process.poll() is not None or time.monotonic() > deadline:
                raise ReadmeError(
                    f"{block.where}: did not start (exit {process.poll()}):\n{block.text}\n"
                    f"{log.read_text(errors='replace')[-3000:]}"
                )
            time.sleep(0.05)
        self.say(f"{block.where}: started in the background: {block.text.strip()}")

    def foreground(self, block: Block) -> None:
        status = int(block.option("status") or 0)
        started = time.monotonic()
        try:
            result = subprocess.run(
                ["bash", "-e", "-c", block.text],
                cwd=self.root,
                env=self.env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                timeout=BLOCK_TIMEOUT,
            )
        except subprocess.TimeoutExpired as exc:
            raise ReadmeError(
                f"{block.where}: still running after {BLOCK_TIMEOUT:g}s:\n{block.text}"
            ) from exc
        output = result.stdout.decode(errors="replace")
        shown = f"{block.where}:\n{block.text}--- output:\n{output}"
        if result.returncode != status:
            raise ReadmeError(f"exit status {result.returncode}, not {status}: {shown}")
        if (missing := match_output(expected_output(block.text), output)) is not None:
            raise ReadmeError(f"{missing}\n{shown}")
        self.say(f"{block.where}: ok ({time.monotonic() - started:.1f}s)")

    def append(self, block: Block) -> None:
        file = block.option("append") or ""
        target = self.root / file
        if not target.is_file():
            raise ReadmeError(f"{block.where}: {file} does not exist to append to")
        readers = [bg for bg in self.background if bg.reads(file)]
        for bg in readers:
            bg.reloads_seen = sum(1 for r in bg.records() if r.get("event") == "config_reloaded")
        with target.open("a") as out:
            out.write("\n" + block.text)
        deadline = time.monotonic() + RELOAD_TIMEOUT
        for bg in readers:
            while True:
                records = bg.records()
                failed = [r for r in records if r.get("event") == "config_reload_failed"]
                if failed:
                    raise ReadmeError(f"{block.where}: appending to {file} was refused: {failed[-1]}")
                if sum(1 for r in records if r.get("event") == "config_reloaded") > bg.reloads_seen:
                    break
                if time.monotonic() > deadline:
                    raise ReadmeError(f"{block.where}: {bg.block.where} did not reload {file}")
                time.sleep(0.05)
        self.say(f"{block.where}: appended to {file}; {len(readers)} gateway(s) reloaded")

    def stop(self) -> None:
        for bg in self.background:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(bg.process.pid, signal.SIGTERM)
        for bg in self.background:
            try:
                bg.process.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(bg.process.pid, signal.SIGKILL)
                bg.process.wait(5)


def copy_repository(source: Path, target: Path) -> None:
    """What a clone has: the files git knows (tracked, or new and not ignored), none of the local state."""
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=source, capture_output=True, check=True
    ).stdout.split(b"\0")
    for name in filter(None, (entry.decode() for entry in listed)):
        path = source / name
        if path.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target / name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--ports",
        help="OLD=NEW,... : use other ports than the README's (when 8080, 8081, 8090 are taken here)",
    )
    parser.add_argument(
        "--isolate", action="store_true", help="in a new network and mount namespace: lo up, /tmp private"
    )
    args = parser.parse_args(argv)
    if args.isolate:
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
        # A checkout (or its venv) under /tmp would vanish under a private /tmp: then /tmp stays shared.
        if any(Path(place).resolve().is_relative_to("/tmp") for place in (ROOT, sys.prefix)):
            print("/tmp stays shared: the repository or its venv lives there", file=sys.stderr)
        else:
            mounted = subprocess.run(["mount", "-t", "tmpfs", "tmpfs", "/tmp"], capture_output=True)
            if mounted.returncode != 0:
                print(f"/tmp stays shared: {mounted.stderr.decode().strip()}", file=sys.stderr)
    text = README.read_text()
    ports = dict(pair.split("=") for pair in args.ports.split(",")) if args.ports else {}

    def move_ports(content: str) -> str:
        for old, new in ports.items():
            content = re.sub(rf"\b{old}\b", new, content)
        return content

    text = move_ports(text)
    blocks = parse(text)
    if problems := check_markers(blocks):
        print("\n".join(problems), file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="readme-") as tmp:
        root = Path(tmp) / "repo"
        root.mkdir()
        copy_repository(ROOT, root)
        config = root / "config.toml"
        config.write_text(move_ports(config.read_text()))
        env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "NO_PROXY": "127.0.0.1,localhost",
            "no_proxy": "127.0.0.1,localhost",
        }
        runner = Runner(root, env)
        started = time.monotonic()
        try:
            runner.run(blocks)
        except ReadmeError as exc:
            print(f"FAILED: {exc}", file=sys.stderr)
            for bg in runner.background:
                tail = bg.log.read_text(errors="replace")[-2000:]
                print(f"--- {bg.block.where} (background) log:\n{tail}", file=sys.stderr)
            return 1
        finally:
            runner.stop()
        print(f"every run block passed in {time.monotonic() - started:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
