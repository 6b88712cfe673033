"""Suite-wide: figures the tests measure (failover time, commit latency) are printed in the summary.

A test calls the `figure` fixture with a line of text; it travels with the test's report (also from xdist
workers) and the run ends with a "figures measured by the tests" section. Figures are printed, never asserted.

`--rewrite`: the datadriven Raft tests (tests/raft) write their actual outputs into their golden files.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

_figures: list[tuple[str, str]] = []


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--rewrite", action="store_true", default=False,
                     help="datadriven tests (tests/raft) write their actual output into their golden files")


@pytest.fixture
def figure(record_property: Callable[[str, object], None]) -> Callable[[str], None]:
    def note(text: str) -> None:
        record_property("figure", text)

    return note


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "call":
        _figures.extend((report.nodeid, str(v)) for k, v in report.user_properties if k == "figure")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _figures:
        terminalreporter.section("figures measured by the tests")
        for nodeid, text in _figures:
            terminalreporter.write_line(f"{text}    [{nodeid.split('::')[-1]}]")
