"""Per-model permissions (reader < writer < owner) and the one decision function that uses them.

A principal that may not read a model is told the model does not exist (404), so names of other
tenants' models do not leak; a principal that may read but not write gets 403.
"""

from __future__ import annotations

from typing import Literal

from sqlalchemy import select
from sqlalchemy.orm import Session

from modelport.auth.principals import Principal
from modelport.errors import BadRequest, ModelNotFound, PermissionDenied
from modelport.registry.tables import Model, Permission

ModelRole = Literal["reader", "writer", "owner"]
MODEL_ROLES: tuple[ModelRole, ...] = ("reader", "writer", "owner")
RANK: dict[str, int] = {"reader": 1, "writer": 2, "owner": 3}
Action = Literal["read", "write", "own"]
NEEDS: dict[Action, int] = {"read": 1, "write": 2, "own": 3}
ACTION_WORDS: dict[Action, str] = {
    "read": "read",
    "write": "change",
    "own": "administer",
}


def role_of(session: Session, principal: Principal, model: Model) -> str | None:
    """The principal's effective role on ``model`` (admins are owners everywhere)."""
    if principal.is_admin:
        return "owner"
    return session.scalar(
        select(Permission.role).where(Permission.model_id == model.id, Permission.principal == principal.name)
    )


def require(session: Session, principal: Principal, model: Model, action: Action) -> str:
    """Return the principal's role or raise ModelNotFound (cannot read) / PermissionDenied."""
    role = role_of(session, principal, model)
    if role is None:
        raise ModelNotFound(name=model.name)
    if RANK[role] < NEEDS[action]:
        raise PermissionDenied(action=ACTION_WORDS[action], target=f"model {model.name!r}")
    return role


def readable_model_ids(session: Session, principal: Principal) -> list[int] | None:
    """Ids of models the principal may read, or None meaning all (admins)."""
    if principal.is_admin:
        return None
    return list(session.scalars(select(Permission.model_id).where(Permission.principal == principal.name)))


def set_permission(session: Session, model: Model, principal_name: str, role: str) -> None:
    if role not in MODEL_ROLES:
        raise BadRequest(message=f"role must be one of {', '.join(MODEL_ROLES)}")
    row = session.scalar(
        select(Permission).where(Permission.model_id == model.id, Permission.principal == principal_name)
    )
    if row is None:
        session.add(Permission(model_id=model.id, principal=principal_name, role=role))
    else:
        row.role = role


def remove_permission(session: Session, model: Model, principal_name: str) -> bool:
    row = session.scalar(
        select(Permission).where(Permission.model_id == model.id, Permission.principal == principal_name)
    )
    if row is None:
        return False
    session.delete(row)
    return True


def list_permissions(session: Session, model: Model) -> dict[str, str]:
    rows = session.execute(
        select(Permission.principal, Permission.role)
        .where(Permission.model_id == model.id)
        .order_by(Permission.principal)
    )
    return {str(p): str(r) for p, r in rows}
