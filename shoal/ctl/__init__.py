"""The client side of the `shoal` command: finding the daemon as the docker CLI does (`endpoint`), talking to it over
the Engine API (`client`), and what `shoal status`, `top`, `wait` and `diagnose` make of the answers.

Nothing here imports the daemon's code: a `shoal status` starts as fast as a small HTTP client does, and it works
against any daemon that serves the Engine API (Shoal's own `/_shoal/...` endpoints are used where present).
"""
