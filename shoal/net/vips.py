"""VIP rules: an nftables table in each sandbox's namespace that DNATs new connections and flows (TCP, UDP,
any port) to each VIP of a service on the sandbox's networks to one of its serving tasks, in turn (`numgen
inc`); rewritten whenever the set of serving tasks changes, so a task that stops serving gets no new
connection. A VIP without serving task rejects (TCP reset / ICMP unreachable) instead of timing out.

A container of the docker executor gets its rules once it runs, after its process started: connections it
opened to a VIP before are made to retry (`VipRules.retry_early_connections`, shoal.net.conntrack).
"""

from __future__ import annotations

import asyncio
import json
import logging

from shoal.host import ipcmd
from shoal.net import conntrack
from shoal.net.links import ip_of
from shoal.net.shared import Box, Shared

log = logging.getLogger(__name__)

NOWHERE_MAC = "02:42:00:00:00:00"  # the MAC of 0.0.0.0 by the 02:42 rule: no endpoint ever has it


class VipRules:
    """Writes each sandbox's VIP rules from the shared cluster state (under the shared lock)."""

    def __init__(self, shared: Shared) -> None:
        self.shared = shared

    def rules(self, box: Box) -> tuple[str, set[str]]:
        """The nft script for the box's VIPs, and the VIPs it DNATs (those with a serving task)."""
        state, directory = self.shared.state, self.shared.directory
        nat: list[str] = []
        natted: set[str] = set()
        reject: list[str] = []
        mine = {n for n in box.networks if (net := state.networks.get(n)) is not None and not net.spec.ingress}
        for svc in sorted(state.services.values(), key=lambda s: s.id):
            for vip in svc.endpoint.virtual_ips:
                if vip.network_id not in mine:
                    continue
                v = ip_of(vip.addr)
                ips = sorted(e.ip for e in directory.endpoints(svc.id, vip.network_id))
                if not ips:
                    reject.append(f"    ip daddr {v} meta l4proto tcp reject with tcp reset")
                    reject.append(f"    ip daddr {v} reject")
                elif len(ips) == 1:
                    nat.append(f"    ip daddr {v} dnat to {ips[0]}")
                    natted.add(v)
                else:
                    m = ", ".join(f"{i} : {ip}" for i, ip in enumerate(ips))
                    nat.append(f"    ip daddr {v} dnat to numgen inc mod {len(ips)} map {{ {m} }}")
                    natted.add(v)
        return "\n".join([
            "table ip shoal", "delete table ip shoal", "table ip shoal {",
            "  chain vip {", "    type nat hook output priority -100; policy accept;", *nat, "  }",
            "  chain novip {", "    type filter hook output priority 0; policy accept;", *reject, "  }",
            "}", ""]), natted

    async def program(self, box: Box) -> None:
        """The box's rules as the cluster state has them (written only when they changed)."""
        if box.container and not ipcmd.is_netns(box.ns):
            return  # a container not running (yet, or any more): its rules go in once it runs
        script, natted = self.rules(box)
        if script == box.nft_script:
            return
        try:
            await ipcmd.nft(script, netns=str(box.ns))
            box.nft_script = script
            box.rules_in.set()
        except ipcmd.CommandFailed as e:
            log.warning("VIP rules for task %s: %s", box.task_id, e.message)
            return
        if box.container and natted:
            await self.retry_early_connections(box, natted)

    async def retry_early_connections(self, box: Box, vips: set[str]) -> None:
        """The engine started the container's process before its VIP rules could exist. A connection it opened
        to a VIP meanwhile was tracked without DNAT, and its SYN waits for an ARP answer for the VIP that never
        comes; TCP does not retransmit while that copy is queued, and the connection fails when ARP gives up.
        So: forget the tracked connection (shoal.net.conntrack), and let the queued SYN go to a MAC nobody has
        (it is dropped on the bridge; the VIP's neighbour entry is never used again, every packet to a VIP is
        DNATed now); TCP's retransmission a second later is tracked anew, DNATed to a task, and connects."""
        ns = str(box.ns)
        try:
            n = await asyncio.to_thread(conntrack.forget_unnated, ns, vips)
        except OSError as e:
            log.warning("conntrack in the namespace of task %s: %s", box.task_id, e)
            return
        if not n:
            return
        try:
            neigh = json.loads(await ipcmd.run("ip", "-j", "-4", "neigh", "show", netns=ns) or "[]")
            waiting = [e for e in neigh if e.get("dst") in vips and "REACHABLE" not in e.get("state", [])]
            await ipcmd.ip_batch([f"neigh replace {e['dst']} lladdr {NOWHERE_MAC} dev {e['dev']} nud reachable"
                                  for e in waiting], netns=ns)
        except (ipcmd.CommandFailed, ValueError) as e:
            log.debug("neighbour entries of VIPs for task %s: %s", box.task_id, e)
        log.info("task %s: %d connection(s) to VIPs from before its VIP rules retried", box.task_id, n)
