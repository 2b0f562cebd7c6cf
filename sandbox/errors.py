"""The sandbox's errors; each carries the HTTP status the server answers it with."""

from __future__ import annotations


class SandboxError(Exception):
    """A request or mutation the sandbox refuses; ``status`` is its HTTP answer."""

    status = 400

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status


class InvalidInput(SandboxError):
    """Bad JSON, a missing field or a field of the wrong type."""

    status = 400


class NotFound(SandboxError):
    """Unknown tenant, user, role, operation or hierarchy entity."""

    status = 404


class Unauthorized(SandboxError):
    """The bearer token is missing or wrong."""

    status = 401


class PublishFailed(SandboxError):
    """The data changed but the event could not be published on Redis (a lost event)."""

    status = 503

    def __init__(self, message: str, event: dict[str, object]) -> None:
        super().__init__(message)
        self.event = event
