"""Random operation sequences against a backend and a small reference model.

After every step: each job is in exactly the state the model says (with its
attempts, crashes, lease token and cancel flag), counts match, and every stale
fencing token is refused.

Time is a model clock started at the real now and moved only by explicit
``now`` arguments. Every duration the model schedules ends on a half second
while the clock moves in whole seconds, so no deadline ever falls exactly on
``now`` (a backend keeping epoch floats may round such ties either way).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from qml.errors import InvalidTransitionError, LeaseLostError
from qml.job import Job, JobState
from qml.states import DELETABLE, REQUEUEABLE
from qml.storage.base import Storage
from qml.storage.requests import ClaimRequest, JobQuery, Lease, Outcome, RecoverRequest

from .support import ERROR, E, StorageMaker, same_time, sec, utcnow

T = TypeVar("T")

P, S, R = JobState.PROCESSING, JobState.SCHEDULED, JobState.AWAITING_RETRY
OK, F, D = JobState.SUCCEEDED, JobState.FAILED, JobState.DELETED
LEASE = 30.5
MAX_CRASHES = 3
FAILED_TTL = 50.5
KINDS = ("succeed", "fail", "retry", "release", "release_later")


@dataclass
class ModelJob:
    state: JobState
    priority: int
    attempts: int = 0
    crashes: int = 0
    lease: Lease | None = None
    lease_expires: datetime | None = None
    run_at: datetime | None = None
    expires_at: datetime | None = None  # None: does not expire within the test
    cancel: bool = False


class LoopThread:
    """One event loop in a helper thread, for driving async storage from sync code."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="qml-stateful", daemon=True
        )
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def close(self) -> None:
        self.run(self.loop.shutdown_asyncgens())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()


class FreshStores:
    """Hands each example a freshly opened, isolated store, opening the next
    ones ahead of time so examples do not wait for a schema install."""

    def __init__(self, make_storage: StorageMaker, ahead: int = 2) -> None:
        self.make_storage = make_storage
        self.ahead = ahead
        self._opening: list[asyncio.Task[Storage]] = []
        self._closing: list[asyncio.Task[None]] = []

    async def take(self) -> Storage:
        while len(self._opening) <= self.ahead:
            self._opening.append(asyncio.ensure_future(self.make_storage(fresh=True)))
        return await self._opening.pop(0)

    async def give_back(self, storage: Storage) -> None:
        # closed in the background; the store itself is dropped by the fixture at the end
        self._closing.append(asyncio.ensure_future(self.make_storage.dispose(storage, drop=False)))

    async def close(self) -> None:
        opened = await asyncio.gather(*self._opening, return_exceptions=True)
        for storage in opened:
            if isinstance(storage, Storage):
                await self.make_storage.dispose(storage, drop=False)
        for task in self._closing:
            await task
        self._opening, self._closing = [], []


class StorageMachine(RuleBasedStateMachine):
    def __init__(self, runner: LoopThread, stores: FreshStores) -> None:
        super().__init__()
        self.runner = runner
        self.stores = stores
        self.storage: Storage = runner.run(stores.take())
        self.now = utcnow()
        self.jobs: dict[str, ModelJob] = {}
        self.stale: list[Lease] = []

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.runner.run(coro)

    def teardown(self) -> None:
        self.run(self.stores.give_back(self.storage))

    # ------------------------------------------------------------------ helpers
    def ids_in(self, *states: JobState) -> list[str]:
        return sorted(k for k, j in self.jobs.items() if j.state in states)

    def pick(self, index: int, *states: JobState) -> str:
        ids = self.ids_in(*states) if states else sorted(self.jobs)
        return ids[index % len(ids)]

    def drop_lease(self, job: ModelJob) -> None:
        assert job.lease is not None
        self.stale.append(job.lease)
        job.lease, job.lease_expires, job.cancel = None, None, False

    def has(self, *states: JobState) -> bool:
        return any(j.state in states for j in self.jobs.values())

    # ------------------------------------------------------------------ rules
    @initialize(n=st.integers(1, 5), priority=st.integers(0, 2))
    def start(self, n: int, priority: int) -> None:
        self.enqueue(n, False, priority)

    @rule(n=st.integers(1, 3), scheduled=st.booleans(), priority=st.integers(0, 2))
    def enqueue(self, n: int, scheduled: bool, priority: int) -> None:
        run_at = utcnow() + timedelta(hours=1) if scheduled else None
        jobs = [Job("model.job", {"k": k}, priority=priority, run_at=run_at) for k in range(n)]
        assert self.run(self.storage.enqueue_many(jobs)) == [j.id for j in jobs]
        for job in jobs:
            self.jobs[job.id] = ModelJob(S if scheduled else E, priority, run_at=run_at)

    @rule(limit=st.integers(1, 4), seconds=st.integers(0, 5))
    def claim(self, limit: int, seconds: int) -> None:
        self.now += sec(seconds)
        ready = self.ids_in(E)
        leases = self.run(
            self.storage.claim(ClaimRequest("srv", ["default"], limit, LEASE, now=self.now))
        )
        assert len(leases) == min(limit, len(ready))
        got = [lease.job_id for lease in leases]
        assert len(set(got)) == len(got) and set(got) <= set(ready)
        left = [self.jobs[i].priority for i in ready if i not in got]
        if got and left:
            assert min(self.jobs[i].priority for i in got) >= max(left), "priority order"
        for lease in leases:
            job = self.jobs[lease.job_id]
            job.state, job.attempts, job.lease = P, job.attempts + 1, lease
            job.lease_expires, job.cancel = self.now + sec(LEASE), False

    @precondition(lambda self: self.has(P))
    @rule(data=st.data())
    def finish(self, data: st.DataObject) -> None:
        held = self.ids_in(P)
        chosen = data.draw(st.lists(st.sampled_from(held), min_size=1, max_size=4, unique=True))
        kinds = [data.draw(st.sampled_from(KINDS)) for _ in chosen]
        ttl = data.draw(st.sampled_from([0.5, 20.5, 300.5]))
        stale: Lease | None = None
        with_stale: bool = data.draw(st.booleans())
        if self.stale and with_stale:
            stale = data.draw(st.sampled_from(self.stale))
        outcomes = []
        for job_id, kind in zip(chosen, kinds, strict=True):
            lease = self.jobs[job_id].lease
            assert lease is not None
            if kind == "succeed":
                outcomes.append(Outcome.succeed(lease, {"r": job_id[-4:]}, ttl=ttl))
            elif kind == "fail":
                outcomes.append(Outcome.fail(lease, ERROR, ttl=ttl))
            elif kind == "retry":
                outcomes.append(Outcome.retry(lease, ERROR, delay=ttl))
            else:
                delay = ttl if kind == "release_later" else 0.0
                outcomes.append(Outcome.release(lease, delay=delay))
        expected = [True] * len(outcomes)
        if stale is not None:
            outcomes.insert(1, Outcome.succeed(stale, ttl=ttl))
            expected.insert(1, False)
        assert self.run(self.storage.finish(outcomes, now=self.now)) == expected
        for job_id, kind in zip(chosen, kinds, strict=True):
            job = self.jobs[job_id]
            self.drop_lease(job)
            if kind in ("succeed", "fail"):
                job.state, job.expires_at = (OK if kind == "succeed" else F), self.now + sec(ttl)
            elif kind == "retry":
                job.state, job.run_at = R, self.now + sec(ttl)
            else:
                job.attempts -= 1
                if kind == "release_later":
                    job.state, job.run_at = S, self.now + sec(ttl)
                else:
                    job.state = E

    @precondition(lambda self: bool(self.stale))
    @rule(index=st.integers(0, 1000))
    def stale_writes_are_refused(self, index: int) -> None:
        lease = self.stale[index % len(self.stale)]
        with pytest.raises(LeaseLostError):
            self.run(self.storage.complete(lease, "late"))
        with pytest.raises(LeaseLostError):
            self.run(self.storage.release(lease))

    @precondition(lambda self: self.has(P))
    @rule(index=st.integers(0, 1000))
    def extend(self, index: int) -> None:
        job = self.jobs[self.pick(index, P)]
        assert job.lease is not None
        (reply,) = self.run(
            self.storage.extend_leases([(job.lease.job_id, job.lease.token)], LEASE, now=self.now)
        )
        assert reply.held is True
        assert reply.cancel_requested is job.cancel
        job.lease_expires = self.now + sec(LEASE)

    @rule(seconds=st.sampled_from([1, 10, 31, 40]), backoff=st.sampled_from([0.0, 0.25, 10.25]))
    def expire_and_recover(self, seconds: int, backoff: float) -> None:
        self.now += sec(seconds)
        request = RecoverRequest(
            now=self.now, max_crashes=MAX_CRASHES, crash_backoff=backoff, failed_ttl=FAILED_TTL
        )
        got = self.run(self.storage.recover_expired(request))
        expected = {
            k
            for k, j in self.jobs.items()
            if j.state is P and j.lease_expires is not None and j.lease_expires <= self.now
        }
        assert len(got) == len(set(got)) and set(got) == expected
        for job_id in expected:
            job = self.jobs[job_id]
            self.drop_lease(job)
            job.crashes += 1
            if job.crashes >= MAX_CRASHES:
                job.state, job.expires_at = F, self.now + sec(FAILED_TTL)
            elif job.crashes > 1 and backoff > 0:  # a first crash goes straight back
                job.state, job.run_at = R, self.now + sec(backoff * 2 ** (job.crashes - 2))
            else:
                job.state = E

    @rule(seconds=st.sampled_from([0, 1, 11, 30]))
    def activate(self, seconds: int) -> None:
        self.now += sec(seconds)
        due = [
            k
            for k, j in self.jobs.items()
            if j.state in (S, R) and j.run_at is not None and j.run_at <= self.now
        ]
        assert self.run(self.storage.activate_due(now=self.now)) == len(due)
        for job_id in due:
            self.jobs[job_id].state = E

    @precondition(lambda self: bool(self.jobs))
    @rule(action=st.sampled_from(["delete", "requeue", "cancel"]), index=st.integers(0, 1000))
    def operator(self, action: str, index: int) -> None:
        """What a person does from the dashboard: delete, requeue or cancel a job."""
        job_id = self.pick(index)
        job = self.jobs[job_id]
        if action == "delete" and job.state in DELETABLE:
            assert self.run(self.storage.delete(job_id)).state is D
            job.state, job.expires_at = D, None  # deleted_ttl: days, past the model's horizon
        elif action == "requeue" and job.state in REQUEUEABLE:
            assert self.run(self.storage.requeue(job_id)).state is E
            job.state, job.attempts, job.crashes = E, 0, 0
            job.run_at = job.expires_at = None
        elif action == "cancel" and job.state is P:
            assert self.run(self.storage.request_cancel(job_id)).cancel_requested is True
            job.cancel = True
        elif action == "cancel" and job.state in (E, S, R):
            assert self.run(self.storage.request_cancel(job_id)).state is D
            job.state, job.expires_at = D, None
        else:
            call = {
                "delete": self.storage.delete,
                "requeue": self.storage.requeue,
                "cancel": self.storage.request_cancel,
            }[action]
            with pytest.raises(InvalidTransitionError):
                self.run(call(job_id))

    @rule(seconds=st.sampled_from([0, 1, 21, 300]), limit=st.sampled_from([1, 2, 1000]))
    def delete_expired(self, seconds: int, limit: int) -> None:
        self.now += sec(seconds)
        doomed = [
            k
            for k, j in self.jobs.items()
            if j.state in (OK, F, D) and j.expires_at is not None and j.expires_at <= self.now
        ]
        n = self.run(self.storage.delete_expired(limit=limit, now=self.now))
        assert n == min(limit, len(doomed))
        gone = [k for k in doomed if self.run(self.storage.get(k)) is None]
        assert len(gone) == n
        for job_id in gone:
            del self.jobs[job_id]

    # ------------------------------------------------------------------ invariants
    @invariant()
    def storage_matches_model(self) -> None:
        page = self.run(self.storage.list_jobs(JobQuery(limit=1000)))
        stored = {j.id: j for j in page.items}
        assert page.next_cursor is None
        assert len(stored) == len(page.items) == len(self.jobs)
        assert stored.keys() == self.jobs.keys()
        for job_id, model in self.jobs.items():
            job = stored[job_id]
            assert job.state is model.state, job_id
            assert (job.attempts, job.crashes) == (model.attempts, model.crashes), job_id
            if model.state is P:
                assert model.lease is not None
                assert job.lease_token == model.lease.token
                assert job.server_id == "srv"
                assert same_time(job.lease_expires_at, model.lease_expires)
                assert job.cancel_requested is model.cancel
            else:
                assert job.lease_token is None and job.lease_expires_at is None
                assert job.cancel_requested is False
            if model.state in (S, R):
                assert same_time(job.run_at, model.run_at)
            if model.state in (OK, F) and model.expires_at is not None:
                assert same_time(job.expires_at, model.expires_at)

    @invariant()
    def counts_match_model(self) -> None:
        counts = self.run(self.storage.stats(history_minutes=1)).counts
        assert counts == {s: len(self.ids_in(s)) for s in JobState}

    @invariant()
    def stale_tokens_are_refused(self) -> None:
        if self.stale:
            replies = self.run(
                self.storage.extend_leases(
                    [(lease.job_id, lease.token) for lease in self.stale], LEASE, now=self.now
                )
            )
            assert [r.held for r in replies] == [False] * len(self.stale)


STEPS = {"memory": 40, "sqlite": 30, "postgres": 16, "redis": 16}


def test_storage_matches_a_reference_model(make_storage: Any) -> None:
    maker: StorageMaker = make_storage
    runner = LoopThread()
    stores = FreshStores(maker)

    class Machine(StorageMachine):
        def __init__(self) -> None:
            super().__init__(runner, stores)

    try:
        run_state_machine_as_test(
            Machine,
            settings=settings(
                max_examples=200,
                stateful_step_count=STEPS.get(maker.backend, 20),
                deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
            ),
        )
    finally:
        try:
            runner.run(stores.close())
            runner.run(maker.aclose())
        finally:
            runner.close()
