"""A reader, runner and rewriter of datadriven test files (the format of etcd-io/raft's interaction tests).

A file is a series of records, each a command line, a `----` line, and the expected output up to the next blank
line (or the end of the file)::

    # a comment: lines starting with '#', and blank lines, between records
    propose 1 v0 v1
    ----
    1: proposed 3/2 4/2

A command line is a name followed by arguments: `word` (a flag), `key=value`, or `key=(a,b,c)` (a list).
Outputs never contain blank lines (the runner refuses one: it would end the record).

`run_file` runs every record through a handler and compares its output with the expected block; with
`rewrite` it writes the file back with the actual outputs instead (comments and commands are kept as they are).
"""

from __future__ import annotations

import difflib
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

SEPARATOR = "----"


class DataDrivenError(Exception):
    """A malformed file (a command without `----`, an output with a blank line)."""


class Mismatch(AssertionError):
    """A command's output differs from the expected block."""


@dataclass(frozen=True, slots=True)
class Arg:
    key: str
    values: tuple[str, ...] = ()


@dataclass(slots=True)
class Record:
    path: Path
    line: int  # 1-based line of the command
    command: str
    args: list[Arg]
    expected: str
    expected_span: tuple[int, int]  # 0-based [start, end) of the expected lines in the file
    text: str = field(default="")  # the command line as written

    @property
    def pos(self) -> str:
        return f"{self.path.name}:{self.line}"

    def has(self, key: str) -> bool:
        return any(a.key == key for a in self.args)

    def get(self, key: str) -> Arg | None:
        for a in self.args:
            if a.key == key:
                return a
        return None

    def value(self, key: str, default: str | None = None) -> str | None:
        a = self.get(key)
        if a is None:
            return default
        if len(a.values) != 1:
            raise DataDrivenError(f"{self.pos}: {key} takes one value, got {a.values}")
        return a.values[0]

    def values(self, key: str) -> tuple[str, ...]:
        a = self.get(key)
        return a.values if a is not None else ()

    def positional(self) -> list[str]:
        """The arguments written without `=`, in order."""
        return [a.key for a in self.args if not a.values]


def parse_args(words: list[str]) -> list[Arg]:
    args: list[Arg] = []
    for w in words:
        if "=" not in w:
            args.append(Arg(w))
            continue
        key, _, val = w.partition("=")
        if val.startswith("(") and val.endswith(")"):
            inner = val[1:-1]
            args.append(Arg(key, tuple(v.strip() for v in inner.split(",")) if inner.strip() else ()))
        else:
            args.append(Arg(key, (val,)))
    return args


def parse(path: Path) -> tuple[list[str], list[Record]]:
    """The file's lines and its records."""
    lines = path.read_text().split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    records: list[Record] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.strip() or line.lstrip().startswith("#"):
            i += 1
            continue
        if i + 1 >= len(lines) or lines[i + 1] != SEPARATOR:
            raise DataDrivenError(f"{path.name}:{i + 1}: command {line!r} is not followed by {SEPARATOR!r}")
        words = shlex.split(line)
        start = i + 2
        end = start
        while end < len(lines) and lines[end].strip():
            end += 1
        records.append(Record(path, i + 1, words[0], parse_args(words[1:]), "\n".join(lines[start:end]),
                              (start, end), line))
        i = end
    return lines, records


def run_file(path: Path, handler: Callable[[Record], str], *, rewrite: bool = False) -> None:
    """Run each record through `handler`; raise Mismatch at the first output that differs from the file, or
    (`rewrite`) write the actual outputs into the file."""
    lines, records = parse(path)
    outputs: list[str] = []
    for rec in records:
        out = handler(rec).rstrip("\n")
        if any(not ln.strip() for ln in out.split("\n")):
            raise DataDrivenError(f"{rec.pos}: output of {rec.text!r} has a blank line")
        if not rewrite and out != rec.expected:
            diff = "\n".join(difflib.unified_diff(rec.expected.split("\n"), out.split("\n"), "expected", "actual",
                                                  lineterm=""))
            raise Mismatch(f"{rec.pos}: output of {rec.text!r} differs (run with --rewrite or SHOAL_REWRITE=1 "
                           f"to accept it)\n{diff}")
        outputs.append(out)
    if rewrite:
        new: list[str] = []
        at = 0
        for rec, out in zip(records, outputs, strict=True):
            start, end = rec.expected_span
            new.extend(lines[at:start])
            new.extend(out.split("\n"))
            at = end
        new.extend(lines[at:])
        path.write_text("\n".join(new) + "\n")
