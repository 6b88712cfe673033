"""A client the multi-host tests run inside a task's namespaces (nsenter) or a lab host; prints JSON.

    probe.py resolve NAME            -> ["ip", ...] (the system resolver: the task's resolv.conf)
    probe.py tcp HOST PORT COUNT     -> [answer or null per connection]
    probe.py udp HOST PORT COUNT     -> [answer or null per datagram, each from a new socket]
    probe.py idle HOST PORT SECONDS  -> [answer, answer or null]: one connection, a line, SECONDS of silence,
                                        another line on the same connection (null: no answer within 5 s)
"""

from __future__ import annotations

import json
import socket
import sys


def resolve(name: str) -> list[str]:
    try:
        return sorted({str(a[4][0]) for a in socket.getaddrinfo(name, None, socket.AF_INET, socket.SOCK_STREAM)})
    except socket.gaierror:
        return []


def tcp(host: str, port: int) -> object:
    try:
        with socket.create_connection((host, port), timeout=3) as c:
            c.sendall(b"hello\n")
            data = b""
            while b"\n" not in data:
                chunk = c.recv(4096)
                if not chunk:
                    break
                data += chunk
        return json.loads(data) if data else None
    except (OSError, ValueError):
        return None


def udp(host: str, port: int) -> object:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(2)
        try:
            s.sendto(b"hello", (host, port))
            data, _ = s.recvfrom(65536)
            return json.loads(data)
        except (OSError, ValueError):
            return None


def idle(host: str, port: int, seconds: float) -> list[object]:
    import time

    out: list[object] = []
    with socket.create_connection((host, port), timeout=5) as c:
        buf = c.makefile("rb")
        for i in range(2):
            if i:
                time.sleep(seconds)
            try:
                c.sendall(b"hello\n")
                line = buf.readline()
                out.append(json.loads(line) if line else None)
            except (OSError, ValueError):
                out.append(None)
    return out


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "idle":
        print(json.dumps(idle(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]))))
    elif cmd == "resolve":
        print(json.dumps(resolve(sys.argv[2])))
    else:
        fn = tcp if cmd == "tcp" else udp
        print(json.dumps([fn(sys.argv[2], int(sys.argv[3])) for _ in range(int(sys.argv[4]))]))
