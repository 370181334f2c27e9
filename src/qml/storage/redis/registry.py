"""Recurring templates and the server registry of :class:`RedisStorage`.

A mixin so that ``storage.py`` stays readable; it relies on the storage's
``keys``, ``_script``, ``_cmd`` and ``_c``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from redis.asyncio import Redis

from ...errors import SerializationError
from ...job import Job
from ..requests import RecurringClaim, RecurringTemplate, ServerInfo
from .codec import (
    Arg,
    as_hash,
    decode_server,
    decode_template,
    encode_new_job,
    encode_server,
    encode_spec,
    from_us,
    micros,
    opt_us,
    to_us,
)
from .errors import hash_reply, text, tokens, translate
from .keys import RedisKeys

log = logging.getLogger("qml.storage.redis")


def _readable(hashes: Iterable[dict[bytes, bytes]]) -> list[tuple[RecurringTemplate, int]]:
    """Decoded templates with their position; a damaged hash (edited by hand) is
    logged and skipped, so one cannot stop the others from being listed or fired."""
    out = []
    for n, h in enumerate(hashes):
        try:
            out.append((decode_template(h), n))
        except (SerializationError, KeyError, TypeError, ValueError) as exc:
            name = h.get(b"id", b"?").decode("utf-8", "replace")
            log.warning(
                "recurring template %s is damaged and skipped: %s",
                name,
                exc,
                extra={"action": "recurring_damaged"},
            )
    return out


class RegistryHooks:
    """Storage hooks for recurring templates and servers (see :class:`RedisStorage`)."""

    keys: RedisKeys

    async def _script(self, name: str, *args: Arg) -> Any:
        raise NotImplementedError

    async def _cmd(self, command: str, *args: Arg) -> Any:
        raise NotImplementedError

    async def _c(self) -> Redis:
        raise NotImplementedError

    def _observe(self, generation: Any) -> None:
        raise NotImplementedError

    # ------------------------------------------------------------------ recurring
    async def _upsert_recurring(self, template: RecurringTemplate) -> None:
        t = template
        await self._script(
            "recurring_upsert",
            "",
            t.id,
            encode_spec(t),
            "1" if t.paused else "0",
            opt_us(t.next_run_at),
            opt_us(t.last_run_at),
            t.last_job_id or "",
            t.claimed_by or "",
            opt_us(t.claim_expires_at),
        )

    async def _get_recurring(self, template_id: str) -> RecurringTemplate | None:
        h = hash_reply(await self._cmd("HGETALL", self.keys.recurring_key(template_id)))
        return decode_template(h) if h else None

    async def _list_recurring(self) -> list[RecurringTemplate]:
        ids = [text(i) for i in await self._cmd("ZRANGE", self.keys.recurring_index, 0, -1)]
        if not ids:
            return []
        client = await self._c()
        with translate("hgetall"):
            async with client.pipeline(transaction=False) as pipe:
                for template_id in ids:
                    pipe.hgetall(self.keys.recurring_key(template_id))
                replies = await pipe.execute()
        return [t for t, _ in _readable(h for h in map(hash_reply, replies) if h)]

    async def _remove_recurring(self, template_id: str) -> bool:
        return bool(await self._script("recurring_update", "", "remove", template_id))

    async def _set_recurring_paused(self, template_id: str, paused: bool) -> bool:
        op = "pause" if paused else "resume"
        return bool(await self._script("recurring_update", "", op, template_id))

    async def _claim_due_recurring(
        self, server_id: str, limit: int, claim_seconds: float, now: datetime | None
    ) -> list[RecurringClaim]:
        if limit <= 0:
            return []
        reply = await self._script(
            "recurring_claim", opt_us(now), server_id, micros(claim_seconds), limit, tokens(limit)
        )
        at = from_us(reply[0])
        hashes = [as_hash(reply[i + 1]) for i in range(1, len(reply), 2)]
        claims = [RecurringClaim(t, text(reply[1 + 2 * n]), at) for t, n in _readable(hashes)]
        return sorted(claims, key=lambda c: c.template.id)

    async def _park_recurring(
        self,
        claim: RecurringClaim,
        next_run_at: datetime | None,
        last_run_at: datetime | None,
        jobs: list[Job],
        payloads: list[bytes],
    ) -> bool:
        args: list[Arg] = [
            to_us(claim.now),
            claim.template.id,
            claim.token,
            opt_us(next_run_at),
            opt_us(last_run_at),
            len(jobs),
        ]
        for job, payload in zip(jobs, payloads, strict=True):
            args += encode_new_job(job, payload)
        ok, generation = await self._script("recurring_park", *args)
        self._observe(generation)
        return bool(ok)

    # ------------------------------------------------------------------ servers
    async def _heartbeat_server(self, info: ServerInfo) -> None:
        await self._script(
            "servers", "", "beat", info.id, encode_server(info), opt_us(info.started_at)
        )

    async def _remove_server(self, server_id: str) -> None:
        await self._script("servers", "", "remove", server_id)

    async def _list_servers(self) -> list[ServerInfo]:
        client = await self._c()
        k = self.keys
        with translate("list servers"):
            async with client.pipeline(transaction=True) as pipe:
                pipe.hgetall(k.servers)
                pipe.zrange(k.server_beats, 0, -1, withscores=True)
                pipe.hgetall(k.server_starts)
                infos, beats, starts = await pipe.execute()
        beat = {text(m): float(s) for m, s in beats}
        starts = hash_reply(starts)
        return [
            decode_server(text(i), raw, starts.get(i), beat.get(text(i)))
            for i, raw in sorted(hash_reply(infos).items())
        ]

    async def _prune_servers(self, dead_after: float, now: datetime | None) -> int:
        return int(await self._script("servers", opt_us(now), "prune", micros(dead_after)))
