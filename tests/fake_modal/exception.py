"""The error classes of `modal.exception` that the backend meets (same names, same bases)."""


class Error(Exception):
    """Base of every modal error."""


class ResourceExhaustedError(Error):
    """The server refused: a rate limit or a quota (gRPC RESOURCE_EXHAUSTED)."""


class NotFoundError(Error):
    pass


class InvalidError(Error):
    pass


class ConflictError(InvalidError):
    pass


class ServiceError(Error):
    pass


class InternalError(Error):
    pass


class TimeoutError(Error):  # noqa: A001 - modal's own name
    pass


class SandboxTimeoutError(TimeoutError):
    pass


class SandboxTerminatedError(Error):
    pass


class ExecTimeoutError(TimeoutError):
    pass
