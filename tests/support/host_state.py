"""What a node leaves on the host, read from the host itself: mounts, processes and nftables tables. Tests
that a node gives the host back compare these before and after it leaves."""

from __future__ import annotations

import subprocess
from pathlib import Path


def mounts_under(path: Path) -> list[str]:
    """The mount points at or below `path`."""
    prefix = str(path.resolve())
    return [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()
            if line.split()[1].startswith(prefix)]


def processes_naming(path: Path) -> list[int]:
    """The pids whose command line names `path` (a daemon's shims name its data directory)."""
    needle = str(path.resolve()).encode()
    out = []
    for e in Path("/proc").iterdir():
        if e.name.isdigit():
            try:
                if needle in (e / "cmdline").read_bytes():
                    out.append(int(e.name))
            except OSError:  # gone meanwhile, or not ours to read
                pass
    return out


def nft_tables() -> set[str]:
    """The host's nftables tables, as `nft list tables` names them ("table ip shoal")."""
    out = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True, check=True).stdout
    return {line.strip() for line in out.splitlines() if line.strip()}
