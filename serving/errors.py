"""Domain errors.

Every error the service can raise on purpose is a subclass of :class:`RecsysError`.
The gRPC layer maps them to status codes in exactly one place
(:mod:`serving.api.interceptors`); nothing else decides status codes.
"""

from __future__ import annotations


class RecsysError(Exception):
    """Base class of all deliberate, user-facing errors."""


class InvalidArgumentError(RecsysError):
    """A request or input field is malformed. Names the field and the problem."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


class NotFoundError(RecsysError):
    """A named entity does not exist where no fallback makes sense."""

    def __init__(self, kind: str, entity_id: str) -> None:
        super().__init__(f"unknown {kind}: {entity_id!r}")
        self.kind = kind
        self.entity_id = entity_id


class OverloadedError(RecsysError):
    """The service is at capacity; the caller should back off and retry."""


class NotReadyError(RecsysError):
    """No model is loaded yet."""


class FeatureUnavailableError(RecsysError):
    """The loaded model cannot answer this kind of call (e.g. a bundle without a user index)."""


class NotConfiguredError(FeatureUnavailableError):
    """The server was started without what this call needs (LogEvents without an event log).

    Mapped like its parent (``FAILED_PRECONDITION``): retrying the same server cannot help.
    """


class DeadlineExpired(RecsysError):  # noqa: N818  (a condition of the call, not a failure)
    """The caller's deadline passed before its answer was ready (-> ``DEADLINE_EXCEEDED``).

    Raised by :class:`~serving.api.batcher.MicroBatcher` for a call whose deadline passed
    before its work started (no work is done) or while it waited (its answer is dropped).
    """


class UnauthenticatedError(RecsysError):
    """The call carries no credential, or one the server does not know (-> ``UNAUTHENTICATED``).

    The message never repeats the presented credential.
    """


class PermissionDeniedError(RecsysError):
    """A known caller asked for a service outside its scopes (-> ``PERMISSION_DENIED``)."""


class RateLimitedError(OverloadedError):
    """A caller is over its own request rate (-> ``RESOURCE_EXHAUSTED``, like any overload)."""


class BundleError(RecsysError):
    """A model bundle is missing, corrupt, or incompatible. The message says which file and why."""


class StorageFullError(RecsysError):
    """A store the server writes is out of space or over its quota (-> ``RESOURCE_EXHAUSTED``).

    Nothing of the failed call was stored; the same call succeeds once space is freed, so a
    client retries it with backoff. The message names the store, never a server path.
    """


class StorageUnavailableError(RecsysError):
    """A store the server writes cannot be written now (-> ``UNAVAILABLE``): its file system is
    read-only, permission is denied, or its directory is gone.

    Nothing of the failed call was stored; the store accepts again as soon as the condition
    ends (no restart), so a client retries, here or on another replica.
    """


class BundleVanishedError(StorageUnavailableError):
    """A bundle directory was removed while it was being loaded (a cache clean-up, a person).

    Not a bad bundle: a hot swap that meets it is retried at the next poll, while the old model
    keeps serving.
    """
