"""Reference -> version resolution and the read check, cached for a second.

The hot path must not hit the database on every request; a moved alias, a revoked permission or a new
version is seen within ``TTL_S`` on every process (each process keeps its own cache).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from modelport.auth.principals import Principal
from modelport.errors import Conflict, ModelNotFound
from modelport.refs import parse_ref
from modelport.registry import acl, versions
from modelport.registry.db import Database
from modelport.registry.models import load_model
from modelport.store.bundle import Manifest

TTL_S = 1.0


@dataclass(frozen=True, slots=True)
class Target:
    model_id: int
    model: str
    version_id: int
    version: int
    manifest: Manifest


class Router:
    def __init__(self, db: Database) -> None:
        self.db = db
        self._targets: dict[str, tuple[float, Target]] = {}
        self._roles: dict[tuple[str, int], tuple[float, str | None]] = {}
        self._manifests: dict[int, Manifest] = {}
        self._lock = threading.Lock()

    def resolve(self, principal: Principal, ref_text: str) -> Target:
        """The version ``ref_text`` names, if the principal may read its model (else ModelNotFound)."""
        ref = parse_ref(ref_text)
        key = str(ref)
        now = time.monotonic()
        with self._lock:
            hit = self._targets.get(key)
        if hit is None or now - hit[0] > TTL_S:
            target = self._lookup(principal, key)
            with self._lock:
                if len(self._targets) > 10_000:
                    self._targets.clear()
                self._targets[key] = (now, target)
        else:
            target = hit[1]
        if self._role(principal, target.model_id, target.model, now) is None:
            raise ModelNotFound(name=target.model)
        return target

    def _lookup(self, principal: Principal, key: str) -> Target:
        ref = parse_ref(key)
        with self.db.read() as s:
            model = load_model(s, ref.name)
            if acl.role_of(s, principal, model) is None:
                raise ModelNotFound(name=ref.name)  # before saying anything about its versions
            model, version = versions.resolve(s, ref)
            if version.status != "ready":
                raise Conflict(
                    message=f"version {version.number} of {model.name!r} is {version.status}; "
                    "set its status to ready to serve it"
                )
            manifest = self._manifests.get(version.id)
            if manifest is None:
                manifest = Manifest.model_validate(version.manifest)
                self._manifests[version.id] = manifest
            return Target(
                model_id=model.id,
                model=model.name,
                version_id=version.id,
                version=version.number,
                manifest=manifest,
            )

    def _role(self, principal: Principal, model_id: int, model_name: str, now: float) -> str | None:
        if principal.is_admin:
            return "owner"
        key = (principal.name, model_id)
        with self._lock:
            hit = self._roles.get(key)
        if hit is not None and now - hit[0] <= TTL_S:
            return hit[1]
        with self.db.read() as s:
            role = acl.role_of(s, principal, load_model(s, model_name))
        with self._lock:
            if len(self._roles) > 100_000:
                self._roles.clear()
            self._roles[key] = (now, role)
        return role

    def forget(self) -> None:
        """Drop cached answers (after a write in this process, so it is seen at once here)."""
        with self._lock:
            self._targets.clear()
            self._roles.clear()
