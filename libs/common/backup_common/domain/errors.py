"""Domain errors; the gateway turns each into an HTTP status with a JSON body."""


class DomainError(Exception):
    code = "error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class NotFound(DomainError):
    code = "not_found"


class Conflict(DomainError):
    code = "conflict"


class PreconditionFailed(DomainError):
    """The request was made against a version of something that has changed since (If-Match)."""

    code = "precondition_failed"


class Gone(DomainError):
    code = "gone"


class InvalidRequest(DomainError):
    code = "invalid_request"


class Unavailable(DomainError):
    """Something the request needs (a server, a directory) does not answer; trying later may work."""

    code = "unavailable"
