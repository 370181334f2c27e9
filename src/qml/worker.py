"""The worker API: what users write to run jobs.

* :class:`Worker`: subclass with ``method_name`` and ``execute(job, ctx)``.
* :class:`TypedWorker`: ``TypedWorker[Args]`` where ``Args`` is a dataclass,
  pydantic model or TypedDict; arguments are validated when enqueued through
  :meth:`TypedWorker.job` / :meth:`WorkerRegistry.enqueue` and again when run.
* ``@registry.job("name")`` on a plain sync or async function; the result keeps
  the function's signature for ``.enqueue(...)``.
* :class:`WorkerResult` says how an attempt ended; :class:`WorkerContext`
  gives a running job its id, attempt, logger, cancellation flag and progress.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import threading
import typing
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import (
    Any,
    ClassVar,
    Concatenate,
    Generic,
    Literal,
    ParamSpec,
    Protocol,
    TypeVar,
    cast,
    get_args,
    overload,
)

import pydantic

from .clock import ensure_aware, utcnow
from .errors import (
    ConfigurationError,
    SerializationError,
    ValidationError,
    WorkerNotFoundError,
)
from .job import Job
from .retry import RetryPolicy
from .serialization import dumps

if typing.TYPE_CHECKING:
    from .storage.base import Storage

T = TypeVar("T")
P = ParamSpec("P")
R = TypeVar("R")

log = logging.getLogger("qml.worker")


@dataclass(frozen=True, slots=True)
class WorkerResult:
    """How one attempt ended, when the job wants to say so explicitly.

    Returning a plain value (or None) means success with that value as result;
    raising an exception means a failure that is retried while the retry policy
    allows.
    """

    kind: Literal["success", "retry", "failure"]
    data: Any = None
    reason: str | None = None
    delay: float | None = None

    @classmethod
    def success(cls, data: Any = None) -> WorkerResult:
        """The job succeeded; ``data`` (JSON) is stored as its result."""
        return cls("success", data=data)

    @classmethod
    def retry(cls, reason: str, delay: float | None = None) -> WorkerResult:
        """Try again after ``delay`` seconds (default: the retry policy's backoff).

        Counts against the job's retry limit; past it, the job fails.
        """
        return cls("retry", reason=reason, delay=delay)

    @classmethod
    def failure(cls, reason: str) -> WorkerResult:
        """Fail for good, without retrying."""
        return cls("failure", reason=reason)


#: The lock of every CancelEvent (held for a few instructions, when one is set or
#: waited on); a new one in a forked child.
_CANCEL_LOCK = threading.Lock()


def _new_cancel_lock() -> None:
    global _CANCEL_LOCK
    _CANCEL_LOCK = threading.Lock()


os.register_at_fork(after_in_child=_new_cancel_lock)


class CancelEvent:
    """Set when the job should stop: cancelled by a user, lease lost, or
    the server shutting down. Usable from async code and from threads.

    Cheap to create (one per job): the list of async waiters and the
    threading.Event behind ``wait_sync`` are made only when someone first waits,
    and all events share one lock (setting and waiting are rare)."""

    __slots__ = ("_event", "_set", "_waiters", "reason")

    def __init__(self) -> None:
        self._set = False
        self._event: threading.Event | None = None
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] | None = None
        self.reason: str | None = None

    def is_set(self) -> bool:
        return self._set

    def set(self, reason: str = "cancelled") -> None:
        with _CANCEL_LOCK:
            if self._set:
                return
            self.reason = reason
            self._set = True
            event = self._event
            waiters, self._waiters = self._waiters, None
        if event is not None:
            event.set()
        for loop, fut in waiters or ():
            if not loop.is_closed():
                loop.call_soon_threadsafe(_resolve, fut)

    async def wait(self) -> None:
        """Wait (async) until set."""
        with _CANCEL_LOCK:
            if self._set:
                return
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            if self._waiters is None:
                self._waiters = []
            self._waiters.append((asyncio.get_running_loop(), fut))
        await fut

    def wait_sync(self, timeout: float | None = None) -> bool:
        """Wait (blocking, for sync jobs in threads); True if set."""
        with _CANCEL_LOCK:
            if self._set:
                return True
            if self._event is None:
                self._event = threading.Event()
            event = self._event
        return event.wait(timeout)


class Flag:
    """A thread-safe boolean flag (attribute writes are atomic), cheaper than an Event."""

    __slots__ = ("_value",)

    def __init__(self) -> None:
        self._value = False

    def is_set(self) -> bool:
        return self._value

    def set(self) -> None:
        self._value = True

    def clear(self) -> None:
        self._value = False


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class WorkerContext:
    """What a running job knows about itself.

    ``progress()`` and ``heartbeat()`` are plain methods, safe from async code
    and from sync jobs running in threads; the server ships them to storage.
    """

    def __init__(
        self,
        job: Job,
        *,
        server_id: str = "",
        logger: logging.Logger | None = None,
        cancelled: CancelEvent | None = None,
    ) -> None:
        self.job = job
        self.server_id = server_id
        self.cancelled = cancelled or CancelEvent()
        self._base_logger = logger
        self._logger: logging.LoggerAdapter[logging.Logger] | None = None
        self.progress_value: float | None = None
        self.progress_message: str | None = None
        self.heartbeat_requested = Flag()

    @property
    def logger(self) -> logging.LoggerAdapter[logging.Logger]:
        """A logger whose records carry the job's id, method, queue and attempt."""
        if self._logger is None:
            job = self.job
            self._logger = logging.LoggerAdapter(
                self._base_logger or logging.getLogger("qml.job"),
                {
                    "job_id": job.id,
                    "method": job.method,
                    "queue": job.queue,
                    "attempt": job.attempts,
                },
            )
        return self._logger

    @property
    def job_id(self) -> str:
        return self.job.id

    @property
    def attempt(self) -> int:
        """1 on the first run, 2 on the first retry, and so on."""
        return self.job.attempts

    @property
    def method(self) -> str:
        return self.job.method

    def heartbeat(self) -> None:
        """Ask the server to renew this job's lease now (it also renews on its own)."""
        self.heartbeat_requested.set()

    def progress(self, value: float, message: str | None = None) -> None:
        """Report progress (0–100) and an optional message."""
        self.progress_value = max(0.0, min(100.0, float(value)))
        self.progress_message = message
        self.heartbeat_requested.set()


class BaseWorker(ABC):
    """What the server needs of any job handler registered under ``method_name``.

    Override ``retry_policy``, ``timeout`` (seconds) or ``queue`` per worker.
    Subclass :class:`Worker` or :class:`TypedWorker`, not this class.
    """

    method_name: ClassVar[str] = ""
    retry_policy: ClassVar[RetryPolicy | None] = None
    timeout: ClassVar[float | None] = None
    queue: ClassVar[str] = "default"

    @property
    def is_async(self) -> bool:
        """Whether the handler is ``async def`` (runs on the event loop) rather than a
        plain ``def`` (runs in the server's thread pool)."""
        return inspect.iscoroutinefunction(getattr(self, "execute", None))

    @abstractmethod
    def invoke(self, job: Job, ctx: WorkerContext) -> Any:
        """Called by the server: decode arguments and run (or return a coroutine)."""

    def encode_args(self, args: Any) -> Any:
        """Validate arguments for enqueueing and return their JSON form."""
        return args

    def make_job(
        self,
        args: Any,
        *,
        queue: str | None = None,
        priority: int = 0,
        delay: float | None = None,
        at: datetime | None = None,
        max_retries: int | None = None,
        timeout: float | None = None,
        dedup_key: str | None = None,
    ) -> Job:
        """A validated job for this worker (no I/O)."""
        return self.job_for_encoded(
            self.encode_args(args),
            queue=queue,
            priority=priority,
            delay=delay,
            at=at,
            max_retries=max_retries,
            timeout=timeout,
            dedup_key=dedup_key,
        )

    def job_for_encoded(
        self,
        encoded: Any,
        *,
        queue: str | None = None,
        priority: int = 0,
        delay: float | None = None,
        at: datetime | None = None,
        max_retries: int | None = None,
        timeout: float | None = None,
        dedup_key: str | None = None,
    ) -> Job:
        """A job carrying arguments already in their JSON form."""
        return Job(
            self.method_name,
            encoded,
            queue=queue or self.queue,
            priority=priority,
            run_at=_run_at(delay, at),
            max_retries=max_retries,
            timeout=timeout,
            dedup_key=dedup_key,
        )


def _run_at(delay: float | None, at: datetime | None) -> datetime | None:
    if delay is not None and at is not None:
        raise ConfigurationError("give either delay or at, not both")
    if delay is not None:
        return utcnow() + timedelta(seconds=delay) if delay > 0 else None
    return ensure_aware(at) if at is not None else None


def _format_validation(exc: pydantic.ValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "arguments"
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)


class Worker(BaseWorker):
    """A job handler receiving the raw :class:`Job` (arguments as stored JSON).

    ``execute`` may be ``async def`` (runs on the server's event loop) or a
    plain ``def`` (runs in the server's thread pool).
    """

    @abstractmethod
    def execute(self, job: Job, ctx: WorkerContext) -> Any:
        """Run one attempt. Return a value, a :class:`WorkerResult`, or raise."""

    def invoke(self, job: Job, ctx: WorkerContext) -> Any:
        return self.execute(job, ctx)


def _type_adapter(tp: Any) -> pydantic.TypeAdapter[Any]:
    """A pydantic adapter for ``tp``.

    Before Python 3.12 pydantic refuses ``typing.TypedDict``; such a type is
    rebuilt as the equivalent ``typing_extensions.TypedDict``.
    """
    try:
        return pydantic.TypeAdapter(tp)
    except pydantic.PydanticUserError as exc:
        if exc.code != "typed-dict-version":
            raise ConfigurationError(f"cannot validate arguments of type {tp!r}: {exc}") from exc
    try:
        return pydantic.TypeAdapter(_portable_typeddict(tp))
    except pydantic.PydanticUserError as exc:
        raise ConfigurationError(
            f"cannot validate arguments of type {tp!r}: {exc} (nested TypedDicts inside"
            " containers need typing_extensions.TypedDict before Python 3.12)"
        ) from exc


def _portable_typeddict(tp: Any) -> Any:
    """``tp`` rebuilt as a ``typing_extensions.TypedDict`` (same keys, types and
    required keys) when it is a TypedDict, with TypedDict fields rebuilt too."""
    if not typing.is_typeddict(tp):
        return tp
    import typing_extensions

    fields: dict[str, Any] = {}
    for name, hint in typing.get_type_hints(tp, include_extras=True).items():
        wrapper: Any = typing.get_origin(hint)
        if wrapper is typing.Required or wrapper is typing.NotRequired:
            (hint,) = typing.get_args(hint)
        else:
            wrapper = typing.Required if name in tp.__required_keys__ else typing.NotRequired
        fields[name] = wrapper[_portable_typeddict(hint)]
    factory: Any = typing_extensions.TypedDict
    return factory(tp.__name__, fields)


class TypedWorker(BaseWorker, Generic[T]):
    """A worker whose arguments are a typed value ``T`` (dataclass, pydantic
    model or TypedDict), validated with pydantic on enqueue and on run."""

    _adapter: ClassVar[pydantic.TypeAdapter[Any] | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for base in getattr(cls, "__orig_bases__", ()):
            origin = typing.get_origin(base)
            if origin is TypedWorker:
                (arg,) = get_args(base)
                if not isinstance(arg, TypeVar):
                    cls._adapter = _type_adapter(arg)

    @property
    def adapter(self) -> pydantic.TypeAdapter[Any]:
        if self._adapter is None:
            raise ConfigurationError(
                f"{type(self).__name__} must subclass TypedWorker[ArgsType] with a concrete type"
            )
        return self._adapter

    @abstractmethod
    def execute(self, args: T, ctx: WorkerContext) -> Any:
        """Run one attempt with validated arguments."""

    def invoke(self, job: Job, ctx: WorkerContext) -> Any:
        return self.execute(self.decode_args(job.args), ctx)

    def decode_args(self, data: Any) -> T:
        try:
            return cast(T, self.adapter.validate_python(data))
        except pydantic.ValidationError as exc:
            raise ValidationError(
                f"invalid arguments for {self.method_name}: {_format_validation(exc)}"
            ) from exc

    def encode_args(self, args: Any) -> Any:
        try:
            value = self.adapter.validate_python(args)
            return self.adapter.dump_python(value, mode="json")
        except pydantic.ValidationError as exc:
            raise ValidationError(
                f"invalid arguments for {self.method_name}: {_format_validation(exc)}"
            ) from exc

    def job(self, args: T, **options: Any) -> Job:
        """A validated job carrying ``args`` (see :meth:`BaseWorker.make_job` for options)."""
        return self.make_job(args, **options)


class FunctionWorker(BaseWorker):
    """Adapts a plain function registered with ``@registry.job``.

    Arguments are stored as a dict of keyword arguments; a parameter annotated
    :class:`WorkerContext` receives the context and is not part of them.
    """

    def __init__(
        self,
        fn: Callable[..., Any],
        method_name: str,
        *,
        queue: str = "default",
        retry_policy: RetryPolicy | None = None,
        timeout: float | None = None,
    ) -> None:
        self.fn = fn
        self.method_name = method_name  # type: ignore[misc]
        self.queue = queue  # type: ignore[misc]
        self.retry_policy = retry_policy  # type: ignore[misc]
        self.timeout = timeout  # type: ignore[misc]
        self.signature = inspect.signature(fn)
        hints = _type_hints(fn, self.signature)
        self.ctx_param: str | None = None
        self._untyped: list[str] = []
        fields: dict[str, Any] = {}
        for name, param in self.signature.parameters.items():
            ann = hints.get(name, Any)
            if ann is Any:
                self._untyped.append(name)
            if ann is WorkerContext:
                self.ctx_param = name
                continue
            if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                raise ConfigurationError(
                    f"job function {fn.__qualname__} may not take *args or **kwargs"
                )
            default = ... if param.default is param.empty else param.default
            fields[name] = (ann, default)
        self.model: type[pydantic.BaseModel] = pydantic.create_model(
            f"{getattr(fn, '__name__', 'job')}_args",
            __config__=pydantic.ConfigDict(extra="forbid", arbitrary_types_allowed=False),
            **fields,
        )
        self._async = inspect.iscoroutinefunction(fn)
        # What binding a call needs, worked out once (enqueue is a hot path).
        params = [p for n, p in self.signature.parameters.items() if n != self.ctx_param]
        self._call_signature = self.signature.replace(parameters=params)
        positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        self._positional = tuple(p.name for p in params if p.kind in positional)
        self._keywords = frozenset(
            p.name for p in params if p.kind is not inspect.Parameter.POSITIONAL_ONLY
        )
        self._required = tuple(p.name for p in params if p.default is p.empty)
        # A call with only positional arguments binds by zip when it gives at least
        # every required parameter (all of them positional) and no more than fit.
        self._min_args: int | None = None
        if all(name in self._positional for name in self._required):
            self._min_args = max(
                (self._positional.index(name) + 1 for name in self._required), default=0
            )
        self._validate: Callable[[Any], Any] = self.model.model_validate
        self._serialize: Callable[..., Any] = pydantic.BaseModel.model_dump
        if self.model.__pydantic_complete__:  # call pydantic-core without the wrappers
            self._validate = self.model.__pydantic_validator__.validate_python
            self._serialize = self.model.__pydantic_serializer__.to_python

    @property
    def is_async(self) -> bool:
        return self._async

    def encode_call(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        """Bind a call's arguments, validate them and return their JSON form."""
        return self._encode_bound(self._bind(args, kwargs))

    def _bind(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        """The call's arguments by parameter name (as ``Signature.bind`` gives them)."""
        positional = self._positional
        least = self._min_args
        if not kwargs and least is not None and least <= len(args) <= len(positional):
            return dict(zip(positional, args, strict=False))
        if len(args) <= len(positional):
            bound = dict(zip(positional, args, strict=False))
            keywords = self._keywords
            if all(k in keywords and k not in bound for k in kwargs):
                bound.update(kwargs)
                if all(name in bound for name in self._required):
                    return bound
        try:  # not a plain call: let inspect bind it, or word the error
            return dict(self._call_signature.bind(*args, **kwargs).arguments)
        except TypeError as exc:
            raise ValidationError(f"invalid arguments for {self.method_name}: {exc}") from exc

    def encode_args(self, args: Any) -> Any:
        if not isinstance(args, dict):
            raise ValidationError(
                f"arguments for {self.method_name} must be an object of keyword arguments"
            )
        return self._encode_bound(args)

    def _encode_bound(self, args: dict[str, Any]) -> dict[str, Any]:
        """The JSON form of arguments by parameter name, validated."""
        for name in self._untyped:
            # pydantic's JSON mode would quietly turn a set into a list, bytes
            # into text...: an untyped argument must already be JSON.
            if name in args:
                try:
                    dumps(args[name])
                except SerializationError as exc:
                    raise SerializationError(
                        f"argument {name!r} of {self.method_name}: {exc}"
                    ) from exc
        try:
            return cast(dict[str, Any], self._serialize(self._validate(args), mode="json"))
        except pydantic.ValidationError as exc:
            raise ValidationError(
                f"invalid arguments for {self.method_name}: {_format_validation(exc)}"
            ) from exc

    def decode(self, data: Any) -> dict[str, Any]:
        if not isinstance(data, dict):
            raise ValidationError(
                f"arguments for {self.method_name} must be an object of keyword arguments"
            )
        try:
            model = self._validate(data)
        except pydantic.ValidationError as exc:
            raise ValidationError(
                f"invalid arguments for {self.method_name}: {_format_validation(exc)}"
            ) from exc
        return dict(model.__dict__)  # the fields, by name (extra ones are forbidden)

    def invoke(self, job: Job, ctx: WorkerContext) -> Any:
        kwargs = self.decode(job.args)
        if self.ctx_param is not None:
            kwargs[self.ctx_param] = ctx
        return self.fn(**kwargs)


def _type_hints(fn: Callable[..., Any], signature: inspect.Signature) -> dict[str, Any]:
    """The parameter annotations of ``fn``, resolved one by one.

    ``typing.get_type_hints`` gives up on the whole function when one string
    annotation cannot be resolved (a type local to the defining function);
    then only that parameter is left unvalidated, and the context parameter
    is still found by name. ``Annotated`` constraints are kept for pydantic.
    """
    with contextlib.suppress(Exception):
        return typing.get_type_hints(fn, include_extras=True)
    globalns = getattr(fn, "__globals__", {})
    hints: dict[str, Any] = {}
    for name, param in signature.parameters.items():
        ann = param.annotation
        if ann is param.empty:
            continue
        if isinstance(ann, str):

            def probe() -> None: ...

            probe.__annotations__ = {name: ann}
            try:
                ann = typing.get_type_hints(probe, globalns, include_extras=True)[name]
            except Exception:
                if ann.rsplit(".", 1)[-1] != "WorkerContext":
                    continue
                ann = WorkerContext
        hints[name] = ann
    return hints


class JobFunction(Generic[P, R]):
    """A function registered as a job. Call it to run it directly; use
    :meth:`enqueue` to run it in the background."""

    def __init__(
        self,
        worker: FunctionWorker,
        registry: WorkerRegistry,
        options: dict[str, Any] | None = None,
    ) -> None:
        self.worker = worker
        self.registry = registry
        self._options = options or {}
        self._job_options = {k: v for k, v in self._options.items() if k != "storage"}
        self.__wrapped__ = worker.fn
        self.__doc__ = worker.fn.__doc__
        self.__name__ = getattr(worker.fn, "__name__", worker.method_name)

    @property
    def method_name(self) -> str:
        return self.worker.method_name

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return cast(R, self.worker.fn(*args, **kwargs))

    def options(
        self,
        *,
        queue: str | None = None,
        priority: int | None = None,
        delay: float | None = None,
        at: datetime | None = None,
        max_retries: int | None = None,
        timeout: float | None = None,
        dedup_key: str | None = None,
        storage: Storage | None = None,
    ) -> JobFunction[P, R]:
        """A copy that enqueues with these options."""
        opts = dict(self._options)
        for key, value in (
            ("queue", queue),
            ("priority", priority),
            ("delay", delay),
            ("at", at),
            ("max_retries", max_retries),
            ("timeout", timeout),
            ("dedup_key", dedup_key),
            ("storage", storage),
        ):
            if value is not None:
                opts[key] = value
        return JobFunction(self.worker, self.registry, opts)

    def build(self, *args: P.args, **kwargs: P.kwargs) -> Job:
        """A validated :class:`Job` for this call (no I/O)."""
        worker = self.worker
        if self._job_options:
            return worker.job_for_encoded(worker.encode_call(args, kwargs), **self._job_options)
        # no options: the function's queue, nothing else to work out
        return Job(worker.method_name, worker.encode_call(args, kwargs), worker.queue)

    async def enqueue(self, *args: P.args, **kwargs: P.kwargs) -> str:
        """Validate the call's arguments and enqueue it; return the job id."""
        job = self.build(*args, **kwargs)
        storage = self._options.get("storage") or self.registry.storage
        if storage is None:
            raise ConfigurationError(
                f"no storage to enqueue {self.method_name!r} into: pass WorkerRegistry(storage=...)"
                " or .options(storage=...)"
            )
        await cast("Storage", storage)._enqueue_fresh(job)
        return job.id


class JobDecorator(Protocol):
    """What ``@registry.job(...)`` returns: keeps the function's signature,
    minus a leading :class:`WorkerContext` parameter."""

    @overload
    def __call__(self, fn: Callable[Concatenate[WorkerContext, P], R]) -> JobFunction[P, R]: ...

    @overload
    def __call__(self, fn: Callable[P, R]) -> JobFunction[P, R]: ...


class WorkerRegistry:
    """Maps method names to workers. Servers look jobs up here."""

    def __init__(self, storage: Storage | None = None) -> None:
        self._workers: dict[str, BaseWorker] = {}
        self.storage = storage

    def register(self, worker: BaseWorker) -> BaseWorker:
        """Register a worker instance under its ``method_name``."""
        name = worker.method_name
        if not isinstance(name, str) or not name:
            raise ConfigurationError(f"{type(worker).__name__} has no method_name")
        if name in self._workers and self._workers[name] is not worker:
            raise ConfigurationError(f"a worker for {name!r} is already registered")
        self._workers[name] = worker
        return worker

    def job(
        self,
        name: str | None = None,
        *,
        queue: str = "default",
        retry_policy: RetryPolicy | None = None,
        max_retries: int | None = None,
        timeout: float | None = None,
    ) -> JobDecorator:
        """Decorator registering a plain sync or async function as a job.

        A parameter annotated :class:`WorkerContext` receives the running job's
        context; put it first so type checkers leave it out of ``.enqueue()``.
        """
        if max_retries is not None:
            retry_policy = (
                RetryPolicy(max_retries=max_retries)
                if retry_policy is None
                else RetryPolicy(
                    max_retries=max_retries,
                    base_delay=retry_policy.base_delay,
                    factor=retry_policy.factor,
                    max_delay=retry_policy.max_delay,
                    jitter=retry_policy.jitter,
                )
            )

        def decorate(fn: Callable[..., Any]) -> JobFunction[Any, Any]:
            method = name or f"{fn.__module__}.{fn.__qualname__}"
            worker = FunctionWorker(
                fn, method, queue=queue, retry_policy=retry_policy, timeout=timeout
            )
            self.register(worker)
            return JobFunction(worker, self)

        return cast(JobDecorator, decorate)

    def get(self, method: str) -> BaseWorker:
        """The worker for ``method``; raises :class:`WorkerNotFoundError`."""
        try:
            return self._workers[method]
        except KeyError:
            raise WorkerNotFoundError(method) from None

    def __contains__(self, method: object) -> bool:
        return method in self._workers

    def __len__(self) -> int:
        return len(self._workers)

    @property
    def methods(self) -> list[str]:
        return sorted(self._workers)

    def make_job(self, method: str, args: Any, **options: Any) -> Job:
        """A job for a registered method, arguments validated by its worker."""
        return self.get(method).make_job(args, **options)

    async def enqueue(
        self, method: str, args: Any = None, *, storage: Storage | None = None, **options: Any
    ) -> str:
        """Validate ``args`` with the registered worker and enqueue; return the id."""
        target = storage or self.storage
        if target is None:
            raise ConfigurationError("no storage: pass storage=... or WorkerRegistry(storage=...)")
        return await target.enqueue(self.make_job(method, {} if args is None else args, **options))
