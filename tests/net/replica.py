"""The replica the multi-host tests run as a process-executor task: says who it is and who called.

    python3 replica.py TCP_PORT UDP_PORT [linger]

With `linger`, SIGTERM is ignored: a task told to stop keeps serving until its stop grace period ends.

TCP: answers every line (the first one after an optional PROXY v2 header) with one JSON line {"ips": [the
task's own IPv4 addresses], "peer": "<ip>:<port> of the connection", "proxy": "<ip>:<port> from the PROXY
header" or null}, until the client closes; one thread per connection, so an idle one blocks nobody. UDP:
answers each datagram with the same JSON (peer = the datagram's source).
"""

from __future__ import annotations

import json
import socket
import struct
import subprocess
import sys
import threading

SIG = b"\r\n\r\n\x00\r\nQUIT\n"


def own_ips() -> list[str]:
    out = subprocess.run(["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True).stdout
    ips = [line.split()[3].split("/")[0] for line in out.splitlines() if " lo " not in line]
    return sorted(ips)


IPS = own_ips()


def proxy_source(data: bytes) -> tuple[str | None, bytes]:
    if not data.startswith(SIG) or len(data) < 16:
        return None, data
    (length,) = struct.unpack("!H", data[14:16])
    body, rest = data[16:16 + length], data[16 + length:]
    if data[13] >> 4 == 1:
        src = socket.inet_ntoa(body[0:4])
        (sport,) = struct.unpack("!H", body[8:10])
        return f"{src}:{sport}", rest
    return "?", rest


def answer(peer: tuple[str, int], proxy: str | None) -> bytes:
    return (json.dumps({"ips": IPS, "peer": f"{peer[0]}:{peer[1]}", "proxy": proxy}) + "\n").encode()


def serve(c: socket.socket, peer: tuple[str, int]) -> None:
    proxy: str | None = None
    first = True
    data = b""
    try:
        while True:
            while b"\n" not in data:
                chunk = c.recv(4096)
                if not chunk:
                    return
                data += chunk
            if first:
                proxy, data = proxy_source(data)
                first = False
            _line, _, data = data.partition(b"\n")
            c.sendall(answer(peer, proxy))
    except OSError:
        pass
    finally:
        c.close()


def tcp(port: int) -> None:
    srv = socket.create_server(("0.0.0.0", port), backlog=64)
    while True:
        c, peer = srv.accept()
        threading.Thread(target=serve, args=(c, peer), daemon=True).start()


def udp(port: int) -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", port))
    while True:
        data, peer = s.recvfrom(65536)
        proxy, _ = proxy_source(data)
        s.sendto(answer(peer, proxy), peer)


if __name__ == "__main__":
    if sys.argv[3:] == ["linger"]:
        import signal

        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    threading.Thread(target=udp, args=(int(sys.argv[2]),), daemon=True).start()
    tcp(int(sys.argv[1]))
