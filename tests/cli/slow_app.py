"""An app whose import takes a while: it announces the import in the file named
by ``$QML_TEST_MARKER`` and then sleeps, so a test can signal a worker that
is still loading its app."""

from __future__ import annotations

import os
import time
from pathlib import Path

from qml import WorkerRegistry

registry = WorkerRegistry()


@registry.job("noop")
async def noop() -> None:
    return None


Path(os.environ["QML_TEST_MARKER"]).write_text("loading")
time.sleep(float(os.environ.get("QML_TEST_LOAD_SECONDS", "2")))
