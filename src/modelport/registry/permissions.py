"""Granting and revoking per-model roles (owners and admins only), with audit."""

from __future__ import annotations

from modelport.auth.principals import Principal
from modelport.errors import BadRequest, NotFound
from modelport.refs import check_name
from modelport.registry import acl, audit
from modelport.registry.db import Database
from modelport.registry.models import visible_model


def grant(
    db: Database,
    principal: Principal,
    model_name: str,
    who: str,
    role: str,
    *,
    client: str | None = None,
) -> dict[str, str]:
    check_name(who, kind="principal")
    with db.write() as s:
        model, _ = visible_model(s, principal, model_name, "own")
        acl.set_permission(s, model, who, role)
        audit.record(
            s,
            actor=principal.name,
            action="permission.set",
            target=model.name,
            details={"principal": who, "role": role},
            client=client,
        )
        return acl.list_permissions(s, model)


def revoke(
    db: Database,
    principal: Principal,
    model_name: str,
    who: str,
    *,
    client: str | None = None,
) -> dict[str, str]:
    check_name(who, kind="principal")
    with db.write() as s:
        model, _ = visible_model(s, principal, model_name, "own")
        current = acl.list_permissions(s, model)
        if current.get(who) == "owner" and list(current.values()).count("owner") == 1:
            raise BadRequest(message=f"{who!r} is the last owner of {model.name!r}; add another owner first")
        if not acl.remove_permission(s, model, who):
            raise NotFound(message=f"{who!r} has no role on model {model.name!r}")
        audit.record(
            s,
            actor=principal.name,
            action="permission.delete",
            target=model.name,
            details={"principal": who},
            client=client,
        )
        return acl.list_permissions(s, model)


def list_for_model(db: Database, principal: Principal, model_name: str) -> dict[str, str]:
    with db.read() as s:
        model, _ = visible_model(s, principal, model_name, "read")
        return acl.list_permissions(s, model)
