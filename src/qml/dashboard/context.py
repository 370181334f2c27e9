"""What every route of one dashboard app shares."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, Request

from ..storage.base import Storage
from .reads import StorageCalls
from .views import ViewBuilder

if TYPE_CHECKING:
    from .hub import ChangeHub
    from .operations import OperationManager


@dataclass(slots=True)
class DashboardContext:
    """The storage, the view builder (redaction) and the change feed of one app."""

    storage: Storage
    views: ViewBuilder
    hub: ChangeHub
    read_only: bool
    operations: OperationManager
    #: A server whose heartbeat is older than this many seconds is shown dead.
    server_dead_after: float = 60.0
    #: Storage calls made through ``storage`` (``/metrics``).
    storage_calls: StorageCalls = field(default_factory=StorageCalls)


def get_context(request: Request) -> DashboardContext:
    """FastAPI dependency: the context of the app serving ``request``."""
    ctx: DashboardContext = request.app.state.qml
    return ctx


#: Route parameter annotation for the app's context.
Ctx = Annotated[DashboardContext, Depends(get_context)]
