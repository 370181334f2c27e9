"""Runs one claimed job and turns what happened into an :class:`Outcome`.

Every rule about how an attempt ends lives here: unknown methods are released
with backoff (safe during a rolling deploy) until a window passes, corrupt or
invalid arguments fail at once, exceptions and timeouts are retried while the
retry policy allows, and results must be JSON.
"""

from __future__ import annotations

import asyncio
import logging
import traceback as tb
from datetime import datetime
from typing import Any

from .. import faults
from ..clock import utcnow
from ..config import ServerConfig
from ..errors import SerializationError, ValidationError, WorkerNotFoundError
from ..job import Job
from ..retry import RetryPolicy
from ..serialization import CorruptPayload, check_payload
from ..states import UNKNOWN_METHOD
from ..storage.requests import ErrorInfo, Lease, Outcome
from ..worker import BaseWorker, WorkerContext, WorkerRegistry, WorkerResult
from .pool import DaemonThreadPool

log = logging.getLogger("qml.server")

#: Exceptions that would fail the same way on every retry.
NON_RETRYABLE = (ValidationError, SerializationError)


class JobCancelledError(Exception):
    """Raised into an async job that did not stop by itself after cancellation."""


def error_info(exc: BaseException) -> ErrorInfo:
    text = "".join(tb.format_exception(type(exc), exc, exc.__traceback__))
    message = str(exc) or type(exc).__name__
    if isinstance(exc, SystemExit):
        message = f"job called sys.exit({exc.code!r})"
    return ErrorInfo(type(exc).__name__, message[:4000], text[-32000:])


def _call_sync(worker: BaseWorker, job: Job, ctx: WorkerContext) -> tuple[bool, Any]:
    # The job's exceptions come back as values, so its own TimeoutError (a
    # socket timeout) or CancelledError is never taken for the server's.
    try:
        return (True, worker.invoke(job, ctx))
    except BaseException as exc:
        return (False, exc)


async def _call_async(worker: BaseWorker, job: Job, ctx: WorkerContext) -> Any:
    # The try/except sits in the job's own frame so SystemExit raised by the
    # job is caught here and never escapes into the event loop.
    try:
        return (True, await worker.invoke(job, ctx))
    except asyncio.CancelledError as exc:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise
        return (False, exc)  # raised by the job itself: nobody cancelled the attempt
    except BaseException as exc:
        return (False, exc)


class JobProcessor:
    """Executes leases with the registry's workers."""

    def __init__(
        self, config: ServerConfig, registry: WorkerRegistry, pool: DaemonThreadPool
    ) -> None:
        self.config = config
        self.registry = registry
        self.pool = pool
        self.succeeded_ttl = config.succeeded_ttl.total_seconds()
        self.failed_ttl = config.failed_ttl.total_seconds()

    # ------------------------------------------------------------------ outcomes
    def _fail(self, lease: Lease, exc: BaseException, reason: str | None = None) -> Outcome:
        return Outcome.fail(lease, error_info(exc), ttl=self.failed_ttl, reason=reason)

    def _retry_or_fail(
        self,
        lease: Lease,
        policy: RetryPolicy,
        error: ErrorInfo,
        delay: float | None = None,
        reason: str | None = None,
    ) -> Outcome:
        job = lease.job
        failures = max(1, job.attempts - job.crashes)
        if policy.should_retry(failures, job.max_retries):
            wait = policy.delay(failures) if delay is None else max(0.0, delay)
            return Outcome.retry(lease, error, delay=wait, reason=reason or "retry")
        return Outcome.fail(lease, error, ttl=self.failed_ttl, reason=reason or "retries_exhausted")

    def unknown_method(self, lease: Lease, now: datetime | None = None) -> Outcome:
        """Release a job nobody here can run, with backoff, until the window passes."""
        job = lease.job
        # Both times come from the storage's clock (the claim stamped started_at).
        age = ((now or job.started_at or utcnow()) - job.created_at).total_seconds()
        if age > self.config.unknown_method_window:
            return self._fail(lease, WorkerNotFoundError(job.method), reason=UNKNOWN_METHOD)
        delay = min(60.0, max(1.0, age / 10))
        return Outcome.release(lease, delay=delay, reason=UNKNOWN_METHOD)

    def success(self, lease: Lease, value: Any) -> Outcome:
        if value is None:  # the usual result, always JSON
            return Outcome.succeed(lease, None, ttl=self.succeeded_ttl)
        try:
            check_payload(value)
        except SerializationError as exc:
            return self._fail(lease, SerializationError(f"job result: {exc}"))
        return Outcome.succeed(lease, value, ttl=self.succeeded_ttl)

    def from_value(self, lease: Lease, policy: RetryPolicy, value: Any) -> Outcome:
        if isinstance(value, WorkerResult):
            if value.kind == "success":
                return self.success(lease, value.data)
            if value.kind == "retry":
                err = ErrorInfo("Retry", value.reason or "retry requested")
                return self._retry_or_fail(lease, policy, err, value.delay)
            return Outcome.fail(
                lease,
                ErrorInfo("Failure", value.reason or "failed"),
                ttl=self.failed_ttl,
                reason="failure",
            )
        return self.success(lease, value)

    def from_exception(
        self, lease: Lease, policy: RetryPolicy, exc: BaseException, ctx: WorkerContext
    ) -> Outcome:
        if ctx.cancelled.is_set() and ctx.cancelled.reason == "cancelled":
            return self._fail(lease, exc, reason="cancelled")
        if isinstance(exc, NON_RETRYABLE):
            return self._fail(lease, exc, reason="invalid")
        return self._retry_or_fail(lease, policy, error_info(exc))

    # ------------------------------------------------------------------ running
    async def process(self, lease: Lease, ctx: WorkerContext) -> Outcome:
        """Run one attempt; never raises except CancelledError (shutdown)."""
        job = lease.job
        if isinstance(job.args, CorruptPayload):
            return self._fail(
                lease,
                SerializationError(f"stored arguments cannot be decoded: {job.args.error}"),
                reason="corrupt",
            )
        try:
            worker = self.registry.get(job.method)
        except WorkerNotFoundError:
            return self.unknown_method(lease)
        policy = worker.retry_policy or self.config.retry_policy
        timeout = job.timeout or worker.timeout or self.config.job_timeout
        faults.point("job.running")
        try:
            if worker.is_async:
                # in this task (wait_for would start the job in a task of its own,
                # one turn of the event loop later)
                if timeout is None:
                    ok, value = await _call_async(worker, job, ctx)
                else:
                    async with asyncio.timeout(timeout):
                        ok, value = await _call_async(worker, job, ctx)
            else:
                fut = self.pool.submit(_call_sync, worker, job, ctx)
                try:
                    ok, value = await asyncio.wait_for(asyncio.wrap_future(fut), timeout)
                except TimeoutError:
                    ctx.cancelled.set("timeout")
                    raise
            if not ok:
                return self.from_exception(lease, policy, value, ctx)
        except TimeoutError:
            err = ErrorInfo("TimeoutError", f"job exceeded its timeout of {timeout} s")
            return self._retry_or_fail(lease, policy, err, reason="timeout")
        except asyncio.CancelledError as exc:
            task = asyncio.current_task()
            if task is None or not task.cancelling():
                # Nobody cancelled this attempt: an ordinary failure, not a
                # shutdown release that would run it again without counting.
                return self.from_exception(lease, policy, exc, ctx)
            if ctx.cancelled.reason == "cancelled":
                task.uncancel()  # the cancellation is consumed: the job ends Failed
                return self._fail(lease, JobCancelledError("job was cancelled"), reason="cancelled")
            raise
        except BaseException as exc:
            return self.from_exception(lease, policy, exc, ctx)
        return self.from_value(lease, policy, value)
