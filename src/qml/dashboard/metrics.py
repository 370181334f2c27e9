"""``/metrics`` (Prometheus text format) and ``/healthz``.

Cluster gauges come from storage counters at scrape time, so any number of
workers never duplicate them: jobs by state and by (queue, state), the age of
the oldest Enqueued job per queue, paused queues, registered servers, and
jobs finished in the last minute by outcome. Process counters: the storage
calls this dashboard made, by operation (``qml_dashboard_storage_calls_total``).
"""

from __future__ import annotations

from collections.abc import Iterator

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..job import JobState
from .context import Ctx

router = APIRouter(include_in_schema=False)


class _Snapshot(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        yield from self.families


@router.get("/metrics")
async def metrics(ctx: Ctx) -> Response:
    storage = ctx.storage
    now = storage.now()
    queues = await storage.queues()
    stats = await storage.stats(history_minutes=2)
    servers = await storage.list_servers()

    by_state = GaugeMetricFamily("qml_jobs", "Jobs by state (retained)", labels=["state"])
    for state in JobState:
        by_state.add_metric([state.value], stats.counts.get(state, 0))
    by_queue = GaugeMetricFamily(
        "qml_queue_jobs", "Jobs by queue and state", labels=["queue", "state"]
    )
    oldest = GaugeMetricFamily(
        "qml_queue_oldest_age_seconds",
        "Age of the oldest Enqueued job per queue (0 when empty)",
        labels=["queue"],
    )
    paused = GaugeMetricFamily("qml_queue_paused", "1 if the queue is paused", labels=["queue"])
    for q in queues:
        for state in JobState:
            by_queue.add_metric([q.name, state.value], q.counts.get(state, 0))
        age = (now - q.oldest_enqueued_at).total_seconds() if q.oldest_enqueued_at else 0.0
        oldest.add_metric([q.name], max(0.0, age))
        paused.add_metric([q.name], 1.0 if q.paused else 0.0)
    server_count = GaugeMetricFamily("qml_servers", "Registered servers")
    server_count.add_metric([], len(servers))
    last = stats.history[-2] if len(stats.history) >= 2 else None
    finished = GaugeMetricFamily(
        "qml_jobs_finished_last_minute",
        "Jobs finished in the last complete minute, by outcome",
        labels=["outcome"],
    )
    finished.add_metric(["succeeded"], last.succeeded if last else 0)
    finished.add_metric(["failed"], last.failed if last else 0)

    calls = CounterMetricFamily(
        "qml_dashboard_storage_calls",
        "Storage calls made by this dashboard process, by storage operation",
        labels=["op"],
    )
    for op, n in sorted(ctx.storage_calls.calls.items()):
        calls.add_metric([op], n)
    shared = CounterMetricFamily(
        "qml_dashboard_storage_shared_reads",
        "Live page reads answered from a read another tab made (no storage call)",
        labels=["op"],
    )
    for op, n in sorted(ctx.storage_calls.shared_hits.items()):
        shared.add_metric([op], n)

    registry = CollectorRegistry(auto_describe=False)
    registry.register(
        _Snapshot([by_state, by_queue, oldest, paused, server_count, finished, calls, shared])
    )
    return Response(
        generate_latest(registry),
        media_type="text/plain; version=0.0.4; charset=utf-8",
        headers={"cache-control": "no-store"},
    )


@router.get("/healthz")
async def healthz(ctx: Ctx) -> JSONResponse:
    """200 when storage answers, 503 otherwise."""
    try:
        await ctx.storage.count()
    except Exception as exc:
        return JSONResponse(
            {"status": "unavailable", "detail": type(exc).__name__}, status_code=503
        )
    return JSONResponse({"status": "ok", "backend": ctx.storage.backend_name})
