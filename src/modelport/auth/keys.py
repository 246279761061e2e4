"""API keys: created random, shown once, stored as sha256, looked up by hash, compared in constant time."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import select

from modelport.auth.principals import ROLES, Principal, Role, Scope
from modelport.errors import BadRequest, Conflict, KeyNotFound, PermissionDenied, Unauthenticated
from modelport.refs import check_name
from modelport.registry import audit, changes
from modelport.registry.db import Database
from modelport.registry.tables import ApiKey, utcnow

KEY_PREFIX = "mp_"
SHOWN_PREFIX_LEN = 11
CACHE_TTL_S = 1.0
"""A revoked key stops working within this many seconds on every process (an answer is as fresh as the
latest read of the registry's change counter that found it unchanged: ``registry/changes.py``)."""
REFRESH_AFTER_S = CACHE_TTL_S / 2
"""A good answer this old is still used, and looked up again in the background (``api/fastpath.py``)."""
_N = TypeVar("_N", int, float)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def generate_key() -> str:
    """43 characters of base64url over 32 random bytes, after the ``mp_`` prefix."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


@dataclass(frozen=True, slots=True)
class KeyLimits:
    """Per-key overrides of the server's limits; ``bucket`` names the rate bucket the key shares."""

    rate_limit_rps: float | None = None
    max_concurrent_jobs: int | None = None
    bucket: str | None = None

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> KeyLimits:
        data = data or {}
        rps, jobs, bucket = data.get("rate_limit_rps"), data.get("max_concurrent_jobs"), data.get("bucket")
        return cls(
            rate_limit_rps=float(rps) if rps is not None else None,
            max_concurrent_jobs=int(jobs) if jobs is not None else None,
            bucket=str(bucket) if bucket is not None else None,
        )

    def to_json(self) -> dict[str, Any] | None:
        out = {k: v for k, v in asdict(self).items() if v is not None}
        return out or None


@dataclass(frozen=True, slots=True)
class KeySpec:
    """Everything a key is but its secret."""

    name: str
    role: str = "member"
    expires_at: datetime | None = None
    scope: Scope | None = None
    """None: the role's full rights."""
    service_account: bool = False
    limits: KeyLimits = KeyLimits()


@dataclass(frozen=True, slots=True)
class KeyInfo:
    id: str
    principal: str
    role: str
    prefix: str
    created_by: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    scopes: dict[str, Any] | None
    service_account: bool
    rate_limit_rps: float | None
    max_concurrent_jobs: int | None


def _info(row: ApiKey) -> KeyInfo:
    limits = KeyLimits.from_json(row.limits)
    return KeyInfo(
        id=row.id,
        principal=row.principal,
        role=row.role,
        prefix=row.prefix,
        created_by=row.created_by,
        created_at=row.created_at,
        expires_at=row.expires_at,
        revoked_at=row.revoked_at,
        scopes=row.scopes,
        service_account=bool(row.service_account),
        rate_limit_rps=limits.rate_limit_rps,
        max_concurrent_jobs=limits.max_concurrent_jobs,
    )


def _check_spec(spec: KeySpec) -> None:
    check_name(spec.name, kind="principal")
    if spec.role not in ROLES:
        raise BadRequest(message=f"role must be one of {', '.join(ROLES)}")
    if spec.expires_at is not None and spec.expires_at.tzinfo is None:
        raise BadRequest(message="expires_at needs a time zone, e.g. 2030-01-01T00:00:00Z")
    if spec.expires_at is not None and spec.expires_at <= utcnow():
        raise BadRequest(message="expires_at must be in the future")
    if spec.role != "admin" and spec.scope is not None and spec.scope.actions and "admin" in spec.scope.actions:
        raise BadRequest(message="the 'admin' scope needs role admin")


def _new_row(spec: KeySpec, secret: str, actor: str) -> ApiKey:
    if len(secret) < 32:
        raise BadRequest(message="an API key must be at least 32 characters")
    return ApiKey(
        id="key_" + secrets.token_hex(8),
        principal=spec.name,
        role=spec.role,
        prefix=secret[:SHOWN_PREFIX_LEN],
        hash=hash_key(secret),
        created_by=actor,
        expires_at=spec.expires_at,
        scopes=spec.scope.to_json() if spec.scope is not None else None,
        service_account=spec.service_account,
        limits=spec.limits.to_json(),
    )


def create_key(
    db: Database,
    *,
    actor: str,
    name: str,
    role: str,
    expires_at: datetime | None = None,
    key: str | None = None,
    client: str | None = None,
    scope: Scope | None = None,
    service_account: bool = False,
    limits: KeyLimits | None = None,
) -> tuple[KeyInfo, str]:
    """Create a key for principal ``name``; return its record and the key itself (shown only now).

    No permission check: callers acting for someone use ``issue_key``."""
    spec = KeySpec(name, role, expires_at, scope, service_account, limits or KeyLimits())
    _check_spec(spec)
    secret = key or generate_key()
    row = _new_row(spec, secret, actor)
    with db.write() as s:
        s.add(row)
        s.flush()
        details: dict[str, Any] = {"principal": name, "role": role, "service_account": service_account}
        if row.scopes is not None:
            details["scopes"] = row.scopes
        audit.record(s, actor=actor, action="key.create", target=row.id, client=client, details=details)
    return _info(row), secret


def issue_key(db: Database, issuer: Principal, spec: KeySpec, *, client: str | None = None) -> tuple[KeyInfo, str]:
    """Create a key on ``issuer``'s authority: admins any key; anyone else a key for themselves that is
    no wider than the key they call with (role, actions, models, expiry, limits), inheriting those it
    does not set and drawing from the same rate bucket."""
    _check_spec(spec)
    if not issuer.is_admin:
        spec = _narrowed(db, issuer, spec)
    return create_key(
        db,
        actor=issuer.name,
        name=spec.name,
        role=spec.role,
        expires_at=spec.expires_at,
        client=client,
        scope=spec.scope,
        service_account=spec.service_account,
        limits=spec.limits,
    )


def _wider(what: str) -> PermissionDenied:
    return PermissionDenied(action="create", target=f"a key wider than the key you call with ({what})")


def _narrowed(db: Database, issuer: Principal, spec: KeySpec) -> KeySpec:
    if spec.name != issuer.name:
        raise PermissionDenied(action="create", target="keys for other principals (admins only)")
    if spec.role == "admin" and issuer.role != "admin":
        raise _wider("role admin")
    with db.read() as s:
        parent = s.get(ApiKey, issuer.key_id) if issuer.key_id is not None else None
    if parent is None:
        raise PermissionDenied(action="create", target="keys without an API key of your own")
    scope = spec.scope
    if issuer.scope is not None:
        if scope is None:
            scope = issuer.scope
        else:
            actions = scope.actions if scope.actions is not None else issuer.scope.actions
            models = scope.models if scope.models is not None else issuer.scope.models
            scope = Scope(actions=actions, models=models)
        if not scope.within(issuer.scope):
            raise _wider("its actions or models")
    expires_at = spec.expires_at or parent.expires_at
    if parent.expires_at is not None and expires_at is not None and expires_at > parent.expires_at:
        raise _wider(f"it expires at {parent.expires_at.isoformat()}")
    own = KeyLimits.from_json(parent.limits)
    rps = _not_above(spec.limits.rate_limit_rps, own.rate_limit_rps, "rate limit")
    jobs = _not_above(spec.limits.max_concurrent_jobs, own.max_concurrent_jobs, "concurrent jobs")
    limits = KeyLimits(rate_limit_rps=rps, max_concurrent_jobs=jobs, bucket=own.bucket or parent.id)
    return replace(spec, scope=scope, expires_at=expires_at, limits=limits)


def _not_above(wanted: _N | None, own: _N | None, what: str) -> _N | None:
    if own is None:
        return wanted
    if wanted is None:
        return own
    if wanted > own:
        raise _wider(f"its {what} is {own}")
    return wanted


def rotate_key(
    db: Database, issuer: Principal, key_id: str, *, grace_s: float, client: str | None = None
) -> tuple[KeyInfo, KeyInfo, str]:
    """A new key with the same principal, role, scopes, expiry and limits (and rate bucket); the old one
    keeps working for ``grace_s`` seconds more, then expires. Returns (new, old, new secret).

    Admins rotate any key; any other key may rotate itself."""
    if not (issuer.is_admin or issuer.key_id == key_id):
        raise PermissionDenied(action="rotate", target="other keys (admins only; a key may rotate itself)")
    secret = generate_key()
    now = utcnow()
    with db.write() as s:
        old = s.get(ApiKey, key_id)
        if old is None:
            raise KeyNotFound(key_id=key_id[:40])
        if old.revoked_at is not None or (old.expires_at is not None and old.expires_at <= now):
            raise Conflict(message=f"key {old.id} is revoked or expired; create a new key instead")
        limits = KeyLimits.from_json(old.limits)
        spec = KeySpec(
            name=old.principal,
            role=old.role,
            expires_at=old.expires_at,
            scope=Scope.from_json(old.scopes),
            service_account=bool(old.service_account),
            limits=replace(limits, bucket=limits.bucket or old.id),
        )
        new = _new_row(spec, secret, issuer.name)
        s.add(new)
        grace_end = now + timedelta(seconds=grace_s)
        if old.expires_at is None or old.expires_at > grace_end:
            old.expires_at = grace_end
        s.flush()
        details = {"principal": old.principal, "new_key": new.id, "grace_s": grace_s}
        audit.record(s, actor=issuer.name, action="key.rotate", target=old.id, client=client, details=details)
        return _info(new), _info(old), secret


def list_keys(db: Database, *, include_revoked: bool = False) -> list[KeyInfo]:
    with db.read() as s:
        q = select(ApiKey).order_by(ApiKey.created_at)
        if not include_revoked:
            q = q.where(ApiKey.revoked_at.is_(None))
        return [_info(r) for r in s.scalars(q)]


def revoke_key(db: Database, *, actor: str, key_id: str, client: str | None = None) -> KeyInfo:
    with db.write() as s:
        row = s.get(ApiKey, key_id)
        if row is None:
            raise KeyNotFound(key_id=key_id[:40])
        if row.revoked_at is None:
            row.revoked_at = utcnow()
        audit.record(s, actor=actor, action="key.revoke", target=key_id, client=client)
        return _info(row)


def has_admin_key(db: Database) -> bool:
    """Whether a live key may use the admin endpoints (an admin key scoped without ``admin`` may not)."""
    with db.read() as s:
        q = select(ApiKey.scopes).where(ApiKey.role == "admin", ApiKey.revoked_at.is_(None))
        return any(_grants_admin(scopes) for scopes in s.scalars(q))


def _grants_admin(scopes: Mapping[str, Any] | None) -> bool:
    found = Scope.from_json(scopes)
    return found is None or found.allows("admin")


def ensure_admin_key(db: Database, given: str | None) -> str | None:
    """At first start install ``given`` (or a random key) as admin; return the key when one was made.

    When ``given`` is set and no key with its hash exists yet, it is installed even if other admin keys
    exist, so that an operator can always get in with ``MODELPORT_ADMIN_KEY``.
    """
    if given is not None:
        with db.read() as s:
            exists = s.scalar(select(ApiKey.id).where(ApiKey.hash == hash_key(given))) is not None
        if exists:
            return None
        create_key(db, actor="system", name="admin", role="admin", key=given)
        return None
    if has_admin_key(db):
        return None
    _, secret = create_key(db, actor="system", name="admin", role="admin")
    return secret


_Hit = tuple[float, int, Principal | None, datetime | None]
"""(when it was looked up, the change counter it was looked up under, the principal or None for a bad
key, when the key expires)"""


def _verdict(hit: _Hit) -> Principal:
    _, _, principal, expires_at = hit
    if principal is None:
        raise Unauthenticated(reason="invalid or revoked API key")
    if expires_at is not None and expires_at <= utcnow():
        raise Unauthenticated(reason="this API key has expired")
    return principal


class KeyAuthenticator:
    """Turns a bearer key into a Principal; caches answers for CACHE_TTL_S to keep the hot path cheap."""

    def __init__(self, db: Database, watch: changes.ChangeWatch | None = None) -> None:
        self.db = db
        self.watch = watch or changes.ChangeWatch(db)
        self._cache: dict[str, _Hit] = {}
        self._recent: dict[str, _Hit] = {}
        """The same answers by the key itself, for the inference hot path: no hash, no lock (a dict
        read is atomic). Same lifetime: cleared with the cache, and each answer still ages out."""
        self._lock = threading.Lock()

    def cached(self, key: str) -> tuple[Principal, bool] | None:
        """The answer from the cache without touching the database: a Principal and whether it is due
        for a refresh (older than ``REFRESH_AFTER_S``), Unauthenticated raised for a key known to be
        bad, or None when the cache has no fresh answer (call authenticate)."""
        hit = self._recent.get(key)
        if hit is None:
            if len(key) > 200:
                raise Unauthenticated(reason="invalid API key")
            with self._lock:
                hit = self._cache.get(hash_key(key))
            if hit is None:
                return None
            if len(self._recent) > 10_000:
                self._recent.clear()
            self._recent[key] = hit
        age = time.monotonic() - self.watch.fresh_since(hit[0], hit[1])
        if age > CACHE_TTL_S:
            self._recent.pop(key, None)
            return None
        return _verdict(hit), age > REFRESH_AFTER_S

    def authenticate(self, key: str | None, *, max_age: float = CACHE_TTL_S) -> Principal:
        """The key's Principal, from an answer at most ``max_age`` old (else from the database)."""
        if not key:
            raise Unauthenticated()
        if len(key) > 200:
            raise Unauthenticated(reason="invalid API key")
        digest = hash_key(key)
        with self._lock:
            hit = self._cache.get(digest)
        if hit is not None and not self.watch.fresh(hit[0], hit[1], max_age):
            hit = None
        if hit is None:
            hit = (time.monotonic(), *self._lookup(digest))
            with self._lock:
                if len(self._cache) > 10_000:
                    self._cache.clear()
                self._cache[digest] = hit
            if key in self._recent:
                self._recent[key] = hit  # the hot path's view: a refresh (or a revocation) is seen at once
        return _verdict(hit)

    def _lookup(self, digest: str) -> tuple[int, Principal | None, datetime | None]:
        """The change counter (read first) and the answer."""
        with self.db.read() as s:
            counter = changes.read(s)
            row = s.scalar(select(ApiKey).where(ApiKey.hash == digest))
        # The hash index found the row; compare again in constant time so timing says nothing.
        if row is None or not hmac.compare_digest(row.hash, digest) or row.revoked_at is not None:
            return counter, None, None
        role: Role = "admin" if row.role == "admin" else "member"
        limits = KeyLimits.from_json(row.limits)
        principal = Principal(
            name=row.principal,
            role=role,
            key_id=row.id,
            scope=Scope.from_json(row.scopes),
            rate_limit_rps=limits.rate_limit_rps,
            rate_bucket=limits.bucket or row.id,
            max_concurrent_jobs=limits.max_concurrent_jobs,
        )
        return counter, principal, row.expires_at

    def forget(self) -> None:
        """Drop cached answers (after a revoke in this process, so it takes effect at once here)."""
        with self._lock:
            self._cache.clear()
            self._recent.clear()
