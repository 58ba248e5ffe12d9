"""The two ways a transform goes wrong: a bad spec (found at load) and a document it cannot map (per call)."""

from __future__ import annotations

from collections.abc import Sequence


class TransformSpecError(Exception):
    """A spec file could not be loaded; ``problems`` lists every reason, not just the first.

    Each problem reads ``FILE: key.path: message``, e.g.
    ``transforms/crm.toml: map[3].date.from: unknown date format "%Q"``.
    """

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems: list[str] = list(problems)
        super().__init__("\n".join(self.problems))


class TransformError(Exception):
    """A document that the spec cannot map: a required source is missing or a value will not convert.

    ``rule`` names the rule as the spec numbers it (``map[3]``, ``map[3].each[2]``), ``path`` is the JSON
    Pointer involved (into the input for source problems, into the output for target problems) and
    ``detail`` is the reason on its own. The message names all three, and is safe to show the caller that
    sent the document: it quotes only that document's own values.
    """

    def __init__(self, rule: str, path: str, detail: str, *, target: bool = False) -> None:
        self.rule = rule
        self.path = path
        self.detail = detail
        # Whether ``path`` points into the output; `each` needs this to prefix the element's position.
        self.target = target
        super().__init__(f"{rule}: {path if path else '(whole document)'}: {detail}")
