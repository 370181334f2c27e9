"""BackgroundJobServer: claims jobs in batches, runs them in slots, records
outcomes in batches, renews leases, and stops gracefully."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from types import TracebackType
from typing import Any, Self

from .. import faults, recurring
from ..config import ServerConfig
from ..errors import StorageError
from ..job import JobState
from ..states import UNKNOWN_METHOD
from ..storage.base import Storage
from ..storage.requests import (
    ClaimRequest,
    HeartbeatReply,
    Lease,
    MisfirePolicy,
    Outcome,
    OutcomeKind,
    RecurringTemplate,
)
from ..worker import WorkerContext, WorkerRegistry
from .leases import Held, LeaseKeeper
from .pool import DaemonThreadPool
from .processor import JobProcessor
from .recurring import RecurringJobPoller
from .service import PeriodicService
from .services import CleanupWorker, Scheduler, ServerRegistryService

log = logging.getLogger("qml.server")


@dataclass(eq=False)
class Slot:
    """One claimed job on this server, from claim until its outcome is stored."""

    lease: Lease
    ctx: WorkerContext
    deadline: float  # local monotonic time the lease is known to hold until
    task: asyncio.Task[None] | None = None
    lost: bool = False
    finishing: bool = False  # its outcome is being written
    started: float = field(default_factory=time.monotonic)

    @property
    def job_id(self) -> str:
        return self.lease.job.id

    @property
    def token(self) -> str:
        return self.lease.token

    def renewal_requested(self) -> bool:
        return self.ctx.heartbeat_requested.is_set()

    def clear_renewal_request(self) -> None:
        self.ctx.heartbeat_requested.clear()


class BackgroundJobServer:
    """Runs jobs from ``storage`` with the workers in ``registry``.

    ``await server.start()`` returns once the server is running; ``await
    server.stop()`` stops claiming at once, lets running jobs finish within
    ``shutdown_timeout`` and releases the rest back to Enqueued without
    counting an attempt. A second ``stop()`` releases at once.
    """

    def __init__(
        self,
        config: ServerConfig,
        storage: Storage,
        registry: WorkerRegistry,
        *,
        burst: bool = False,
    ) -> None:
        self.config = config
        self.storage = storage
        self.registry = registry
        self.burst = burst
        self.pool = DaemonThreadPool(config.worker_count)
        self.processor = JobProcessor(config, registry, self.pool)
        self._held: dict[str, Slot] = {}
        self._running: set[Slot] = set()
        self._pending: list[tuple[Outcome, Slot]] = []
        self._carry = storage.combines_finish_and_claim
        self._outcome_ready = asyncio.Event()
        self._slot_freed = asyncio.Event()
        # Suspects (jobs one crash away from quarantine) run one at a time here,
        # beside jobs that are not: see ClaimRequest.max_suspects.
        self._suspect_crashes = max(1, config.max_crashes - 1)
        self._suspects = 0
        # Ends a wait for work: set when stop begins and when a suspect ends (a
        # suspect passed over while one ran here is claimable once that one ends).
        self._wait_over = asyncio.Event()
        # Jobs given back because no worker here knows their method, and jobs run,
        # since the last claim: a server that only finds jobs it cannot run waits a
        # little before claiming again, so servers that know them get them (a
        # rolling deploy) instead of losing every race to one that gives them back.
        self._unknown_given_back = 0
        self._known_run = 0
        self._unknown_pause = 0.0
        self._stop_event = asyncio.Event()
        self._force = asyncio.Event()
        self._stopped = asyncio.Event()
        self._start_done = asyncio.Event()
        self._stopping = False
        self._closing = False
        self._started = False
        self._tasks: list[asyncio.Task[None]] = []
        self._services: list[PeriodicService] = []
        self.processed = {k: 0 for k in OutcomeKind}
        self.leases_lost = 0
        self._burst_stop: asyncio.Task[None] | None = None
        self._keeper: LeaseKeeper | None = None

    # ------------------------------------------------------------------ lifecycle
    @property
    def name(self) -> str:
        return self.config.server_name

    @property
    def is_running(self) -> bool:
        return self._started and not self._stopped.is_set()

    @property
    def running_job_ids(self) -> list[str]:
        return [s.job_id for s in self._running]

    async def start(self) -> None:
        """Start claiming and running jobs; returns once running."""
        if self._started:
            return
        self._started = True
        try:
            await self.storage.open()
        except BaseException:
            self._started = False  # nothing runs: stop() has nothing to do
            self._start_done.set()
            raise
        cfg = self.config
        if cfg.enable_scheduler:
            self._services.append(Scheduler(self.storage, cfg))
        if cfg.enable_recurring:
            self._services.append(RecurringJobPoller(self.storage, cfg))
        if cfg.enable_cleanup:
            self._services.append(CleanupWorker(self.storage, cfg))
        self._services.append(
            ServerRegistryService(self.storage, cfg, lambda: self.running_job_ids)
        )
        for svc in self._services:
            svc.start()
        self._tasks = [
            asyncio.create_task(self._fetch_loop(), name="qml-fetch"),
            asyncio.create_task(self._flush_loop(), name="qml-flush"),
            asyncio.create_task(self._expiry_loop(), name="qml-lease-expiry"),
        ]
        sibling = self.storage.sibling()
        if sibling is None:  # renew on this loop
            self._tasks.append(asyncio.create_task(self._heartbeat_loop(), name="qml-heartbeat"))
        else:
            self._keeper = LeaseKeeper(
                sibling,
                owned=sibling is not self.storage,
                interval=cfg.effective_heartbeat_interval,
                lease_seconds=cfg.lease_seconds,
                snapshot=self._renewable,
                apply=self._apply_renewal,
                loop=asyncio.get_running_loop(),
                name=f"qml-leases-{self.name}",
            )
            self._keeper.start()
        self._start_done.set()
        log.info(
            "server %s started: %d slots, queues %s, storage %s",
            self.name,
            cfg.worker_count,
            ",".join(cfg.queues),
            self.storage.backend_name,
            extra={"action": "server_start"},
        )

    async def wait_stopped(self) -> None:
        """Wait until the server has stopped (by :meth:`stop` or burst mode)."""
        await self._stopped.wait()

    async def run(self) -> None:
        """Start and wait until stopped."""
        await self.start()
        await self.wait_stopped()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def stop(self, *, force: bool = False) -> None:
        """Stop gracefully (see the class docstring); ``force`` releases at once."""
        if force:
            self._force.set()
        if self._stopping:
            self._force.set()
            await self._stopped.wait()
            return
        self._stopping = True
        self._stop_event.set()
        self._wait_over.set()
        if self._started and not self._start_done.is_set():
            await self._start_done.wait()  # stop() raced a start() still opening storage
        if not self._started or not self._tasks:
            self._stopped.set()
            return
        self._slot_freed.set()  # wakes a fetch loop waiting for a free slot
        await self._stop_fetching(self._tasks[0])
        running = [s.task for s in self._running if s.task is not None]
        if running and not self._force.is_set():
            log.info(
                "waiting up to %.0f s for %d running job(s)",
                self.config.shutdown_timeout,
                len(running),
                extra={"action": "shutdown_wait"},
            )
            all_done = asyncio.create_task(asyncio.wait(running))
            force_wait = asyncio.create_task(self._force.wait())
            await asyncio.wait(
                [all_done, force_wait],
                timeout=self.config.shutdown_timeout,
                return_when=asyncio.FIRST_COMPLETED,
            )
            all_done.cancel()  # cancels only the waiting, not the jobs
            force_wait.cancel()
        await self._release_remaining()
        await self._stop_flushing(self._tasks[1])
        await self._drain_outcomes()
        for task in self._tasks[2:]:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._keeper is not None:
            await self._keeper.stop()
        await asyncio.gather(*(svc.stop() for svc in self._services), return_exceptions=True)
        with contextlib.suppress(StorageError):
            await self.storage.remove_server(self.name)
        self.pool.shutdown()
        self._stopped.set()
        log.info("server %s stopped", self.name, extra={"action": "server_stop"})

    async def _stop_fetching(self, fetch: asyncio.Task[None]) -> None:
        """Let the fetch loop end by itself: cancelling it while a claim is on the
        wire would drop jobs the storage already gave this server. Cancel only if
        the storage does not answer in time."""
        done, _ = await asyncio.wait({fetch}, timeout=max(1.0, self.config.shutdown_timeout))
        if not done:
            fetch.cancel()
        await asyncio.gather(fetch, return_exceptions=True)

    async def _stop_flushing(self, flush: asyncio.Task[None]) -> None:
        """Let the flush loop record what is pending (and what is on the wire), then end."""
        self._closing = True
        self._outcome_ready.set()
        await asyncio.gather(flush, return_exceptions=True)

    async def _release_unstarted(self, leases: list[Lease]) -> None:
        """Give back jobs whose claim was answered after stop began, without
        counting an attempt."""
        try:
            await self.storage.finish(
                [Outcome.release(lease, reason="shutdown") for lease in leases]
            )
        except StorageError as exc:
            log.warning(
                "could not release %d job(s) claimed during shutdown (%s); they return"
                " to the queue when their lease expires",
                len(leases),
                exc,
                extra={"action": "shutdown_release_error"},
            )

    async def _release_remaining(self) -> None:
        slots = [s for s in self._running if s.task is not None and not s.task.done()]
        for slot in slots:
            slot.ctx.cancelled.set("shutdown")
            assert slot.task is not None
            slot.task.cancel()
        if slots:
            await asyncio.gather(*(s.task for s in slots if s.task), return_exceptions=True)
            log.warning(
                "released %d job(s) still running at shutdown",
                len(slots),
                extra={"action": "shutdown_release"},
            )

    # ------------------------------------------------------------------ recurring
    async def schedule_recurring(
        self,
        template_id: str,
        cron: str,
        method: str,
        args: Any = None,
        queue: str = "default",
        *,
        timezone: str = "UTC",
        misfire: MisfirePolicy | str = MisfirePolicy.FIRE_ONCE,
        max_catchup: int = 100,
        priority: int = 0,
        max_retries: int | None = None,
    ) -> RecurringTemplate:
        """Create or update a recurring template (6-field cron with seconds first, or
        5-field). Shared by every server on this storage; survives restarts."""
        return await recurring.schedule_recurring(
            self.storage,
            template_id,
            cron,
            method,
            args,
            queue,
            timezone=timezone,
            misfire=misfire,
            max_catchup=max_catchup,
            priority=priority,
            max_retries=max_retries,
        )

    async def remove_recurring(self, template_id: str) -> bool:
        """Remove a template; False if there was none."""
        return await self.storage.remove_recurring(template_id)

    async def pause_recurring(self, template_id: str) -> RecurringTemplate:
        return await recurring.set_paused(self.storage, template_id, True)

    async def resume_recurring(self, template_id: str) -> RecurringTemplate:
        return await recurring.set_paused(self.storage, template_id, False)

    async def trigger_recurring(self, template_id: str) -> str:
        """Enqueue one run of the template now; returns the job id."""
        return await recurring.trigger_recurring(self.storage, template_id)

    async def list_recurring(self) -> list[RecurringTemplate]:
        return await self.storage.list_recurring()

    # ------------------------------------------------------------------ fetching
    async def _fetch_loop(self) -> None:
        cfg = self.config
        backoff = 0.1
        while not self._stopping:
            free = cfg.worker_count - len(self._running)
            if free <= 0:
                await self._slot_freed.wait()
                self._slot_freed.clear()
                continue
            want = min(free, cfg.fetch_batch_size)
            if self._unknown_given_back and not self._known_run:
                self._unknown_pause = min(1.0, max(0.1, self._unknown_pause * 2))
                await self._sleep(self._unknown_pause)
                if self._stop_event.is_set():
                    return
            elif self._known_run:
                self._unknown_pause = 0.0
            self._unknown_given_back = self._known_run = 0
            sent = time.monotonic()  # the leases cannot end before sent + lease_seconds
            self._rearm_wait()
            request = ClaimRequest(
                cfg.server_name,
                cfg.queues,
                want,
                cfg.lease_seconds,
                max_suspects=0 if self._suspects else 1,
                suspect_crashes=self._suspect_crashes,
            )
            # Outcomes ready now ride on this claim where the storage does both
            # in one go; the flush loop records the others.
            carried = self._take_outcomes() if self._carry else []
            try:
                if carried:
                    faults.point("job.before_ack")
                    results, leases = await self.storage.finish_and_claim(
                        [o for o, _ in carried], request
                    )
                    faults.point("job.after_ack")
                    self._recorded(carried, results)
                else:
                    leases = await self.storage.claim(request)
                backoff = 0.1
                if leases:
                    faults.point("job.claimed")
            except Exception as exc:
                if carried:  # recorded or not: the flush loop tries again (tokens guard it)
                    self._pending[:0] = carried
                    self._outcome_ready.set()
                unreachable = isinstance(exc, StorageError)
                log.warning(
                    "claim failed (%s); retrying in %.1f s",
                    exc,
                    backoff,
                    exc_info=not unreachable,  # a bug: show where
                    extra={"action": "claim_error"},
                )
                await self._sleep(backoff)
                # Storage trouble: look again every second at most, to resume soon
                # after it is back; a bug: back off further.
                backoff = min(1.0 if unreachable else 5.0, backoff * 2)
                continue
            if self._stop_event.is_set():  # stop began while the claim was on the wire
                if leases:
                    await self._release_unstarted(leases)
                return
            for lease in leases:
                self._start_slot(lease, sent)
            if len(leases) < want:
                if self.burst and not leases and await self._burst_finished():
                    self._burst_stop = asyncio.create_task(self.stop())
                    return
                rest = want - len(leases)
                while True:
                    # the rest of the slots, with the suspects bound of what now runs
                    suspects = 0 if self._suspects else 1
                    await self._wait_for_work(replace(request, limit=rest, max_suspects=suspects))
                    if not self.storage.hands_off_claims or self.burst:
                        break
                    # Where the storage claims before it parks (hands_off_claims), a
                    # claim of our own would only repeat it: wait again at once, for
                    # the slots still free, after a hand-off, a wake-up or a timeout.
                    free = cfg.worker_count - len(self._running)
                    if free <= 0 or self._stop_event.is_set() or self._unknown_given_back:
                        break
                    self._rearm_wait()
                    rest = min(free, cfg.fetch_batch_size)

    async def _burst_finished(self) -> bool:
        if self._running or self._pending:
            return False
        try:
            return await self._nothing_ready()
        except Exception as exc:  # the fetch loop must not die: look again later
            log.warning(
                "burst check failed (%s); retrying", exc, extra={"action": "burst_check_error"}
            )
            return False

    async def _nothing_ready(self) -> bool:
        paused = await self.storage.paused_queues()
        for queue in self.config.queues:
            if queue not in paused and await self.storage.count(JobState.ENQUEUED, queue):
                return False
        return True

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop_event.wait(), seconds)

    def _rearm_wait(self) -> None:
        """A claim is about to be made: what ended the last wait is seen by it."""
        if not self._stop_event.is_set():
            self._wait_over.clear()

    async def _wait_for_work(self, request: ClaimRequest) -> None:
        """Wait for work after a short claim (``request`` asks for the rest of the
        slots); start what the storage hands over meanwhile
        (:meth:`Storage.wait_for_claim`)."""
        if self.burst and self._running:
            await self._slot_freed.wait()
            self._slot_freed.clear()
            return
        sent = time.monotonic()  # handed-over leases began after this
        try:
            leases = await self.storage.wait_for_claim(
                request, self.config.polling_interval, self._wait_over
            )
        except Exception as exc:
            # No wake-up signal (storage trouble): fall back to polling, not spinning.
            log.warning(
                "waiting for work failed (%s); polling",
                exc,
                extra={"action": "wait_error"},
            )
            await self._sleep(self.config.polling_interval)
            return
        if not leases:
            return
        faults.point("job.claimed")
        if self._stop_event.is_set():
            await self._release_unstarted(leases)
            return
        for lease in leases:
            self._start_slot(lease, sent)

    # ------------------------------------------------------------------ running
    def _start_slot(self, lease: Lease, claimed: float) -> None:
        job = lease.job
        ctx = WorkerContext(job, server_id=self.name)
        slot = Slot(lease, ctx, claimed + self.config.lease_seconds)
        self._held[job.id] = slot
        self._running.add(slot)
        if job.crashes >= self._suspect_crashes:
            self._suspects += 1
        slot.task = asyncio.get_running_loop().create_task(
            self._run_slot(slot), name=f"qml-job-{job.id}"
        )

    async def _run_slot(self, slot: Slot) -> None:
        outcome: Outcome | None
        try:
            outcome = await self.processor.process(slot.lease, slot.ctx)
        except asyncio.CancelledError:
            outcome = None if slot.lost else Outcome.release(slot.lease, reason="shutdown")
        except Exception as exc:  # processor bugs must not kill the server either
            log.exception("internal error while processing job %s", slot.job_id)
            outcome = self.processor._fail(slot.lease, exc, reason="internal_error")
        finally:
            self._running.discard(slot)
            self._slot_freed.set()
            if slot.lease.job.crashes >= self._suspect_crashes:
                self._suspects -= 1
                self._wait_over.set()
        if slot.lost or outcome is None:
            self._held.pop(slot.job_id, None)
            return
        if outcome.reason == UNKNOWN_METHOD:
            self._unknown_given_back += 1
        else:
            self._known_run += 1
        self._log_outcome(slot, outcome)
        self._pending.append((outcome, slot))
        self._outcome_ready.set()

    def _log_outcome(self, slot: Slot, outcome: Outcome) -> None:
        if not log.isEnabledFor(logging.INFO):
            return
        job = slot.lease.job
        run = time.monotonic() - slot.started
        wait = (
            (job.started_at - (job.enqueued_at or job.created_at)).total_seconds()
            if job.started_at
            else 0.0
        )
        mark = {"succeed": "✓", "fail": "✗", "retry": "↻", "release": "↩"}[outcome.kind.value]
        extra = ""
        if outcome.error is not None:
            extra = f"  {outcome.error.type}: {outcome.error.message[:120]}"
        if outcome.kind in (OutcomeKind.RETRY, OutcomeKind.RELEASE):
            extra += f"  → again in {outcome.delay:.1f}s"
        log.info(
            "%s %s %s id=%s attempt %d  wait %.2fs  run %.2fs%s",
            job.queue,
            mark,
            job.method,
            job.id,
            job.attempts,
            wait,
            run,
            extra,
            extra={
                "action": "job_done",
                "job_id": job.id,
                "method": job.method,
                "queue": job.queue,
                "attempt": job.attempts,
                "outcome": outcome.kind.value,
            },
        )

    # ------------------------------------------------------------------ outcomes
    async def _flush_loop(self) -> None:
        cfg = self.config
        while True:
            await self._outcome_ready.wait()
            if not self._closing and len(self._pending) < cfg.worker_count and cfg.flush_interval:
                await asyncio.sleep(cfg.flush_interval)
            self._outcome_ready.clear()
            batch = self._take_outcomes()
            if batch:
                try:
                    await self._flush(batch)
                except Exception:
                    # A storage bug must not stop recording; these jobs are
                    # recovered when their leases expire.
                    log.exception("recording %d outcome(s) failed", len(batch))
                    for _, slot in batch:
                        self._held.pop(slot.job_id, None)
            if self._closing and not self._pending:
                return

    async def _drain_outcomes(self) -> None:
        batch = self._take_outcomes()
        if batch:
            await self._flush(batch)

    def _take_outcomes(self) -> list[tuple[Outcome, Slot]]:
        """The outcomes waiting to be recorded, marked as being written."""
        batch, self._pending = self._pending, []
        for _, slot in batch:
            slot.finishing = True
        return batch

    async def _flush(self, batch: list[tuple[Outcome, Slot]]) -> None:
        """Record outcomes; retried while their leases may still hold."""
        delay = 0.05
        while batch:
            try:
                faults.point("job.before_ack")
                results = await self.storage.finish([o for o, _ in batch])
                faults.point("job.after_ack")
                break
            except StorageError as exc:
                now = time.monotonic()
                expired = [(o, s) for o, s in batch if s.deadline <= now]
                batch = [(o, s) for o, s in batch if s.deadline > now]
                for _, slot in expired:
                    self._held.pop(slot.job_id, None)
                    log.error(
                        "could not record the outcome of job %s before its lease ended;"
                        " it will be recovered and run again",
                        slot.job_id,
                    )
                if not batch:
                    return
                log.warning(
                    "recording %d outcome(s) failed (%s); retrying",
                    len(batch),
                    exc,
                    extra={"action": "finish_error"},
                )
                await asyncio.sleep(delay)
                delay = min(2.0, delay * 2)
        else:
            return
        self._recorded(batch, results)

    def _recorded(self, batch: list[tuple[Outcome, Slot]], results: list[bool]) -> None:
        """Account for outcomes the storage answered (False: the lease was lost)."""
        for (outcome, slot), ok in zip(batch, results, strict=True):
            self._held.pop(slot.job_id, None)
            if ok:
                self.processed[outcome.kind] += 1
            elif not slot.lost:  # a loss the heartbeat found is counted already
                self.leases_lost += 1
                log.warning(
                    "job %s: lease lost before its outcome was recorded; the write was refused",
                    slot.job_id,
                    extra={"action": "lease_lost", "job_id": slot.job_id},
                )

    # ------------------------------------------------------------------ heartbeats
    # Leases are renewed by a LeaseKeeper on a thread of its own (see leases.py),
    # or on this loop when the storage offers no sibling for another loop.
    def _renewable(self) -> list[Slot]:
        """The held jobs to renew (called from the keeper's thread: a copy of the
        dict is taken in one step)."""
        return [s for s in self._held.copy().values() if not s.lost]

    async def _heartbeat_loop(self) -> None:
        interval = self.config.effective_heartbeat_interval
        last = time.monotonic()
        while True:
            await asyncio.sleep(min(interval, 0.5))
            now = time.monotonic()
            requested = any(s.renewal_requested() for s in self._held.values())
            if now - last < interval and not requested:
                continue
            last = now
            try:
                await self.renew_leases()
            except Exception:
                # A storage bug must not end renewals: every held job would be
                # recovered and run twice.
                log.exception("lease renewal failed", extra={"action": "heartbeat_error"})

    async def renew_leases(self) -> None:
        """Extend every held lease in one round trip now; act on lost ones and
        cancellations."""
        slots = self._renewable()
        if not slots:
            return
        for s in slots:
            s.clear_renewal_request()
        sent = time.monotonic()
        try:
            replies = await self.storage.extend_leases(
                [(s.job_id, s.lease.token) for s in slots], self.config.lease_seconds
            )
        except StorageError as exc:
            log.warning(
                "lease renewal failed (%s); retrying", exc, extra={"action": "heartbeat_error"}
            )
            return
        self._apply_renewal(slots, replies, sent)

    def _apply_renewal(
        self, held: Sequence[Held], replies: list[HeartbeatReply], sent: float
    ) -> None:
        """Act on renewal replies (on the server's loop)."""
        for slot, reply in zip(held, replies, strict=True):
            assert isinstance(slot, Slot)
            if self._held.get(slot.job_id) is not slot:
                continue  # its outcome was recorded while the renewal was on the wire
            if not reply.held:
                if slot.finishing:
                    continue  # our own outcome may have ended the lease: the write decides
                self._lose(slot)
            else:
                slot.deadline = sent + self.config.lease_seconds
                if reply.cancel_requested and not slot.ctx.cancelled.is_set():
                    slot.ctx.cancelled.set("cancelled")
                    asyncio.get_running_loop().call_later(
                        self.config.cancel_grace, self._hard_cancel, slot
                    )

    async def _expiry_loop(self) -> None:
        """Stop running jobs whose lease may have ended unrenewed (the storage
        could not be reached): past that moment another server may run them.

        A slot's deadline counts from when its claim or last successful
        renewal was *sent*, so it falls before the storage's own expiry; the
        job is stopped a little earlier still (5 % of the lease, at most 1 s).
        """
        margin = min(1.0, self.config.lease_seconds * 0.05)
        tick = min(0.25, self.config.effective_heartbeat_interval / 2)
        while True:
            await asyncio.sleep(tick)
            now = time.monotonic()
            for slot in [s for s in self._running if not s.lost and s.deadline - margin <= now]:
                self._lose(slot, expired=True)

    def _lose(self, slot: Slot, *, expired: bool = False) -> None:
        slot.lost = True
        self.leases_lost += 1
        slot.ctx.cancelled.set("lease_expired" if expired else "lease_lost")
        if expired:
            log.warning(
                "job %s: lease not renewed in time (process paused or storage unreachable);"
                " stopping it, another server may run it",
                slot.job_id,
                extra={"action": "lease_expired", "job_id": slot.job_id},
            )
        else:
            log.warning(
                "job %s: lease lost (another server may run it); stopping it",
                slot.job_id,
                extra={"action": "lease_lost", "job_id": slot.job_id},
            )
        if slot.task is not None and not slot.task.done():
            slot.task.cancel()
        self._held.pop(slot.job_id, None)

    def _hard_cancel(self, slot: Slot) -> None:
        if slot.task is not None and not slot.task.done():
            slot.task.cancel()
