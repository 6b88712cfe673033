"""Runs last: in a full run (`SHOAL_DIFF_ALL=1`, every test of the suite run in this process), an entry of
deviations.yaml that excused no difference fails the run. A stale entry hides nothing and misleads: the
difference it documents is gone, or its pattern no longer names it."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.differential import conftest
from tests.differential.harness import DEVIATIONS_FILE, LEDGER, load_deviations, run_all, stale_deviations

HERE = Path(__file__).parent


def test_no_stale_deviation(request: pytest.FixtureRequest) -> None:
    if not run_all():
        pytest.skip("judged in the full run only (SHOAL_DIFF_ALL=1): the trimmed one leaves scenarios out")
    others = {item.nodeid for item in request.session.items
              if Path(str(item.path)).parent == HERE and item.nodeid != request.node.nodeid}
    files = {p.name for p in HERE.glob("test_*.py")} - {Path(__file__).name}
    collected = {nodeid.split("::")[0].rsplit("/", 1)[-1] for nodeid in others}
    if collected != files or not others <= conftest.RAN:
        pytest.skip("not a full run of the suite in this process: an entry's scenario may not have run")
    stale = stale_deviations(load_deviations(), LEDGER)
    assert not stale, (f"{len(stale)} entr(y/ies) of {DEVIATIONS_FILE.name} excused no difference although "
                       "their requests were compared; remove them:\n"
                       + "\n".join(f"  {d.request}  {d.pointer}: {d.reason[:80]}" for d in stale))
