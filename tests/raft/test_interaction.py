"""Raft interaction tests: each tests/raft/testdata/*.txt is a script run by `InteractionEnv`, its output
compared with the expected blocks (`pytest --rewrite tests/raft` or SHOAL_REWRITE=1 writes them back)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.raft.datadriven import DataDrivenError, Mismatch, parse, run_file
from tests.raft.interaction import InteractionEnv

TESTDATA = Path(__file__).parent / "testdata"
FILES = sorted(TESTDATA.glob("*.txt"))


def rewriting(config: pytest.Config) -> bool:
    return bool(config.getoption("--rewrite", default=False)) or os.environ.get("SHOAL_REWRITE") == "1"


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_interaction(path: Path, request: pytest.FixtureRequest) -> None:
    run_file(path, InteractionEnv().handle, rewrite=rewriting(request.config))


def test_every_script_has_commands() -> None:
    assert len(FILES) >= 26
    for path in FILES:
        _, records = parse(path)
        assert records, path.name


def test_a_corrupted_expected_line_fails_and_rewrite_restores_it(tmp_path: Path) -> None:
    """The golden comparison can fail, and rewriting regenerates the file byte for byte."""
    original = TESTDATA / "log_replication_and_commit.txt"
    copy = tmp_path / original.name
    shutil.copy(original, copy)
    text = copy.read_text()
    assert "commit=14 applied=14" in text
    copy.write_text(text.replace("commit=14 applied=14", "commit=11", 1))
    with pytest.raises(Mismatch, match=r"log_replication_and_commit.txt:\d+"):
        run_file(copy, InteractionEnv().handle)
    run_file(copy, InteractionEnv().handle, rewrite=True)
    assert copy.read_text() == text
    run_file(copy, InteractionEnv().handle)


def test_parse_reads_commands_arguments_and_expected_blocks(tmp_path: Path) -> None:
    path = tmp_path / "x.txt"
    path.write_text("# comment\nadd-nodes 3 voters=(1,2,3) empty pre-vote=false\n----\nok\n\n"
                    "status 1\n----\n1: line one\n   line two\n")
    _, records = parse(path)
    assert [(r.command, r.line, r.expected) for r in records] == [
        ("add-nodes", 2, "ok"), ("status", 6, "1: line one\n   line two")]
    rec = records[0]
    assert rec.positional() == ["3", "empty"]
    assert rec.values("voters") == ("1", "2", "3") and rec.value("pre-vote") == "false"


def test_a_command_without_separator_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bad.txt"
    path.write_text("status 1\n1: leader\n")
    with pytest.raises(DataDrivenError, match=r"bad.txt:1"):
        parse(path)


def test_an_unknown_command_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "unknown.txt"
    path.write_text("add-nodes 1\n----\nok\n\nfly 1\n----\nok\n")
    with pytest.raises(DataDrivenError, match=r"unknown.txt:5: unknown command 'fly'"):
        run_file(path, InteractionEnv().handle)
