"""The daemon's allocator setting: memory of large freed blocks goes back to the system."""

from __future__ import annotations

import subprocess
import sys

# Blocks of the sizes a manager holds (400 KiB configs, their base64 and JSON), interleaved with small objects
# as the store's are, then freed: the process's resident size must come back near where it started.
_PROGRAM = """
import base64, json, os, sys
from shoal.procmem import return_large_frees_to_os

def rss_mib():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) // 1024

if sys.argv[1] == "fixed":
    assert return_large_frees_to_os()
start = rss_mib()
small, large = [], []
for i in range(100):
    raw = os.urandom(400 * 1024)
    text = base64.b64encode(raw).decode()
    doc = json.dumps({"Name": f"c{i}", "Data": text}).encode()
    large.append((raw, text, doc, json.loads(doc)))
    small.append([str(j) for j in range(200)])
peak = rss_mib()
del large
print(start, peak, rss_mib())
"""


def _run(mode: str) -> tuple[int, int, int]:
    out = subprocess.run([sys.executable, "-c", _PROGRAM, mode], capture_output=True, text=True, check=True)
    start, peak, end = (int(x) for x in out.stdout.split())
    return start, peak, end


def test_large_freed_blocks_go_back_to_the_system() -> None:
    start, peak, end = _run("fixed")
    assert peak - start > 150  # the blocks were resident
    assert end - start < 30, (start, peak, end)


def test_without_the_setting_glibc_keeps_them() -> None:
    # What the setting is for: glibc's own threshold keeps the freed heap (so the test above can fail).
    start, peak, end = _run("default")
    assert end - start > 150, (start, peak, end)
