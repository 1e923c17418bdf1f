"""The errors an application service raises; each says what was wrong in words a user can act on."""

from __future__ import annotations

from core_distill.spec import SpecError

RETRY_AFTER_SECONDS = 5  # the Retry-After of a 503: the database or the broker is away for now


class ServiceError(Exception):
    """Base of the errors below (the API maps each to one status code, the dashboard shows the message)."""


class NotFoundError(ServiceError, LookupError):
    """No such experiment or run (404)."""


class ForbiddenError(ServiceError, PermissionError):
    """The acting user may not change this experiment or run: not its owner, not an admin (403)."""


class ConflictError(ServiceError):
    """The request does not fit the run's current state (cancel a finished run, resume a running one) (409)."""


class QueueUnavailableError(ServiceError):
    """The broker could not be reached; nothing was written (503)."""


class SweepError(SpecError):
    """A sweep that cannot run (422); `problems` maps each place in the request, e.g. ("grid", "beta") or
    ("settings", 2, "lmbda"), to what is wrong there. A SpecError, so whoever shows spec errors shows these."""

    def __init__(self, problems: dict[tuple[str | int, ...], str]):
        self.problems = problems
        super().__init__({".".join(map(str, loc)): msg for loc, msg in problems.items()})


class SweepTooLarge(SweepError):
    """A sweep of more runs than the server's DISTILL_SWEEP_MAX_RUNS allows (a setting, not a schema rule)."""
