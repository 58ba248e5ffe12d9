"""Secret references: ``"env:NAME"`` or ``"file:/path"`` resolved at load (a file is read again on every
reload, so a rotated file takes effect); a literal value is refused without being echoed."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .model import (
    Secret,
)


def resolve_secret(reference: str, base_dir: Path, report: Any) -> Secret | None:
    if reference.startswith("env:"):
        var = reference[4:]
        if not var:
            report("env: reference names no variable")
            return None
        value = os.environ.get(var)
        if value is None:
            report(f"environment variable {var} is not set")
            return None
        if not value:
            report(f"environment variable {var} is empty")
            return None
        return Secret(reference, value)
    if reference.startswith("file:"):
        file = Path(reference[5:])
        if not reference[5:]:
            report("file: reference names no file")
            return None
        file = file if file.is_absolute() else base_dir / file
        try:
            value = file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            report(f"cannot read secret file {file}: {exc.strerror or exc}")
            return None
        if not value:
            report(f"secret file {file} is empty")
            return None
        return Secret(reference, value)
    # The value itself is never echoed: it may be a real credential pasted by mistake.
    report('must be a reference ("env:NAME" or "file:/path"), not a literal secret')
    return None
