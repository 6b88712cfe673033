"""Suite-wide: figures the tests measure (failover time, commit latency) are printed in the summary.

A test calls the `figure` fixture with a line of text; it travels with the test's report (also from xdist
workers) and the run ends with a "figures measured by the tests" section. Figures are printed, never asserted.

`--rewrite`: the datadriven Raft tests (tests/raft) write their actual outputs into their golden files.

A real, private Docker Engine for the tests that need one (tests/e2e, and the docker side of scenarios run on
both executors):
- `dockerd`: the `unix://...` URL of a dockerd started for this test run (shared by xdist workers).
  When dockerd is missing or cannot start, the tests using it are skipped with the reason, except when
  the environment has CI=true: then they fail, so CI never silently skips them.
- `test_image`: `shoal-test/busybox:latest`, built offline from Debian's busybox-static.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest

import shoal  # noqa: F401  (first: it turns gRPC's fork support off, which must happen before gRPC is imported)
from tests.e2e.dockerd import DockerdUnavailable, ensure_test_image, shared_dockerd

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


def _unavailable(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"e2e: no Docker Engine in CI: {reason}", pytrace=False)
    pytest.skip(f"e2e: no Docker Engine: {reason}")


@pytest.fixture(scope="session")
def dockerd() -> Iterator[str]:
    try:
        cm = shared_dockerd()
        url = cm.__enter__()
    except DockerdUnavailable as e:
        _unavailable(str(e))
        raise AssertionError("unreachable") from e
    try:
        yield url
    finally:
        cm.__exit__(None, None, None)


@pytest.fixture(scope="session")
def test_image(dockerd: str) -> str:
    try:
        return ensure_test_image(dockerd)
    except DockerdUnavailable as e:
        _unavailable(str(e))
        raise AssertionError("unreachable") from e
