"""Per-model permissions (reader < writer < owner) and the one decision function that uses them.

A principal that may not read a model is told the model does not exist (404), so names of other
tenants' models do not leak; a principal that may read but not write gets 403. An API key's scope
(``auth/principals.py::Scope``) narrows this further, here and nowhere else: a model outside the key's
model patterns is a 404 exactly like a missing one, and an action outside its actions a 403 that names
the scope it lacks. Listings that cannot ask row by row (jobs, audit) filter in SQL with
:func:`names_within`.
"""

from __future__ import annotations

from typing import Literal

from sqlalchemy import ColumnElement, SQLColumnExpression, false, or_, select
from sqlalchemy.orm import Session

from modelport.auth.principals import KeyAction, Principal, missing_scope
from modelport.errors import BadRequest, ModelNotFound, PermissionDenied
from modelport.registry.tables import Model, Permission

ModelRole = Literal["reader", "writer", "owner"]
MODEL_ROLES: tuple[ModelRole, ...] = ("reader", "writer", "owner")
RANK: dict[str, int] = {"reader": 1, "writer": 2, "owner": 3}
Action = Literal["infer", "read", "write", "own"]
NEEDS: dict[Action, int] = {"infer": 1, "read": 1, "write": 2, "own": 3}
ACTION_WORDS: dict[Action, str] = {
    "infer": "run",
    "read": "read",
    "write": "change",
    "own": "administer",
}
SCOPE_OF: dict[Action, KeyAction] = {"infer": "infer", "read": "read", "write": "write", "own": "write"}
"""The key scope action each model action needs."""


def in_scope(principal: Principal, model_name: str) -> bool:
    """Whether the caller's key reaches the model named ``model_name`` at all."""
    return principal.scope is None or principal.scope.covers(model_name)


def model_patterns(principal: Principal) -> tuple[str, ...] | None:
    """The key's model patterns, or None when it reaches every model (no patterns, or ``*``)."""
    scope = principal.scope
    if scope is None or scope.models is None or "*" in scope.models:
        return None
    return scope.models


def names_within(
    patterns: tuple[str, ...], column: SQLColumnExpression[str], *, ref: bool = False
) -> ColumnElement[bool]:
    """SQL for ``Scope.covers``: ``column`` holds a model name inside ``patterns`` (``ref``: or a reference
    to one, ``name:3`` / ``name@alias``). A prefix pattern is a LIKE with its wildcards escaped; NULL
    matches nothing."""
    terms: list[ColumnElement[bool]] = []
    for pattern in patterns:
        if pattern.endswith("*"):
            terms.append(column.startswith(pattern[:-1], autoescape=True))
            continue
        terms.append(column == pattern)
        if ref:  # names hold neither ":" nor "@", so what precedes the first one is the name
            terms += [
                column.startswith(pattern + ":", autoescape=True),
                column.startswith(pattern + "@", autoescape=True),
            ]
    return or_(*terms) if terms else false()


def granted_role(session: Session, principal_name: str, model_id: int) -> str | None:
    """The role a permission row gives ``principal_name`` on the model (no admin rule, no key scope)."""
    return session.scalar(
        select(Permission.role).where(Permission.model_id == model_id, Permission.principal == principal_name)
    )


def role_of(session: Session, principal: Principal, model: Model) -> str | None:
    """The principal's effective role on ``model`` (admins are owners everywhere their key reaches)."""
    if not in_scope(principal, model.name):
        return None
    if principal.role == "admin":
        return "owner"
    return granted_role(session, principal.name, model.id)


def decide(principal: Principal, model_name: str, role: str | None, action: Action) -> str:
    """THE decision: ``role`` if the caller may do ``action`` on the model, else ModelNotFound (cannot
    see it: no role, or outside the key's models) or PermissionDenied (key scope, then role rank)."""
    scope = principal.scope
    if role is None or (scope is not None and not scope.covers(model_name)):
        raise ModelNotFound(name=model_name)
    if scope is not None and not scope.allows(SCOPE_OF[action]):
        raise missing_scope(SCOPE_OF[action], f"model {model_name!r}")
    if RANK[role] < NEEDS[action]:
        raise PermissionDenied(action=ACTION_WORDS[action], target=f"model {model_name!r}")
    return role


def require(session: Session, principal: Principal, model: Model, action: Action) -> str:
    """Return the principal's role or raise ModelNotFound (cannot read) / PermissionDenied."""
    return decide(principal, model.name, role_of(session, principal, model), action)


def readable_model_ids(session: Session, principal: Principal) -> list[int] | None:
    """Ids of models the principal may read, or None meaning all (unscoped admins); 403 for a key
    without the ``read`` scope, as for one model."""
    scope = principal.scope
    if scope is not None and not scope.allows("read"):
        raise missing_scope("read", "models")
    if principal.role == "admin":
        if scope is None or scope.models is None:
            return None
        rows = session.execute(select(Model.id, Model.name))
    else:
        rows = session.execute(
            select(Model.id, Model.name)
            .join(Permission, Permission.model_id == Model.id)
            .where(Permission.principal == principal.name)
        )
    return [int(i) for i, name in rows if scope is None or scope.covers(name)]


def check_new_model(principal: Principal, model_name: str) -> None:
    """For a model that may not exist yet (creating it, a job's target): the key needs the ``write``
    scope and the name inside its model patterns (403: the caller chose the name, nothing leaks)."""
    scope = principal.scope
    if scope is None:
        return
    if not scope.allows("write"):
        raise missing_scope("write", f"model {model_name!r}")
    if not scope.covers(model_name):
        raise PermissionDenied(action="create", target=f"model {model_name!r}: outside this API key's models")


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
