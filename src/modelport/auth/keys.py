"""API keys: created random, shown once, stored as sha256, looked up by hash, compared in constant time."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select

from modelport.auth.principals import ROLES, Principal, Role
from modelport.errors import BadRequest, KeyNotFound, Unauthenticated
from modelport.refs import check_name
from modelport.registry import audit
from modelport.registry.db import Database
from modelport.registry.tables import ApiKey, utcnow

KEY_PREFIX = "mp_"
SHOWN_PREFIX_LEN = 11
CACHE_TTL_S = 1.0
"""A revoked key stops working within this many seconds on every process."""


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def generate_key() -> str:
    """43 characters of base64url over 32 random bytes, after the ``mp_`` prefix."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


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


def _info(row: ApiKey) -> KeyInfo:
    return KeyInfo(
        id=row.id,
        principal=row.principal,
        role=row.role,
        prefix=row.prefix,
        created_by=row.created_by,
        created_at=row.created_at,
        expires_at=row.expires_at,
        revoked_at=row.revoked_at,
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
) -> tuple[KeyInfo, str]:
    """Create a key for principal ``name``; return its record and the key itself (shown only now)."""
    check_name(name, kind="principal")
    if role not in ROLES:
        raise BadRequest(message=f"role must be one of {', '.join(ROLES)}")
    if expires_at is not None and expires_at.tzinfo is None:
        raise BadRequest(message="expires_at needs a time zone, e.g. 2030-01-01T00:00:00Z")
    if expires_at is not None and expires_at <= utcnow():
        raise BadRequest(message="expires_at must be in the future")
    secret = key or generate_key()
    if len(secret) < 32:
        raise BadRequest(message="an API key must be at least 32 characters")
    row = ApiKey(
        id="key_" + secrets.token_hex(8),
        principal=name,
        role=role,
        prefix=secret[:SHOWN_PREFIX_LEN],
        hash=hash_key(secret),
        created_by=actor,
        expires_at=expires_at,
    )
    with db.write() as s:
        s.add(row)
        s.flush()
        audit.record(
            s,
            actor=actor,
            action="key.create",
            target=row.id,
            client=client,
            details={"principal": name, "role": role},
        )
    return _info(row), secret


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
    with db.read() as s:
        q = select(ApiKey.id).where(ApiKey.role == "admin", ApiKey.revoked_at.is_(None)).limit(1)
        return s.scalar(q) is not None


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


def _verdict(hit: tuple[float, Principal | None, datetime | None]) -> Principal:
    _, principal, expires_at = hit
    if principal is None:
        raise Unauthenticated(reason="invalid or revoked API key")
    if expires_at is not None and expires_at <= utcnow():
        raise Unauthenticated(reason="this API key has expired")
    return principal


class KeyAuthenticator:
    """Turns a bearer key into a Principal; caches answers for CACHE_TTL_S to keep the hot path cheap."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._cache: dict[str, tuple[float, Principal | None, datetime | None]] = {}
        self._lock = threading.Lock()

    def cached(self, key: str) -> Principal | None:
        """The answer from the cache without touching the database: a Principal, Unauthenticated raised
        for a key known to be bad, or None when the cache has no fresh answer (call authenticate)."""
        if len(key) > 200:
            raise Unauthenticated(reason="invalid API key")
        with self._lock:
            hit = self._cache.get(hash_key(key))
        if hit is None or time.monotonic() - hit[0] > CACHE_TTL_S:
            return None
        return _verdict(hit)

    def authenticate(self, key: str | None) -> Principal:
        if not key:
            raise Unauthenticated()
        if len(key) > 200:
            raise Unauthenticated(reason="invalid API key")
        digest = hash_key(key)
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(digest)
        if hit is None or now - hit[0] > CACHE_TTL_S:
            hit = (now, *self._lookup(digest))
            with self._lock:
                if len(self._cache) > 10_000:
                    self._cache.clear()
                self._cache[digest] = hit
        return _verdict(hit)

    def _lookup(self, digest: str) -> tuple[Principal | None, datetime | None]:
        with self.db.read() as s:
            row = s.scalar(select(ApiKey).where(ApiKey.hash == digest))
        # The hash index found the row; compare again in constant time so timing says nothing.
        if row is None or not hmac.compare_digest(row.hash, digest) or row.revoked_at is not None:
            return None, None
        role: Role = "admin" if row.role == "admin" else "member"
        return Principal(name=row.principal, role=role, key_id=row.id), row.expires_at

    def forget(self) -> None:
        """Drop cached answers (after a revoke in this process, so it takes effect at once here)."""
        with self._lock:
            self._cache.clear()
