"""Who may change what: with DISTILL_AUTH=on, an experiment and its runs are changed by their owner
or an admin (DISTILL_ADMINS); everyone with a token may read everything. With auth off everyone is
anonymous (None) and may do everything."""

from __future__ import annotations

from app.auth import auth_enabled
from app.models import Experiment, Sweep
from app.services.errors import ForbiddenError
from app.settings import get_settings


def may_change(user: str | None, experiment: Experiment | Sweep) -> bool:
    if not auth_enabled():
        return True
    return user is not None and (experiment.owner == user or user in get_settings().admin_names)


def check_may_change(user: str | None, experiment: Experiment, action: str) -> None:
    """ForbiddenError naming the owner unless `user` may `action` (e.g. "cancel a run of") the experiment."""
    if not may_change(user, experiment):
        raise ForbiddenError(
            f"{user or 'an anonymous user'} may not {action} experiment {experiment.id}: it belongs to "
            f"{experiment.owner or 'nobody'}, and only its owner or an admin may change it"
        )


def check_may_change_sweep(user: str | None, sweep: Sweep, action: str) -> None:
    """ForbiddenError naming the owner unless `user` may `action` (e.g. "cancel") the sweep."""
    if not may_change(user, sweep):
        raise ForbiddenError(
            f"{user or 'an anonymous user'} may not {action} sweep {sweep.id}: it belongs to "
            f"{sweep.owner or 'nobody'}, and only its owner or an admin may change it"
        )
