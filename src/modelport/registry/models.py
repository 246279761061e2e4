"""Registered models: create, list, get, update, delete."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from modelport.auth.principals import Principal
from modelport.errors import BadRequest, ModelExists, ModelHasAliases, ModelNotFound
from modelport.refs import check_name
from modelport.registry import acl, audit
from modelport.registry.db import Database
from modelport.registry.tables import Alias, Model, Version, utcnow
from modelport.registry.views import ModelView

MAX_TAGS = 32


def _check_tags(tags: list[str]) -> list[str]:
    if len(tags) > MAX_TAGS:
        raise BadRequest(message=f"at most {MAX_TAGS} tags per model")
    return sorted({check_name(t, kind="tag") for t in tags})


def load_model(session: Session, name: str) -> Model:
    """The model row by name, or ModelNotFound."""
    check_name(name)
    model = session.scalar(select(Model).where(Model.name == name))
    if model is None:
        raise ModelNotFound(name=name)
    return model


def visible_model(session: Session, principal: Principal, name: str, action: acl.Action) -> tuple[Model, str]:
    """The model and the caller's role, after the permission check for ``action``."""
    model = load_model(session, name)
    role = acl.require(session, principal, model, action)
    return model, role


def view(session: Session, model: Model, role: str | None = None) -> ModelView:
    latest = session.scalar(select(func.max(Version.number)).where(Version.model_id == model.id))
    rows = session.execute(
        select(Alias.name, Version.number)
        .join(Version, Alias.version_id == Version.id)
        .where(Alias.model_id == model.id)
        .order_by(Alias.name)
    )
    return ModelView(
        name=model.name,
        description=model.description,
        tags=list(model.tags),
        owner=model.owner,
        created_at=model.created_at,
        updated_at=model.updated_at,
        latest_version=latest,
        aliases={str(a): int(n) for a, n in rows},
        your_role=role,
    )


def create_model(
    db: Database,
    principal: Principal,
    *,
    name: str,
    description: str = "",
    tags: list[str] | None = None,
    client: str | None = None,
) -> ModelView:
    """Create a model owned by the caller (a scoped key: only a name inside its patterns, with ``write``)."""
    check_name(name)
    acl.check_new_model(principal, name)
    clean_tags = _check_tags(tags or [])
    with db.write() as s:
        if s.scalar(select(Model.id).where(Model.name == name)) is not None:
            raise ModelExists(name=name)
        model = Model(name=name, description=description, tags=clean_tags, owner=principal.name)
        s.add(model)
        s.flush()
        acl.set_permission(s, model, principal.name, "owner")
        audit.record(s, actor=principal.name, action="model.create", target=name, client=client)
        return view(s, model, "owner")


def list_models(
    db: Database,
    principal: Principal,
    *,
    prefix: str | None = None,
    tag: str | None = None,
    limit: int = 50,
    offset: int = 0,
) -> tuple[list[ModelView], int]:
    """Models the caller may read, by name; returns (page, total matching)."""
    with db.read() as s:
        q = select(Model).order_by(Model.name)
        ids = acl.readable_model_ids(s, principal)
        if ids is not None:
            q = q.where(Model.id.in_(ids))
        if prefix:
            q = q.where(Model.name.startswith(prefix, autoescape=True))
        rows = list(s.scalars(q))
        if tag:
            rows = [m for m in rows if tag in m.tags]
        page = rows[offset : offset + limit]
        return [view(s, m, acl.role_of(s, principal, m)) for m in page], len(rows)


def get_model(db: Database, principal: Principal, name: str) -> ModelView:
    with db.read() as s:
        model, role = visible_model(s, principal, name, "read")
        return view(s, model, role)


def update_model(
    db: Database,
    principal: Principal,
    name: str,
    *,
    description: str | None = None,
    tags: list[str] | None = None,
    client: str | None = None,
) -> ModelView:
    with db.write() as s:
        model, role = visible_model(s, principal, name, "write")
        changed: dict[str, object] = {}
        if description is not None:
            model.description = description
            changed["description"] = True
        if tags is not None:
            model.tags = _check_tags(tags)
            changed["tags"] = model.tags
        model.updated_at = utcnow()
        audit.record(
            s,
            actor=principal.name,
            action="model.update",
            target=name,
            details=changed,
            client=client,
        )
        return view(s, model, role)


def delete_model(
    db: Database,
    principal: Principal,
    name: str,
    *,
    force: bool = False,
    client: str | None = None,
) -> list[int]:
    """Delete a model and its versions (ids returned, to unload). Refused while aliases exist unless forced.

    Blobs stay in the store: they are content-addressed and may be shared with other versions.
    """
    with db.write() as s:
        model, _ = visible_model(s, principal, name, "own")
        aliases = list(s.scalars(select(Alias.name).where(Alias.model_id == model.id)))
        if aliases and not force:
            raise ModelHasAliases(model=name, aliases=sorted(aliases))
        version_ids = list(s.scalars(select(Version.id).where(Version.model_id == model.id)))
        s.delete(model)
        audit.record(
            s,
            actor=principal.name,
            action="model.delete",
            target=name,
            details={"force": force, "aliases": sorted(aliases)},
            client=client,
        )
        return version_ids
