"""Aliases: named pointers to versions, set, moved and removed atomically, with their history.

The history is the audit log's ``alias.set`` / ``alias.delete`` rows (append-only, written in the same
transaction as the change), so "which version was production on date X" has one source of truth.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select

from modelport.auth.principals import Principal
from modelport.errors import AliasNotFound, BadRequest
from modelport.refs import check_name
from modelport.registry import audit
from modelport.registry.db import Database
from modelport.registry.models import visible_model
from modelport.registry.tables import Alias, utcnow
from modelport.registry.versions import load_version
from modelport.registry.views import AliasView


def set_alias(
    db: Database,
    principal: Principal,
    model_name: str,
    alias: str,
    number: int,
    *,
    client: str | None = None,
) -> AliasView:
    """Point ``alias`` at version ``number`` in one transaction (create or move); archived versions refused."""
    check_name(alias, kind="alias")
    with db.write() as s:
        model, _ = visible_model(s, principal, model_name, "write")
        version = load_version(s, model, number)
        if version.status != "ready":
            raise BadRequest(
                message=f"version {number} of {model.name!r} is {version.status}; "
                "an alias may only point to a ready version"
            )
        row = s.scalar(select(Alias).where(Alias.model_id == model.id, Alias.name == alias))
        previous = None
        if row is None:
            row = Alias(
                model_id=model.id,
                name=alias,
                version_id=version.id,
                updated_by=principal.name,
            )
            s.add(row)
        else:
            previous = row.version.number
            row.version_id = version.id
            row.updated_by = principal.name
            row.updated_at = utcnow()
        s.flush()
        audit.record(
            s,
            actor=principal.name,
            action="alias.set",
            target=f"{model.name}@{alias}",
            details={"version": number, "previous": previous, "model_id": model.id},
            client=client,
        )
        return AliasView(
            model=model.name,
            alias=alias,
            version=number,
            updated_by=row.updated_by,
            updated_at=row.updated_at,
        )


def delete_alias(
    db: Database,
    principal: Principal,
    model_name: str,
    alias: str,
    *,
    client: str | None = None,
) -> None:
    check_name(alias, kind="alias")
    with db.write() as s:
        model, _ = visible_model(s, principal, model_name, "write")
        row = s.scalar(select(Alias).where(Alias.model_id == model.id, Alias.name == alias))
        if row is None:
            raise AliasNotFound(model=model.name, alias=alias)
        previous = row.version.number
        s.delete(row)
        audit.record(
            s,
            actor=principal.name,
            action="alias.delete",
            target=f"{model.name}@{alias}",
            details={"previous": previous, "model_id": model.id},
            client=client,
        )


def list_aliases(db: Database, principal: Principal, model_name: str) -> list[AliasView]:
    with db.read() as s:
        model, _ = visible_model(s, principal, model_name, "read")
        rows = s.scalars(select(Alias).where(Alias.model_id == model.id).order_by(Alias.name))
        return [
            AliasView(
                model=model.name,
                alias=a.name,
                version=a.version.number,
                updated_by=a.updated_by,
                updated_at=a.updated_at,
            )
            for a in rows
        ]


@dataclass(frozen=True, slots=True)
class AliasMove:
    """One change of an alias: the version it pointed to from ``at`` on (None: deleted then)."""

    version: int | None
    previous: int | None
    at: datetime
    by: str
    client: str | None


def alias_history(db: Database, principal: Principal, model_name: str, alias: str) -> list[AliasMove]:
    """Every set, move and delete of ``alias``, oldest first; readers of the model may ask.

    Only this model's changes: rows of an earlier, deleted model of the same name are left out (they
    predate this model's creation, and newer rows carry the model id).
    """
    check_name(alias, kind="alias")
    with db.read() as s:
        model, _ = visible_model(s, principal, model_name, "read")
        rows = audit.target_history(
            s, target=f"{model.name}@{alias}", actions=("alias.set", "alias.delete"), since=model.created_at
        )
        model_id = model.id
    return [
        AliasMove(
            version=r.details.get("version") if r.action == "alias.set" else None,
            previous=r.details.get("previous"),
            at=r.at,
            by=r.actor,
            client=r.client,
        )
        for r in rows
        if r.details.get("model_id", model_id) == model_id
    ]


def alias_at(db: Database, principal: Principal, model_name: str, alias: str, when: datetime) -> AliasMove:
    """The change in force at ``when`` (timezone-aware); AliasNotFound if the alias did not exist then."""
    current = None
    for move in alias_history(db, principal, model_name, alias):
        if move.at > when:
            break
        current = move
    if current is None or current.version is None:
        raise AliasNotFound(model=model_name, alias=alias)
    return current
