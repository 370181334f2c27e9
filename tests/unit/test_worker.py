"""The worker API: typed workers, ``@registry.job`` functions, results, context."""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Required, TypedDict

import pydantic
import pytest

from qml import (
    ConfigurationError,
    Job,
    JobState,
    MemoryStorage,
    RetryPolicy,
    SerializationError,
    TypedWorker,
    ValidationError,
    Worker,
    WorkerContext,
    WorkerNotFoundError,
    WorkerRegistry,
    WorkerResult,
)
from qml.worker import BaseWorker, CancelEvent, FunctionWorker


# ---------------------------------------------------------------------- typed workers
@dataclass
class EmailArgs:
    to: str
    subject: str
    retries: int = 0


class EmailModel(pydantic.BaseModel):
    to: str
    subject: str
    tags: list[str] = []


class EmailDict(TypedDict):
    to: str
    subject: str


class DataclassWorker(TypedWorker[EmailArgs]):
    method_name = "email.dataclass"

    async def execute(self, args: EmailArgs, ctx: WorkerContext) -> WorkerResult:
        return WorkerResult.success({"to": args.to})


class ModelWorker(TypedWorker[EmailModel]):
    method_name = "email.model"
    queue = "mail"

    def execute(self, args: EmailModel, ctx: WorkerContext) -> str:
        return args.to


class DictWorker(TypedWorker[EmailDict]):
    method_name = "email.dict"

    async def execute(self, args: EmailDict, ctx: WorkerContext) -> str:
        return args["to"]


def run_job(worker: BaseWorker, job: Job) -> Any:
    """Run one attempt as the server would (without a server)."""
    ctx = WorkerContext(job)
    value = worker.invoke(job, ctx)
    if asyncio.iscoroutine(value):
        return asyncio.run(value)
    return value


@pytest.fixture
def storage() -> MemoryStorage:
    return MemoryStorage()


@pytest.fixture
def registry(storage: MemoryStorage) -> WorkerRegistry:
    reg = WorkerRegistry(storage)
    reg.register(DataclassWorker())
    reg.register(ModelWorker())
    reg.register(DictWorker())
    return reg


TYPED_CASES: list[tuple[type[TypedWorker[Any]], Any, Any]] = [
    (DataclassWorker, EmailArgs("a@example.com", "hi"), EmailArgs("a@example.com", "hi", 0)),
    (
        ModelWorker,
        EmailModel(to="a@example.com", subject="hi"),
        EmailModel(to="a@example.com", subject="hi"),
    ),
    (
        DictWorker,
        EmailDict(to="a@example.com", subject="hi"),
        {"to": "a@example.com", "subject": "hi"},
    ),
]


@pytest.mark.parametrize(
    ("cls", "value", "decoded"), TYPED_CASES, ids=lambda c: getattr(c, "__name__", "")
)
def test_typed_args_round_trip(cls: type[TypedWorker[Any]], value: Any, decoded: Any) -> None:
    worker = cls()
    job = worker.job(value)
    assert job.method == cls.method_name
    assert isinstance(job.args, dict)
    assert job.args["to"] == "a@example.com"
    assert worker.decode_args(job.args) == decoded
    assert run_job(worker, job) in ("a@example.com", WorkerResult.success({"to": "a@example.com"}))


@pytest.mark.parametrize("cls", [DataclassWorker, ModelWorker, DictWorker])
def test_typed_args_accept_plain_dicts(cls: type[TypedWorker[Any]]) -> None:
    job = cls().job({"to": "b@example.com", "subject": "s"})
    assert job.args["to"] == "b@example.com"


@pytest.mark.parametrize("cls", [DataclassWorker, ModelWorker, DictWorker])
@pytest.mark.parametrize(
    "bad",
    [
        {"to": "a@example.com"},
        {"to": ["not", "a", "string"], "subject": "s"},
        "not an object",
        None,
    ],
)
async def test_invalid_typed_args_fail_at_the_caller(
    cls: type[TypedWorker[Any]], bad: Any, registry: WorkerRegistry, storage: MemoryStorage
) -> None:
    with pytest.raises(ValidationError, match=f"invalid arguments for {cls.method_name}"):
        cls().job(bad)
    with pytest.raises(ValidationError):
        await registry.enqueue(cls.method_name, bad if bad is not None else {"x": 1})
    assert await storage.count() == 0


async def test_registry_enqueue_stores_validated_json(
    registry: WorkerRegistry, storage: MemoryStorage
) -> None:
    job_id = await registry.enqueue(
        "email.dataclass", EmailArgs("c@example.com", "s", 2), priority=3
    )
    job = await storage.get_job(job_id)
    assert job.args == {"to": "c@example.com", "subject": "s", "retries": 2}
    assert job.priority == 3
    assert job.state is JobState.ENQUEUED
    model_id = await registry.enqueue("email.model", {"to": "d@example.com", "subject": "s"})
    model_job = await storage.get_job(model_id)
    assert model_job.queue == "mail"  # the worker's default queue
    assert model_job.args == {"to": "d@example.com", "subject": "s", "tags": []}


async def test_registry_enqueue_needs_storage_and_a_known_method() -> None:
    reg = WorkerRegistry()
    reg.register(DictWorker())
    with pytest.raises(ConfigurationError, match="no storage"):
        await reg.enqueue("email.dict", {"to": "a", "subject": "b"})
    with pytest.raises(WorkerNotFoundError, match="nope"):
        await reg.enqueue("nope", {}, storage=MemoryStorage())


def test_typed_worker_without_concrete_type_is_a_configuration_error() -> None:
    class Untyped(TypedWorker[Any]):
        method_name = "untyped"

        def execute(self, args: Any, ctx: WorkerContext) -> None:
            return None

    # TypedWorker[Any] is concrete (anything goes); a TypeVar is not.
    assert Untyped().job({"k": 1}).args == {"k": 1}

    class Generic_(TypedWorker):  # type: ignore[type-arg]
        method_name = "generic"

        def execute(self, args: Any, ctx: WorkerContext) -> None:
            return None

    with pytest.raises(ConfigurationError, match="concrete type"):
        Generic_().job({})


def test_typed_args_revalidated_when_run() -> None:
    worker = DataclassWorker()
    with pytest.raises(ValidationError, match="subject"):
        run_job(worker, Job("email.dataclass", {"to": "x"}))


# ---------------------------------------------------------------------- registry
def test_registry_lookup_and_duplicates() -> None:
    reg = WorkerRegistry()
    worker = reg.register(DictWorker())
    assert reg.register(worker) is worker  # registering the same instance twice is fine
    with pytest.raises(ConfigurationError, match="already registered"):
        reg.register(DictWorker())
    assert "email.dict" in reg
    assert "other" not in reg
    assert len(reg) == 1
    assert reg.methods == ["email.dict"]
    assert reg.get("email.dict") is worker
    with pytest.raises(WorkerNotFoundError) as info:
        reg.get("other")
    assert info.value.method == "other"


def test_worker_without_method_name_is_refused() -> None:
    class Nameless(Worker):
        def execute(self, job: Job, ctx: WorkerContext) -> None:
            return None

    with pytest.raises(ConfigurationError, match="no method_name"):
        WorkerRegistry().register(Nameless())


# ---------------------------------------------------------------------- @registry.job
async def test_async_function_job_binding_defaults_and_enqueue(
    storage: MemoryStorage,
) -> None:
    reg = WorkerRegistry(storage)
    seen: list[tuple[int, str, float]] = []

    @reg.job("resize")
    async def resize(ctx: WorkerContext, width: int, name: str = "img", scale: float = 1.0) -> str:
        seen.append((width, name, scale))
        return f"{ctx.job_id}:{width}"

    assert resize.method_name == "resize"
    assert resize.worker.is_async
    job = resize.build(10, scale=2)
    assert job.args == {"width": 10, "name": "img", "scale": 2.0}
    job2 = resize.build(width=3, name="x")
    assert job2.args == {"width": 3, "name": "x", "scale": 1.0}

    job_id = await resize.enqueue(640, "photo")
    stored = await storage.get_job(job_id)
    assert stored.method == "resize"
    assert stored.args == {"width": 640, "name": "photo", "scale": 1.0}
    result = await reg.get("resize").invoke(stored, WorkerContext(stored))
    assert result == f"{job_id}:640"
    assert seen == [(640, "photo", 1.0)]


async def test_sync_function_job_with_context_anywhere(storage: MemoryStorage) -> None:
    reg = WorkerRegistry(storage)

    @reg.job("add", queue="math")
    def add(a: int, b: int, ctx: WorkerContext) -> int:
        assert ctx.method == "add"
        return a + b

    assert not add.worker.is_async
    assert add.worker.ctx_param == "ctx"
    job_id = await add.enqueue(2, b=3)  # type: ignore[call-arg]
    stored = await storage.get_job(job_id)
    assert stored.queue == "math"
    assert stored.args == {"a": 2, "b": 3}
    assert reg.get("add").invoke(stored, WorkerContext(stored)) == 5
    assert add(1, 2, WorkerContext(stored)) == 3  # a direct call runs it here


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        ((), {}, "missing a required argument"),
        (("x",), {}, "count"),
        ((1, "x", 3), {}, "too many positional"),
        ((), {"count": 1, "extra": 2}, "unexpected keyword"),
        ((), {"count": 1, "label": 5}, "label"),
        ((), {"count": -1}, "greater than 0"),
    ],
)
async def test_function_job_validation_errors_at_enqueue(
    storage: MemoryStorage, args: tuple[Any, ...], kwargs: dict[str, Any], match: str
) -> None:
    reg = WorkerRegistry(storage)

    @reg.job("count")
    async def count(count: Annotated[int, pydantic.Field(gt=0)], label: str = "items") -> None:
        return None

    with pytest.raises(ValidationError, match=match):
        await count.enqueue(*args, **kwargs)
    assert await storage.count() == 0


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        ((1,), {}),
        ((1, 2), {"c": 3}),
        ((), {"a": 1, "b": 2, "c": 3}),
        ((1,), {"c": 3, "b": 2}),
        ((1,), {"a": 1}),  # a given twice
        ((1, 2, 3), {}),  # c is keyword-only
        ((), {"b": 2}),  # a is positional-only and missing
        ((), {"a": 1}),  # a is positional-only
        ((1, 2, 3, 4), {}),
        ((1,), {"ctx": 5}),
        ((1,), {"zzz": 5}),
    ],
)
def test_call_binding_matches_inspect(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    reg = WorkerRegistry()

    @reg.job("bind")
    async def bind(a: int, /, ctx: WorkerContext, b: int = 0, *, c: int = 0) -> None:
        return None

    params = [p for n, p in inspect.signature(bind.worker.fn).parameters.items() if n != "ctx"]
    expected_sig = inspect.signature(bind.worker.fn).replace(parameters=params)
    try:
        expected: dict[str, Any] | str = dict(expected_sig.bind(*args, **kwargs).arguments)
    except TypeError as exc:
        expected = str(exc)
    if isinstance(expected, str):
        with pytest.raises(ValidationError) as info:
            bind.worker.encode_call(args, kwargs)
        assert str(info.value) == f"invalid arguments for bind: {expected}"
    else:
        full = {"b": 0, "c": 0} | expected
        assert bind.worker.encode_call(args, kwargs) == full


async def _kw_required(a: int, b: int = 0, *, c: int) -> None:
    return None


async def _all_optional(a: int = 1, b: int = 2, c: int = 3) -> None:
    return None


async def _later_required(a: int, b: int, c: int = 3) -> None:
    return None


@pytest.mark.parametrize("fn", [_kw_required, _all_optional, _later_required])
@pytest.mark.parametrize(
    "args", [(), (1,), (1, 2), (1, 2, 3), (1, 2, 3, 4)], ids=["0", "1", "2", "3", "4"]
)
def test_positional_only_calls_bind_as_inspect_does(
    fn: Callable[..., Any], args: tuple[Any, ...]
) -> None:
    """Calls without keywords take a shortcut past Signature.bind; it gives the
    same arguments, or the same error."""
    worker = FunctionWorker(fn, "m")
    try:
        expected: dict[str, Any] | str = dict(inspect.signature(fn).bind(*args).arguments)
    except TypeError as exc:
        expected = str(exc)
    if isinstance(expected, str):
        with pytest.raises(ValidationError) as info:
            worker.encode_call(args, {})
        assert str(info.value) == f"invalid arguments for m: {expected}"
    else:
        assert worker._bind(args, {}) == expected


async def test_function_job_with_non_json_argument_type_is_refused(
    storage: MemoryStorage,
) -> None:
    reg = WorkerRegistry(storage)

    @reg.job("when")
    def when(at: datetime) -> None:
        return None

    # Typed arguments are turned into their JSON form (ISO 8601) and back.
    at = datetime(2030, 1, 1, tzinfo=UTC)
    job = when.build(at)
    assert job.args == {"at": "2030-01-01T00:00:00Z"}
    assert reg.get("when").decode(job.args) == {"at": at}  # type: ignore[attr-defined]

    @reg.job("raw")
    def raw(value: Any) -> None:
        return None

    with pytest.raises(SerializationError, match="'value' of raw"):
        await raw.enqueue({1, 2})  # untyped and not JSON: refused, not turned into a list
    with pytest.raises(SerializationError):
        raw.build(b"bytes")
    assert raw.build([1, "a"]).args == {"value": [1, "a"]}
    assert await storage.count() == 0


async def test_options_queue_delay_priority_and_storage() -> None:
    default = MemoryStorage()
    other = MemoryStorage()
    reg = WorkerRegistry(default)

    @reg.job("report", max_retries=7, timeout=5.0)
    async def report(kind: str) -> None:
        return None

    worker = reg.get("report")
    assert worker.retry_policy is not None and worker.retry_policy.max_retries == 7
    assert worker.timeout == 5.0

    later = report.options(queue="reports", delay=3600, priority=9)
    job = later.build("daily")
    assert job.queue == "reports"
    assert job.priority == 9
    assert job.run_at is not None
    assert job.run_at > datetime.now(UTC) + timedelta(seconds=3500)
    job_id = await later.enqueue("daily")
    stored = await default.get_job(job_id)
    assert stored.state is JobState.SCHEDULED
    assert stored.queue == "reports"

    assert report.build("x").queue == "default"  # options() returned a copy
    other_id = await report.options(storage=other).enqueue("weekly")
    assert await default.get(other_id) is None
    assert (await other.get_job(other_id)).args == {"kind": "weekly"}

    with pytest.raises(ConfigurationError, match="either delay or at"):
        report.options(delay=1, at=datetime.now(UTC)).build("x")


async def test_function_job_without_storage() -> None:
    reg = WorkerRegistry()

    @reg.job()
    def nameless() -> None:
        return None

    assert nameless.method_name.endswith("nameless")
    assert nameless.build().args == {}
    with pytest.raises(ConfigurationError, match="no storage"):
        await nameless.enqueue()


def test_function_job_refuses_star_args() -> None:
    reg = WorkerRegistry()
    with pytest.raises(ConfigurationError, match=r"\*args"):

        @reg.job("star")
        def star(*values: int) -> None:
            return None


def test_retry_policy_with_max_retries_override() -> None:
    reg = WorkerRegistry()
    policy = RetryPolicy(base_delay=5.0, factor=3.0, jitter=0.0)

    @reg.job("p", retry_policy=policy, max_retries=1)
    def p() -> None:
        return None

    got = reg.get("p").retry_policy
    assert got == RetryPolicy(max_retries=1, base_delay=5.0, factor=3.0, jitter=0.0)


def test_context_detected_when_other_annotations_cannot_be_resolved() -> None:
    """A type local to the defining function must not hide the context parameter."""

    @dataclass
    class Local:
        x: int

    reg = WorkerRegistry()

    @reg.job("local")
    def local(ctx: WorkerContext, n: int, item: Local | None = None) -> int:
        return n

    worker = reg.get("local")
    assert isinstance(worker, FunctionWorker)
    assert worker.ctx_param == "ctx"
    assert local.build(4).args == {"n": 4, "item": None}
    with pytest.raises(ValidationError, match="n"):
        local.build("four")  # type: ignore[arg-type]


# ---------------------------------------------------------------------- results & context
def test_worker_result_constructors() -> None:
    assert WorkerResult.success() == WorkerResult("success")
    assert WorkerResult.success({"n": 1}).data == {"n": 1}
    retry = WorkerResult.retry("busy", delay=2.5)
    assert (retry.kind, retry.reason, retry.delay) == ("retry", "busy", 2.5)
    assert WorkerResult.retry("later").delay is None
    fail = WorkerResult.failure("bad input")
    assert (fail.kind, fail.reason) == ("failure", "bad input")
    with pytest.raises(AttributeError):
        fail.reason = "x"  # type: ignore[misc]


def test_context_exposes_the_job() -> None:
    job = Job("m", {"a": 1}, attempts=2)
    ctx = WorkerContext(job, server_id="srv")
    assert ctx.job_id == job.id
    assert ctx.attempt == 2
    assert ctx.method == "m"
    assert ctx.server_id == "srv"
    assert not ctx.cancelled.is_set()
    ctx.logger.info("hello")
    assert not ctx.heartbeat_requested.is_set()
    ctx.heartbeat()
    assert ctx.heartbeat_requested.is_set()
    ctx.heartbeat_requested.clear()
    ctx.progress(150, "almost")
    assert ctx.progress_value == 100.0
    assert ctx.progress_message == "almost"
    assert ctx.heartbeat_requested.is_set()
    ctx.progress(-3)
    assert ctx.progress_value == 0.0


async def test_cancel_event_set_from_a_thread_wakes_async_waiters() -> None:
    event = CancelEvent()
    waiters = [asyncio.create_task(event.wait()) for _ in range(3)]
    await asyncio.sleep(0)
    assert not any(w.done() for w in waiters)
    thread = threading.Thread(target=event.set, args=("lease_lost",))
    thread.start()
    await asyncio.wait_for(asyncio.gather(*waiters), 5)
    thread.join()
    assert event.is_set()
    assert event.reason == "lease_lost"
    event.set("cancelled")  # the first reason stays
    assert event.reason == "lease_lost"
    await asyncio.wait_for(event.wait(), 1)  # already set: returns at once


async def test_cancel_event_set_from_async_wakes_a_thread() -> None:
    event = CancelEvent()
    result: list[bool] = []
    started = threading.Event()

    def blocking() -> None:
        started.set()
        result.append(event.wait_sync(10))

    thread = threading.Thread(target=blocking)
    thread.start()
    await asyncio.to_thread(started.wait, 5)
    assert not event.wait_sync(0)
    event.set()
    await asyncio.to_thread(thread.join, 10)
    assert result == [True]
    assert event.reason == "cancelled"


async def test_cancel_event_survives_a_cancelled_waiter() -> None:
    event = CancelEvent()
    waiter = asyncio.create_task(event.wait())
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    event.set()  # resolving a cancelled waiter must not raise
    assert event.is_set()


class Address(TypedDict):
    city: str


class Order(TypedDict, total=False):
    id: Required[int]
    note: str
    ship_to: Address


class OrderWorker(TypedWorker[Order]):
    method_name = "order"

    def execute(self, args: Order, ctx: WorkerContext) -> int:
        return args["id"]


def test_typing_typeddict_keeps_required_and_optional_keys() -> None:
    """``typing.TypedDict`` works on every supported Python (pydantic alone
    refuses it before 3.12)."""
    worker = OrderWorker()
    assert worker.job({"id": 1}).args == {"id": 1}
    job = worker.job({"id": 2, "note": "fragile", "ship_to": {"city": "Oslo"}})
    assert job.args == {"id": 2, "note": "fragile", "ship_to": {"city": "Oslo"}}
    assert run_job(worker, job) == 2
    with pytest.raises(ValidationError, match="id"):
        worker.job({"note": "no id"})  # type: ignore[typeddict-item]
    with pytest.raises(ValidationError, match="city"):
        worker.job({"id": 3, "ship_to": {}})  # type: ignore[typeddict-item]


async def test_an_enqueued_call_is_stored_as_storage_enqueue_would_store_it(
    storage: MemoryStorage,
) -> None:
    """``JobFunction.enqueue`` hands its freshly built job to storage without a
    copy; what is stored is what ``Storage.enqueue`` of the same job stores."""
    reg = WorkerRegistry(storage)

    @reg.job("pair", queue="q")
    async def pair(a: int, b: int = 2) -> None:
        return None

    via_function = await storage.get_job(await pair.options(priority=5).enqueue(1))
    via_storage = await storage.get_job(await storage.enqueue(pair.options(priority=5).build(1)))
    for job in (via_function, via_storage):
        assert job.state is JobState.ENQUEUED
        assert (job.method, job.queue, job.priority, job.args) == ("pair", "q", 5, {"a": 1, "b": 2})
        assert job.created_at == job.updated_at == job.enqueued_at
        assert [(h.state, h.reason) for h in job.history] == [(JobState.ENQUEUED, "enqueued")]
        assert job.attempts == 0 and job.run_at is None
    later = await storage.get_job(await pair.options(delay=3600).enqueue(1))
    assert later.state is JobState.SCHEDULED and later.enqueued_at is None
    assert [(h.state, h.reason) for h in later.history] == [(JobState.SCHEDULED, "scheduled")]
    with pytest.raises(ConfigurationError, match="priority"):
        await pair.options(priority=2**40).enqueue(1)
    assert await storage.count() == 3


def test_prepare_copies_a_job_unless_told_to_adopt_it(storage: MemoryStorage) -> None:
    job = Job("m", {"x": 1})
    copy, payload = storage.prepare(job)
    assert copy is not job and job.history == [] and payload == b'{"x":1}'
    adopted, _ = storage.prepare(job, adopt=True)
    assert adopted is job and [h.state for h in job.history] == [JobState.ENQUEUED]


class _Point(pydantic.BaseModel):
    x: int
    y: int = 0


def test_decoded_arguments_are_the_parameters_by_name_with_defaults() -> None:
    async def place(point: _Point, label: str = "here", *, copies: int = 1) -> None:
        return None

    worker = FunctionWorker(place, "place")
    decoded = worker.decode({"point": {"x": 1}, "copies": "2"})
    assert decoded == {"point": _Point(x=1, y=0), "label": "here", "copies": 2}
    assert type(decoded) is dict and isinstance(decoded["point"], _Point)
    with pytest.raises(ValidationError, match="invalid arguments for place"):
        worker.decode({"point": {"x": 1}, "extra": 1})


async def test_a_storage_that_overrides_enqueue_sees_the_function_jobs() -> None:
    seen: list[str] = []

    class Audited(MemoryStorage):
        async def enqueue(self, job: Job, *, connection: Any = None) -> str:
            seen.append(job.method)
            return await super().enqueue(job, connection=connection)

    storage = Audited()
    reg = WorkerRegistry(storage)

    @reg.job("audited")
    async def audited(n: int) -> None:
        return None

    job_id = await audited.enqueue(1)
    assert seen == ["audited"] and (await storage.get_job(job_id)).args == {"n": 1}
