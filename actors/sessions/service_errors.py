"""How a call to an HTTP service ends when it fails: one error tree and one
vocabulary of causes for every actor that calls one (the token actor's
token endpoint, the transfer actor's room service).

An I/O shell raises one of these; the actor turns it into a ``cause``
string (:class:`Failure`) and the HTTP ``status`` in the outcome message its
core receives, so the core decides (retry, give up, report) on plain data.
"""

from __future__ import annotations

from bus.errors import HuddleError

__all__ = [
    "BadServiceResponse",
    "Failure",
    "ServiceError",
    "ServiceNotFound",
    "ServiceRefused",
    "ServiceStatus",
    "ServiceUnreachable",
]


class Failure:
    """Causes of a failed call, as outcome messages carry them."""

    REFUSED = "refused"  # 401 / 403: the credentials were refused
    NOT_FOUND = "not-found"  # 404, where the caller gives it a meaning of its own
    UNREACHABLE = "unreachable"  # no answer: connection refused, reset, timed out
    BAD_RESPONSE = "bad-response"  # an answer that is not what the service promises

    @staticmethod
    def http(status: int) -> str:
        """Any other status the service answered with."""
        return f"http-{status}"


class ServiceError(HuddleError):
    """A call to an HTTP service failed. ``cause`` is a :class:`Failure`
    value; ``status`` the HTTP status (0 when no response came)."""

    cause: str = Failure.UNREACHABLE

    def __init__(self, detail: str, *, status: int = 0) -> None:
        self.status = status
        super().__init__(detail)


class ServiceRefused(ServiceError):
    cause = Failure.REFUSED


class ServiceNotFound(ServiceError):
    cause = Failure.NOT_FOUND


class ServiceStatus(ServiceError):
    def __init__(self, detail: str, *, status: int) -> None:
        super().__init__(detail, status=status)
        self.cause = Failure.http(status)


class ServiceUnreachable(ServiceError):
    cause = Failure.UNREACHABLE


class BadServiceResponse(ServiceError):
    cause = Failure.BAD_RESPONSE
