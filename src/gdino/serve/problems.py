"""``Problem``: an HTTP error answered as ``{"error": message, "status": code}`` (one line, no
traceback), raised anywhere below the routes. It is a Starlette ``HTTPException`` so that errors
raised while the framework reads a body (the request-size cap) keep their status."""

from __future__ import annotations

from starlette.exceptions import HTTPException


class Problem(HTTPException):
    """An error with its HTTP status (and extra headers such as ``Retry-After``)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(status, message, headers)
        self.status = status
        self.message = message


def problem_body(status: int, message: str) -> dict[str, object]:
    return {"error": message, "status": status}
