"""Lineage: the chain of parents a version came from (parent version, job, dataset, transform)."""

from __future__ import annotations

from typing import Any

from modelport.auth.principals import Principal
from modelport.errors import ModelportError
from modelport.refs import parse_ref
from modelport.registry import acl
from modelport.registry.db import Database
from modelport.registry.models import load_model, visible_model
from modelport.registry.versions import load_version, resolve

MAX_DEPTH = 100


def chain(db: Database, principal: Principal, model_name: str, number: int) -> list[dict[str, Any]]:
    """The version, then its parent, grandparent...; stops at a parent the caller may not read."""
    out: list[dict[str, Any]] = []
    with db.read() as s:
        model, _ = visible_model(s, principal, model_name, "read")
        version = load_version(s, model, number)
        seen: set[int] = set()
        while version.id not in seen and len(out) < MAX_DEPTH:
            seen.add(version.id)
            lineage = dict(version.manifest.get("lineage") or {})
            out.append(
                {
                    "model": model.name,
                    "version": version.number,
                    "format": version.format,
                    **lineage,
                }
            )
            parent = lineage.get("parent")
            if not parent:
                break
            try:
                ref = parse_ref(str(parent))
                parent_model = load_model(s, ref.name)
                if acl.role_of(s, principal, parent_model) is None:
                    break
                model, version = resolve(s, ref)
            except ModelportError:
                out.append({"ref": str(parent)[:200], "missing": True})
                break
    return out
