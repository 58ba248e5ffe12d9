"""``gateway transform``: called as ``cli.main([...])`` with files in a temp dir."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import orjson
import pytest

from gateway.transform import cli

SPEC = """
[[map]]
to = "/name"
from = "/fullName"

[[map]]
to = "/created"
from = "/createdAt"
date = { from = "%d/%m/%Y", to = "unix" }

[[map]]
to = "/source"
const = "crm"
"""


@pytest.fixture
def spec_file(tmp_path: Path) -> Path:
    path = tmp_path / "crm.toml"
    path.write_text(SPEC)
    return path


def write_json(tmp_path: Path, data: object, name: str = "input.json") -> Path:
    path = tmp_path / name
    path.write_bytes(orjson.dumps(data))
    return path


def set_stdin(monkeypatch: pytest.MonkeyPatch, data: bytes) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data), encoding="utf-8"))


def test_transforms_a_file_and_prints_pretty_json(
    tmp_path: Path, spec_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = write_json(tmp_path, {"fullName": "Ada", "createdAt": "31/01/2024"})
    assert cli.main([str(spec_file), str(source)]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert orjson.loads(out) == {"name": "Ada", "created": 1706659200, "source": "crm"}
    assert out.startswith('{\n  "name": "Ada",') and out.endswith("}\n")


def test_reads_standard_input_without_an_input_file(
    spec_file: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    set_stdin(monkeypatch, b'{"fullName": "Zo\xc3\xab", "createdAt": "01/01/1970"}')
    assert cli.main([str(spec_file)]) == 0
    assert orjson.loads(capsys.readouterr().out) == {"name": "Zoë", "created": 0, "source": "crm"}


def test_explain_prints_the_table_and_reads_no_input(
    spec_file: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    set_stdin(monkeypatch, b"not json, and never read")
    assert cli.main([str(spec_file), "--explain"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["target", "source", "conversion"]
    assert "/created  <-  /createdAt   date %d/%m/%Y -> unix" in out
    assert '/source   <-  const "crm"' in out
    assert "keep_unmapped = false" in out


def test_spec_problems_print_one_line_each(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "bad.toml"
    spec.write_text('[[map]]\nto = "x"\nfrom = "/a"\n[[map]]\nto = "/b"\nfrom = "/b"\ntype = "int"\n')
    source = write_json(tmp_path, {})
    assert cli.main([str(spec), str(source)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(f"{spec}: map[1].to: ")
    assert lines[1].startswith(f"{spec}: map[2].type: ")


def test_transform_error_names_rule_and_path(
    tmp_path: Path, spec_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = write_json(tmp_path, {"fullName": "Ada", "createdAt": "2024-01-31"})
    assert cli.main([str(spec_file), str(source)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert "map[2]" in err and "/createdAt" in err and "%d/%m/%Y" in err


def test_bad_input_json(tmp_path: Path, spec_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "broken.json"
    source.write_text('{"fullName": ')
    assert cli.main([str(spec_file), str(source)]) == 1
    err = capsys.readouterr().err
    assert f"{source}: not valid JSON" in err


def test_bad_json_on_standard_input(
    spec_file: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    set_stdin(monkeypatch, b"")
    assert cli.main([str(spec_file)]) == 1
    assert "standard input: not valid JSON" in capsys.readouterr().err


def test_missing_files(tmp_path: Path, spec_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([str(tmp_path / "absent.toml"), "x.json"]) == 1
    assert "absent.toml: cannot read" in capsys.readouterr().err
    assert cli.main([str(spec_file), str(tmp_path / "absent.json")]) == 1
    assert "absent.json: cannot read" in capsys.readouterr().err


def test_usage_errors_return_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([]) == 2
    assert "usage: gateway transform" in capsys.readouterr().err
    assert cli.main(["--help"]) == 0
    assert "--explain" in capsys.readouterr().out
