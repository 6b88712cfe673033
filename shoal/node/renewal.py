"""A worker's certificate renewal: at 50-80 % of its lifetime (as swarmkit), earlier when a manager asks (a root
rotation) or the trust roots change; a renewed certificate with another role promotes or demotes the node."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable

from shoal import ca as CA
from shoal.clock import Clock
from shoal.node.identity import NodeIdentity
from shoal.rpc.client import NodeCredentials, RemoteDispatcher

log = logging.getLogger(__name__)


class CertRenewal:
    def __init__(self, remote: RemoteDispatcher, ident: NodeIdentity, clock: Clock, rng: random.Random,
                 on_role_change: Callable[[str, NodeCredentials, list[str]], None]) -> None:
        self.remote = remote
        self.ident = ident
        self.clock = clock
        self.rng = rng
        self.on_role_change = on_role_change

    async def _wait_due(self, at: float) -> None:
        """Until the renewal point, or earlier if a manager asks (root rotation) or the trust roots change."""
        waits = [asyncio.ensure_future(self.clock.sleep(max(at - self.clock.now(), 0.0))),
                 asyncio.ensure_future(self.remote.renew_requested.wait()),
                 asyncio.ensure_future(self.remote.trust_changed.wait())]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()

    def _adopt_trust_root(self) -> bool:
        """The managers' trust roots changed (a rotation ended): take them if this node's certificate chains to
        them (True); otherwise a renewal brings a certificate that does."""
        self.remote.trust_changed.clear()
        creds, roots = self.remote.creds, self.remote.trust_root
        pems = CA.split_pems(creds.cert_pem)
        if not roots or not CA.chains_to(pems[0], "".join(pems[1:]), roots):
            return False
        new = NodeCredentials(creds.key_pem, creds.cert_pem, roots)
        self.ident.write_creds(new)
        self.remote.set_credentials(new)
        log.info("trust roots updated from the managers")
        return True

    async def run(self) -> None:
        """Renew until cancelled (or the role changes), retrying a failed renewal with a backoff."""
        backoff = 5.0
        while True:
            at = CA.renew_at(self.remote.creds.cert_pem, self.rng)
            await self._wait_due(at)
            if self.remote.trust_changed.is_set() and not self.remote.renew_requested.is_set() \
                    and self.clock.now() < at and self._adopt_trust_root():
                continue
            self.remote.renew_requested.clear()
            self.remote.trust_changed.clear()
            try:
                creds = await self.remote.renew(CA.new_key_pem())
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.warning("renewing the node certificate failed (%s); retrying in %.0fs", e, backoff)
                await self.clock.sleep(backoff)
                backoff = min(backoff * 2, 300.0)
                continue
            backoff = 5.0
            ident = CA.identity_of(creds.cert_pem)
            if ident.role != self.ident.fields.get("role"):
                self.on_role_change(ident.role, creds, list(self.remote.manager_addrs))
                return
            self.ident.write_creds(creds)
            self.remote.set_credentials(creds)
            log.info("node certificate renewed; valid until %s", ident.not_after)
