"""Session fixtures for end-to-end tests against a real, private Docker Engine.

- `dockerd`: the `unix://...` URL of a dockerd started for this test run (shared by xdist workers).
  When dockerd is missing or cannot start, the e2e tests are skipped with the reason, except when
  the environment has CI=true: then they fail, so CI never silently skips them.
- `test_image`: `shoal-test/busybox:latest`, built offline from Debian's busybox-static.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.e2e.dockerd import DockerdUnavailable, ensure_test_image, shared_dockerd


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
