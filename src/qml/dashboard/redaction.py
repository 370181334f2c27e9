"""The one redaction choke point of the dashboard.

Everything job-sourced that leaves the dashboard (HTML pages, the JSON API,
WebSocket frames) passes through :func:`qml.dashboard.views` helpers, which
call the app's redactor on args, result and meta before anything else sees them.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

#: Keys whose values are masked by default (case-insensitive, anywhere in the key).
DEFAULT_SECRET_KEYS = (
    r"pass(word|wd)?|secret|token|api[-_]?key|auth|cookie|session|private|credential"  # noqa: S105
)
#: What a masked value is replaced with.
MASK = "•••• (redacted)"

RedactorFn = Callable[[Any], Any]


class Redactor:
    """Mask the values of mapping keys that look like secrets, recursively.

    ``Redactor()`` uses :data:`DEFAULT_SECRET_KEYS`; pass ``pattern`` to
    choose other keys. Lists and nested mappings are walked; other values are
    returned unchanged. The input is never mutated.
    """

    def __init__(self, pattern: str = DEFAULT_SECRET_KEYS, mask: str = MASK) -> None:
        self._re = re.compile(pattern, re.IGNORECASE)
        self.mask = mask

    def __call__(self, value: Any) -> Any:
        return self._walk(value, 0)

    def _walk(self, value: Any, depth: int) -> Any:
        if depth > 64:
            return self.mask
        if isinstance(value, dict):
            return {
                k: (
                    self.mask
                    if isinstance(k, str) and self._re.search(k)
                    else self._walk(v, depth + 1)
                )
                for k, v in value.items()
            }
        if isinstance(value, list | tuple):
            return [self._walk(v, depth + 1) for v in value]
        return value


def no_redaction(value: Any) -> Any:
    """A redactor that shows everything (for trusted, private deployments)."""
    return value
