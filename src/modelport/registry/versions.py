"""Versions: numbered 1, 2, 3... per model, immutable once created; resolution of references."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from modelport.auth.principals import Principal
from modelport.errors import (
    AliasInUse,
    AliasNotFound,
    BadRequest,
    FileNotFoundInVersion,
    ReportNotFound,
    VersionNotFound,
)
from modelport.refs import DEFAULT_ALIAS, ModelRef, check_name
from modelport.registry import audit
from modelport.registry.db import Database
from modelport.registry.models import load_model, visible_model
from modelport.registry.tables import Alias, Deployment, Model, Version, VersionFile
from modelport.registry.views import FileView, VersionView
from modelport.store.bundle import Manifest, check_bundle_path

MANIFEST_PATH = "modelport.json"
VERSION_STATUSES = ("ready", "archived")


def deployed_in(session: Session, model: Model, number: int) -> bool:
    """Whether the model's deployment routes or shadows version ``number``."""
    row = session.get(Deployment, model.id)
    if row is None:
        return False
    config = row.config
    shadow = config.get("shadow") or {}
    return number in [r.get("version") for r in config.get("routes", [])] or shadow.get("version") == number


def aliases_of(session: Session, version: Version) -> list[str]:
    return sorted(session.scalars(select(Alias.name).where(Alias.version_id == version.id)))


def view(session: Session, model: Model, version: Version, *, with_files: bool = True) -> VersionView:
    files = (
        [FileView(path=f.path, sha256=f.sha256, size_bytes=f.size_bytes) for f in version.files] if with_files else []
    )
    return VersionView(
        model=model.name,
        version=version.number,
        format=version.format,
        status=version.status,
        description=version.description,
        size_bytes=version.size_bytes,
        created_by=version.created_by,
        created_at=version.created_at,
        aliases=aliases_of(session, version),
        manifest=version.manifest,
        manifest_sha256=version.manifest_sha256,
        files=files,
    )


def load_version(session: Session, model: Model, number: int) -> Version:
    version = session.scalar(select(Version).where(Version.model_id == model.id, Version.number == number))
    if version is None:
        raise VersionNotFound(model=model.name, version=number)
    return version


def commit_version(
    db: Database,
    principal: Principal,
    model_name: str,
    *,
    manifest: Manifest,
    manifest_sha256: str,
    file_sizes: dict[str, int],
    client: str | None = None,
) -> VersionView:
    """Register a version whose blobs are ALREADY stored; the row commits with its files and audit.

    The model row is locked (``FOR UPDATE`` on PostgreSQL; SQLite writes are serialized by
    ``BEGIN IMMEDIATE``) so concurrent uploads get distinct, gap-free numbers.
    """
    with db.write() as s:
        model, _ = visible_model(s, principal, model_name, "write")
        if not db.is_sqlite:
            s.refresh(model, with_for_update=True)
        number = model.next_version
        model.next_version = number + 1
        version = Version(
            model_id=model.id,
            number=number,
            format=manifest.format,
            description=manifest.description,
            manifest_sha256=manifest_sha256,
            manifest=manifest.model_dump(mode="json"),
            size_bytes=sum(file_sizes.values()),
            created_by=principal.name,
        )
        version.files = [
            VersionFile(path=path, sha256=sha, size_bytes=file_sizes[path])
            for path, sha in sorted(manifest.files.items())
        ]
        s.add(version)
        s.flush()
        audit.record(
            s,
            actor=principal.name,
            action="version.create",
            target=f"{model.name}:{number}",
            details={"format": manifest.format, "manifest_sha256": manifest_sha256},
            client=client,
        )
        return view(s, model, version)


def list_versions(
    db: Database,
    principal: Principal,
    model_name: str,
    *,
    limit: int = 50,
    offset: int = 0,
) -> tuple[list[VersionView], int]:
    with db.read() as s:
        model, _ = visible_model(s, principal, model_name, "read")
        total = s.scalar(select(func.count()).select_from(Version).where(Version.model_id == model.id)) or 0
        rows = s.scalars(
            select(Version)
            .where(Version.model_id == model.id)
            .order_by(Version.number.desc())
            .limit(limit)
            .offset(offset)
        )
        return [view(s, model, v, with_files=False) for v in rows], total


def get_version(db: Database, principal: Principal, model_name: str, number: int) -> VersionView:
    with db.read() as s:
        model, _ = visible_model(s, principal, model_name, "read")
        return view(s, model, load_version(s, model, number))


def report_of(db: Database, principal: Principal, model_name: str, number: int) -> dict[str, Any]:
    """The optimize report stored in the version's manifest, with the version it describes."""
    found = get_version(db, principal, model_name, number)
    report = found.manifest.get("report")
    if not isinstance(report, dict):
        raise ReportNotFound(model=found.model, version=found.version)
    return {"model": found.model, "version": found.version, **report}


def get_by_ref(db: Database, principal: Principal, ref: ModelRef) -> VersionView:
    """The version ``ref`` names, if the caller may read its model (404 otherwise, as if missing)."""
    with db.read() as s:
        visible_model(s, principal, ref.name, "read")
        model, version = resolve(s, ref)
        return view(s, model, version)


def update_version(
    db: Database,
    principal: Principal,
    model_name: str,
    number: int,
    *,
    description: str | None = None,
    status: str | None = None,
    client: str | None = None,
) -> VersionView:
    """Only the description and the status (ready/archived) change; the files never do."""
    with db.write() as s:
        model, _ = visible_model(s, principal, model_name, "write")
        version = load_version(s, model, number)
        if status is not None:
            if status not in VERSION_STATUSES:
                raise BadRequest(message=f"status must be one of {', '.join(VERSION_STATUSES)}")
            aliases = aliases_of(s, version)
            if status == "archived" and aliases:
                raise AliasInUse(model=model.name, version=number, aliases=aliases)
            if status == "archived" and deployed_in(s, model, number):
                raise AliasInUse(model=model.name, version=number, aliases=["(deployment)"])
            version.status = status
        if description is not None:
            version.description = description
        audit.record(
            s,
            actor=principal.name,
            action="version.update",
            target=f"{model.name}:{number}",
            details={"status": status, "description": description is not None},
            client=client,
        )
        return view(s, model, version)


def delete_version(
    db: Database,
    principal: Principal,
    model_name: str,
    number: int,
    *,
    client: str | None = None,
) -> int:
    """Delete a version no alias points to; return its id so the caller can unload it."""
    with db.write() as s:
        model, _ = visible_model(s, principal, model_name, "own")
        version = load_version(s, model, number)
        aliases = aliases_of(s, version)
        if aliases:
            raise AliasInUse(model=model.name, version=number, aliases=aliases)
        if deployed_in(s, model, number):
            raise AliasInUse(model=model.name, version=number, aliases=["(deployment)"])
        version_id = version.id
        s.delete(version)
        audit.record(
            s,
            actor=principal.name,
            action="version.delete",
            target=f"{model.name}:{number}",
            client=client,
        )
        return version_id


def find_file(db: Database, principal: Principal, model_name: str, number: int, path: str) -> tuple[str, int]:
    """(sha256, size) of a file of a version, after the read check; ``modelport.json`` is the manifest."""
    with db.read() as s:
        model, _ = visible_model(s, principal, model_name, "read")
        version = load_version(s, model, number)
        if path == MANIFEST_PATH:
            return version.manifest_sha256, -1
        try:
            clean = check_bundle_path(path)
        except BadRequest:
            raise FileNotFoundInVersion(model=model.name, version=number, path=path[:100]) from None
        for f in version.files:
            if f.path == clean:
                return f.sha256, f.size_bytes
        raise FileNotFoundInVersion(model=model.name, version=number, path=clean)


def resolve(session: Session, ref: ModelRef) -> tuple[Model, Version]:
    """The version a reference names: ``name:3``, ``name@alias``, else ``production``, else latest ready."""
    model = load_model(session, ref.name)
    if ref.version is not None:
        return model, load_version(session, model, ref.version)
    alias_name = ref.alias or DEFAULT_ALIAS
    check_name(alias_name, kind="alias")
    version = session.scalar(
        select(Version)
        .join(Alias, Alias.version_id == Version.id)
        .where(Alias.model_id == model.id, Alias.name == alias_name)
    )
    if version is not None:
        return model, version
    if ref.alias is not None:
        raise AliasNotFound(model=model.name, alias=ref.alias)
    version = session.scalar(
        select(Version)
        .where(Version.model_id == model.id, Version.status == "ready")
        .order_by(Version.number.desc())
        .limit(1)
    )
    if version is None:
        raise VersionNotFound(model=model.name, archived_only=_has_versions(session, model))
    return model, version


def _has_versions(session: Session, model: Model) -> bool:
    return session.scalar(select(Version.id).where(Version.model_id == model.id).limit(1)) is not None
