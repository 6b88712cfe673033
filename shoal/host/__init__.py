"""Helpers for the host both node sides use: running `ip`/`nft` (ipcmd) and entering or holding network
namespaces (nsutil, standard library only, so the process executor's shim can import it before it forks)."""
