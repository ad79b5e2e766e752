"""What a check says: a status, a sentence, and a hint for fixing it."""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = ["CheckResult", "ClusterError", "Status"]


class ClusterError(RuntimeError):
    """The API could not be reached or configured; the message says which and why."""


class Status(enum.Enum):
    OK = "ok"
    WARN = "warning"
    FAIL = "error"

    @property
    def symbol(self) -> str:
        return {"ok": "✓", "warning": "‼", "error": "×"}[self.value]  # noqa: RUF001 (linkerd check)


@dataclass(frozen=True, slots=True)
class CheckResult:
    category: str
    name: str
    status: Status
    detail: str = ""
    hint: str = ""

    def as_dict(self) -> dict[str, str]:
        return {
            "category": self.category,
            "name": self.name,
            "status": self.status.value,
            "detail": self.detail,
            "hint": self.hint,
        }
