"""RecurringJobPoller: turns due recurring templates into jobs (claim-and-park)."""

from __future__ import annotations

import logging

from .. import faults
from ..config import ServerConfig
from ..recurring import fire_claim
from ..storage.base import Storage
from .service import PeriodicService

log = logging.getLogger("qml.recurring")


class RecurringJobPoller(PeriodicService):
    """Claims due templates, enqueues their tick jobs, parks them at the next tick."""

    name = "recurring"

    def __init__(self, storage: Storage, config: ServerConfig, batch: int = 50) -> None:
        super().__init__(config.recurring_poll_interval)
        self.storage = storage
        self.server_id = config.server_name
        self.claim_seconds = config.recurring_claim_seconds
        self.grace = max(5.0, 2 * config.recurring_poll_interval)
        self.batch = batch
        self.fired = 0

    async def run_once(self) -> None:
        while True:
            claims = await self.storage.claim_due_recurring(
                self.server_id, limit=self.batch, claim_seconds=self.claim_seconds
            )
            if claims:
                faults.point("recurring.claimed")
            for claim in claims:
                try:
                    self.fired += await fire_claim(self.storage, claim, self.grace)
                except Exception:
                    # A broken template (bad cron stored by hand) must not stop others;
                    # its claim expires and it is retried.
                    log.exception(
                        "recurring template %s could not fire",
                        claim.template.id,
                        extra={"action": "recurring_error"},
                    )
            if len(claims) < self.batch:
                return
