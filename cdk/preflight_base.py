"""Preflight's vocabulary: one result line (:class:`Check`), its statuses, and botocore errors on one line."""
from __future__ import annotations

from dataclasses import dataclass

OK, WARN, FAIL = "OK", "WARN", "FAIL"


@dataclass(frozen=True)
class Check:
    """One result line."""

    status: str
    name: str
    detail: str

    def line(self) -> str:
        return f"{self.status:<4}  {self.name:<16} {self.detail}"


def error_text(exc: BaseException) -> str:
    """``Code: message`` of a botocore ClientError (or the exception's text), on one line."""
    err = getattr(exc, "response", {}).get("Error", {}) if hasattr(exc, "response") else {}
    text = f"{err.get('Code')}: {err.get('Message')}" if err else f"{type(exc).__name__}: {exc}"
    return " ".join(text.split())


def error_code(exc: BaseException) -> str:
    return str(getattr(exc, "response", {}).get("Error", {}).get("Code", "")) if hasattr(exc, "response") else ""
