"""Who may use the console: the api-server's own login, Airflow's DAG permissions, and an Admin-only check.

Every route needs an authenticated Airflow user (a bearer token, or the UI's session cookie), read through
Airflow's own ``get_user``. Reading needs read access to the backup DAGs. Actions (every POST) need the
Admin role, which the plugin checks itself: Airflow has no "admin only" check for plugin routes.
"""

from __future__ import annotations

from typing import Annotated
from urllib.parse import urlsplit

from airflow.api_fastapi.app import get_auth_manager
from airflow.api_fastapi.auth.managers.models.base_user import BaseUser
from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity, DagDetails
from airflow.api_fastapi.core_api.security import GetUserDep
from fastapi import Depends, HTTPException, Request, status

# Read access to these DAGs is what "may look at backups" means.
BACKUP_DAGS = ("backup_daily_full", "backup_hourly_incremental", "emergency_restore")
ADMIN_ROLE = "admin"


def user_name(user: BaseUser) -> str:
    return str(user.get_name() or user.get_id())


def user_roles(user: BaseUser) -> list[str]:
    """The user's role names, lower case: ``role`` (simple auth manager) or ``roles`` (FAB and others)."""
    role = getattr(user, "role", None)
    if isinstance(role, str) and role:
        return [role.lower()]
    roles = getattr(user, "roles", None) or []
    return [str(getattr(r, "name", r)).lower() for r in roles]


def is_admin(user: BaseUser) -> bool:
    return ADMIN_ROLE in user_roles(user)


def can_read(user: BaseUser) -> bool:
    manager = get_auth_manager()
    return all(manager.is_authorized_dag(method="GET", details=DagDetails(id=d), user=user) for d in BACKUP_DAGS)


def reader(user: GetUserDep) -> BaseUser:
    """An authenticated user with read access to the backup DAGs (401 without login, 403 without access)."""
    if not can_read(user):
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            f"User '{user_name(user)}' may not read the backup DAGs ({', '.join(BACKUP_DAGS)}): "
            "ask an Airflow administrator for read access to them",
        )
    return user


def check_admin(user: BaseUser, dag_id: str | None = None) -> str | None:
    """Why ``user`` may not act (None when allowed): the Admin role, and run access to ``dag_id``."""
    if not is_admin(user):
        roles = ", ".join(user_roles(user)) or "none"
        return f"User '{user_name(user)}' (role: {roles}) may not do this: backup actions need the Admin role"
    if dag_id and not get_auth_manager().is_authorized_dag(
        method="POST", access_entity=DagAccessEntity.RUN, details=DagDetails(id=dag_id), user=user
    ):
        return f"User '{user_name(user)}' may not trigger {dag_id}"
    return None


def same_origin(request: Request) -> str | None:
    """Why a browser request from another site is refused (None when fine): a cookie must not act cross-site."""
    origin = request.headers.get("origin")
    # Hosts only: behind a TLS-terminating proxy the scheme seen here is not the browser's.
    host = request.headers.get("x-forwarded-host") or request.headers.get("host") or request.url.netloc
    if origin and urlsplit(origin).netloc != host.split(",")[0].strip():
        return f"Requests from {origin} are not accepted: use the console on this server, or an API token"
    return None


ReaderDep = Annotated[BaseUser, Depends(reader)]
