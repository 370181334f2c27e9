"""``/api/v1/operations`` (bulk actions) and ``/api/v1/errors`` (error groups)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Query
from fastapi.responses import JSONResponse

from .api import _PROBLEM, READ_ERRORS, parse_states
from .context import Ctx, DashboardContext
from .error_groups import FINGERPRINT_PATTERN, SCAN_LIMIT, group_errors
from .operations import Action, JobFilter
from .schemas import (
    ErrorReportOut,
    OperationCreated,
    OperationOnFilter,
    OperationOnIds,
    OperationOut,
)

router = APIRouter(prefix="/api/v1")

OP_ERRORS = {**READ_ERRORS, 404: {**_PROBLEM, "description": "No such operation"}}
OpId = Annotated[str, Path(pattern=r"^[0-9a-f-]{36}$")]
Fingerprint = Annotated[str, Path(pattern=FINGERPRINT_PATTERN)]


def _filter(body: OperationOnIds | OperationOnFilter) -> JobFilter | None:
    if not isinstance(body, OperationOnFilter):
        return None
    f = body.filter
    return JobFilter(
        states=parse_states(f.state),
        queue=f.queue,
        method=f.method,
        text=f.text,
        error=f.error,
    )


async def _create(
    ctx: DashboardContext,
    action: Action,
    *,
    ids: list[str] | None,
    job_filter: JobFilter | None,
    dry_run: bool,
) -> JSONResponse:
    op, estimate, exact = await ctx.operations.create(
        action, ids=ids, job_filter=job_filter, dry_run=dry_run
    )
    body: dict[str, Any] = {
        "id": op.id if op is not None else None,
        "estimate": estimate,
        "estimate_exact": exact,
        "dry_run": dry_run,
        "operation": op.to_dict() if op is not None else None,
    }
    return JSONResponse(body, status_code=200 if dry_run else 202)


CREATE_RESPONSES: dict[int | str, dict[str, Any]] = {
    **READ_ERRORS,
    200: {"model": OperationCreated, "description": "Dry run: the estimate only"},
    202: {"model": OperationCreated, "description": "The operation started"},
}


@router.post(
    "/operations",
    status_code=202,
    response_model=OperationCreated,
    responses=CREATE_RESPONSES,
    tags=["operations"],
)
async def create_operation(ctx: Ctx, body: OperationOnIds | OperationOnFilter) -> JSONResponse:
    """Retry, delete or cancel a selection of ids or every job matching a filter,
    server-side in batches. The match set is frozen when it starts: jobs
    created later are not touched. ``dry_run`` only counts."""
    ids = body.ids if isinstance(body, OperationOnIds) else None
    return await _create(
        ctx, Action(body.action), ids=ids, job_filter=_filter(body), dry_run=body.dry_run
    )


@router.get(
    "/operations", response_model=list[OperationOut], responses=READ_ERRORS, tags=["operations"]
)
async def list_operations(ctx: Ctx) -> list[dict[str, Any]]:
    """Operations of this dashboard process, newest first."""
    return [op.to_dict() for op in ctx.operations.list()]


@router.get(
    "/operations/{op_id}", response_model=OperationOut, responses=OP_ERRORS, tags=["operations"]
)
async def get_operation(ctx: Ctx, op_id: OpId) -> dict[str, Any]:
    """Status, total, processed, failed and progress of one operation."""
    op = ctx.operations.get(op_id)
    if op is None:
        raise HTTPException(404, f"no operation {op_id}")
    return op.to_dict()


@router.delete(
    "/operations/{op_id}", response_model=OperationOut, responses=OP_ERRORS, tags=["operations"]
)
async def cancel_operation(ctx: Ctx, op_id: OpId) -> dict[str, Any]:
    """Cancel an operation: it stops after its current batch."""
    op = await ctx.operations.cancel(op_id)
    if op is None:
        raise HTTPException(404, f"no operation {op_id}")
    return op.to_dict()


# ---------------------------------------------------------------------- errors
@router.get("/errors", response_model=ErrorReportOut, responses=READ_ERRORS, tags=["errors"])
async def list_errors(
    ctx: Ctx, limit: Annotated[int, Query(ge=1, le=SCAN_LIMIT)] = SCAN_LIMIT
) -> dict[str, Any]:
    """Failed and AwaitingRetry jobs grouped by fingerprint (exception type,
    normalized message, top frame), over the newest ``limit`` failures."""
    return (await group_errors(ctx.storage, scan_limit=limit)).to_dict()


async def _group_operation(ctx: DashboardContext, fp: str, action: Action) -> JSONResponse:
    return await _create(ctx, action, ids=None, job_filter=JobFilter(error=fp), dry_run=False)


GROUP_RESPONSES = {
    **READ_ERRORS,
    202: {"model": OperationCreated, "description": "The operation started"},
}


@router.post(
    "/errors/{fp}:retry",
    status_code=202,
    response_model=OperationCreated,
    responses=GROUP_RESPONSES,
    tags=["errors"],
)
async def retry_error_group(ctx: Ctx, fp: Fingerprint) -> JSONResponse:
    """Retry every Failed or AwaitingRetry job of the group (an operation)."""
    return await _group_operation(ctx, fp, Action.RETRY)


@router.post(
    "/errors/{fp}:delete",
    status_code=202,
    response_model=OperationCreated,
    responses=GROUP_RESPONSES,
    tags=["errors"],
)
async def delete_error_group(ctx: Ctx, fp: Fingerprint) -> JSONResponse:
    """Delete every Failed or AwaitingRetry job of the group (an operation)."""
    return await _group_operation(ctx, fp, Action.DELETE)
