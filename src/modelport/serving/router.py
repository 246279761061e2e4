"""Reference -> version resolution, traffic split and shadow, and the ``infer`` check, cached for a second.

The hot path must not hit the database on every request; a moved alias, a changed deployment, a revoked
permission or a new version is seen within ``TTL_S`` on every process (each process keeps its own
cache). A moved alias never fails a request: the old answer stays valid until the new one replaces it.
An answer is as fresh as the latest read of the registry's change counter that found it unchanged
(``registry/changes.py``), so while nothing changes one tiny query per process keeps every entry fresh.

A plain ``name`` follows the model's deployment when it has routes (weighted choice per request), else
the ``production`` alias, else the latest ready version; ``name:3`` and ``name@alias`` are exact.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass

from sqlalchemy.orm import Session

from modelport.auth.principals import Principal
from modelport.errors import Conflict, ModelNotFound, ModelportError
from modelport.refs import ModelRef, parse_ref
from modelport.registry import acl, changes, deployments, versions
from modelport.registry.db import Database
from modelport.registry.models import load_model
from modelport.registry.tables import Model, Version
from modelport.serving.devices import Device
from modelport.store.bundle import Manifest

TTL_S = 1.0
REFRESH_AFTER_S = TTL_S / 2
"""An answer this old is still served, and looked up again in the background (``InferenceService``),
so that under steady traffic no request waits for the database; one older than ``TTL_S`` never is."""


@dataclass(frozen=True, slots=True)
class Target:
    model_id: int
    model: str
    version_id: int
    version: int
    manifest: Manifest
    device: Device = "cpu"


@dataclass(frozen=True, slots=True)
class Resolution:
    """Where a reference leads: one target, or several by weight; plus an optional shadow."""

    targets: tuple[Target, ...]
    weights: tuple[float, ...]
    shadow: Target | None = None
    shadow_share: float = 0.0

    @property
    def model_id(self) -> int:
        return self.targets[0].model_id

    @property
    def model(self) -> str:
        return self.targets[0].model

    def pick(self) -> Target:
        if len(self.targets) == 1:
            return self.targets[0]
        return random.choices(self.targets, weights=self.weights)[0]

    def mirror(self, served: Target) -> Target | None:
        """The shadow target for this request, or None (``shadow_share`` of requests are mirrored).

        Never the version that ``served`` the request: a canary split can route to the shadow version
        too, and comparing its answer with itself would only double its work and count an "agree"."""
        shadow = self.shadow
        if shadow is None or shadow.version_id == served.version_id or random.random() * 100 >= self.shadow_share:
            return None
        return shadow


class Router:
    def __init__(self, db: Database, watch: changes.ChangeWatch | None = None) -> None:
        self.db = db
        self.watch = watch or changes.ChangeWatch(db)
        self._cache: dict[str, tuple[float, int, Resolution]] = {}
        """ref -> (when it was looked up, the change counter it was looked up under, the answer)"""
        self._roles: dict[tuple[str, int], tuple[float, int, str | None]] = {}
        self._manifests: dict[int, Manifest] = {}
        self._lock = threading.Lock()

    # -- the hot path -----------------------------------------------------------------------------
    def cached(self, principal: Principal, ref_text: str) -> tuple[Resolution, bool] | None:
        """The answer from the caches alone (no database), and whether it is due for a refresh (older
        than ``REFRESH_AFTER_S``); None when either entry is stale (past ``TTL_S``) or missing.

        The ``infer`` decision (key scope included) is ``acl.decide``, as on every other path."""
        now = time.monotonic()
        fresh_since = self.watch.fresh_since
        with self._lock:
            hit = self._cache.get(ref_text)
            if hit is None:
                return None
            age = now - fresh_since(hit[0], hit[1])
            if age > TTL_S:
                return None
            resolution = hit[2]
            if principal.role == "admin":
                if principal.scope is None:  # what acl.decide answers for an unscoped admin, without the call
                    return resolution, age > REFRESH_AFTER_S
                role: str | None = "owner"
            else:
                granted = self._roles.get((principal.name, resolution.model_id))
                if granted is None:
                    return None
                age = max(age, now - fresh_since(granted[0], granted[1]))
                if age > TTL_S:
                    return None
                role = granted[2]
        acl.decide(principal, resolution.model, role, "infer")
        return resolution, age > REFRESH_AFTER_S

    def route(
        self, principal: Principal, ref_text: str, action: acl.Action = "infer", *, max_age: float = TTL_S
    ) -> Resolution:
        """Resolve ``ref_text`` (may read the database: call off the event loop on a cache miss); cached
        answers older than ``max_age`` are looked up again (``REFRESH_AFTER_S`` for a refresh), unless
        the change counter, read first, says nothing changed since."""
        parse_ref(ref_text)  # validate before the text becomes a cache key
        with self._lock:
            hit = self._cache.get(ref_text)
        if hit is not None and not self.watch.fresh(hit[0], hit[1], max_age):
            hit = None
        if hit is None:
            now = time.monotonic()
            counter, resolution = self._lookup(principal, ref_text)
            with self._lock:
                if len(self._cache) > 10_000:
                    self._cache.clear()
                self._cache[ref_text] = (now, counter, resolution)
        else:
            resolution = hit[2]
        role = self._role(principal, resolution.model_id, max_age)
        acl.decide(principal, resolution.model, role, action)
        return resolution

    def refresh(self, principal: Principal, ref_text: str) -> Resolution:
        """Look ``ref_text`` up again now, ahead of its entries' expiry (in a worker thread). An answer
        that no longer holds (the model gone, or no longer this principal's to use) is dropped, so the
        next request looks it up itself and gets the error, instead of the old answer for the rest of
        the second."""
        try:
            return self.route(principal, ref_text, max_age=REFRESH_AFTER_S)
        except ModelportError:
            with self._lock:
                hit = self._cache.pop(ref_text, None)
                if hit is not None:
                    self._roles.pop((principal.name, hit[2].model_id), None)
            raise

    def resolve(self, principal: Principal, ref_text: str, action: acl.Action = "infer") -> Target:
        """One target for ``ref_text`` (a weighted pick when the model splits traffic)."""
        return self.route(principal, ref_text, action).pick()

    # -- database lookups -------------------------------------------------------------------------
    def _lookup(self, principal: Principal, ref_text: str) -> tuple[int, Resolution]:
        """The change counter (read first) and the answer."""
        ref = parse_ref(ref_text)
        with self.db.read() as s:
            counter = changes.read(s)
            model = load_model(s, ref.name)
            if acl.role_of(s, principal, model) is None:
                raise ModelNotFound(name=ref.name)  # before saying anything about its versions
            config = deployments.config_of(s, model)
            device: Device = config.device if config is not None else "cpu"
            if ref.version is None and ref.alias is None and config is not None:
                split = self._split(s, model, config)
                if split is not None:
                    return counter, split
            return counter, Resolution(targets=(self._exact(s, ref, device),), weights=(1.0,))

    def _exact(self, s: Session, ref: ModelRef, device: Device) -> Target:
        model, version = versions.resolve(s, ref)
        return self._target(model, version, device)

    def _split(self, s: Session, model: Model, config: deployments.DeploymentConfig) -> Resolution | None:
        if not config.routes and config.shadow is None:
            return None
        device = config.device
        if config.routes:
            targets = tuple(
                self._target(model, versions.load_version(s, model, r.version), device) for r in config.routes
            )
            weights = tuple(r.weight for r in config.routes)
        else:
            targets, weights = (self._exact(s, ModelRef(model.name), device),), (1.0,)
        shadow = None
        if config.shadow is not None:
            shadow = self._target(model, versions.load_version(s, model, config.shadow.version), device)
        share = config.shadow.percent if config.shadow is not None else 0.0
        return Resolution(targets=targets, weights=weights, shadow=shadow, shadow_share=share)

    def _target(self, model: Model, version: Version, device: Device) -> Target:
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
            device=device,
        )

    def _role(self, principal: Principal, model_id: int, max_age: float = TTL_S) -> str | None:
        """The role a permission row grants (cached per principal name; the key's scope is applied by
        ``acl.decide`` on every request, so keys of one principal with different scopes share it)."""
        if principal.role == "admin":
            return "owner"
        key = (principal.name, model_id)
        with self._lock:
            hit = self._roles.get(key)
        if hit is not None and self.watch.fresh(hit[0], hit[1], max_age):
            return hit[2]
        now = time.monotonic()
        with self.db.read() as s:
            counter = changes.read(s)
            role = acl.granted_role(s, principal.name, model_id)
        with self._lock:
            if len(self._roles) > 100_000:
                self._roles.clear()
            self._roles[key] = (now, counter, role)
        return role

    def forget(self) -> None:
        """Drop cached answers (after a write in this process, so it is seen at once here)."""
        with self._lock:
            self._cache.clear()
            self._roles.clear()
