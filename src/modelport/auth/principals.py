"""Principals: the identity behind an API key, and the scope that may narrow what one key does."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from modelport.errors import BadRequest, PermissionDenied
from modelport.refs import NAME_RE

Role = Literal["admin", "member"]
ROLES: tuple[Role, ...] = ("admin", "member")
KeyAction = Literal["infer", "read", "write", "admin"]
KEY_ACTIONS: tuple[KeyAction, ...] = ("infer", "read", "write", "admin")
"""``infer``: predict and V2 infer; ``read``: metadata, files, lineage, reports; ``write``: uploads,
aliases, deployments, permissions, jobs; ``admin``: the admin endpoints (an admin key only)."""
MAX_PATTERNS = 100


def _check_pattern(pattern: str) -> str:
    """A model name, a name prefix followed by ``*`` (``team-a-*``), or ``*`` (every model)."""
    body = pattern[:-1] if pattern.endswith("*") else pattern
    if pattern != "*" and (not NAME_RE.fullmatch(body) or ".." in body):
        raise BadRequest(message=f"scope model {pattern[:80]!r} is not a model name or a name prefix ending in *")
    return pattern


@dataclass(frozen=True, slots=True)
class Scope:
    """What one key may do, within its principal's rights. ``None`` in a field leaves it unlimited."""

    actions: frozenset[str] | None = None
    models: tuple[str, ...] | None = None
    """Model names and name prefixes (``team-a-*``); a model outside them does not exist for the key."""

    @classmethod
    def parse(cls, actions: Iterable[str] | None, models: Iterable[str] | None) -> Scope:
        """A checked scope (400 on an unknown action or a malformed model pattern)."""
        acts = None
        if actions is not None:
            acts = frozenset(actions)
            unknown = sorted(acts - set(KEY_ACTIONS))
            if unknown:
                raise BadRequest(message=f"unknown scope action {unknown[0][:40]!r}; use {', '.join(KEY_ACTIONS)}")
        pats = None
        if models is not None:
            pats = tuple(sorted({_check_pattern(p) for p in models}))
            if len(pats) > MAX_PATTERNS:
                raise BadRequest(message=f"at most {MAX_PATTERNS} model patterns per key")
        return cls(actions=acts, models=pats)

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> Scope | None:
        if not data:
            return None
        return cls.parse(data.get("actions"), data.get("models"))

    def to_json(self) -> dict[str, list[str] | None]:
        return {
            "actions": sorted(self.actions) if self.actions is not None else None,
            "models": list(self.models) if self.models is not None else None,
        }

    def allows(self, action: str) -> bool:
        return self.actions is None or action in self.actions

    def covers(self, model: str) -> bool:
        """Whether the model named ``model`` is inside this scope (a pattern, or a name, too)."""
        if self.models is None:
            return True
        body = model[:-1] if model.endswith("*") else model
        for pattern in self.models:
            if pattern.endswith("*"):
                if body.startswith(pattern[:-1]) and (model != "*" or pattern == "*"):
                    return True
            elif pattern == model:
                return True
        return False

    def within(self, outer: Scope) -> bool:
        """Whether this scope grants nothing ``outer`` does not."""
        if outer.actions is not None and (self.actions is None or not self.actions <= outer.actions):
            return False
        if outer.models is None:
            return True
        return self.models is not None and all(outer.covers(p) for p in self.models)


@dataclass(frozen=True, slots=True)
class Principal:
    """A caller. ``name`` is shared by every key issued to the same principal (rotation)."""

    name: str
    role: Role
    key_id: str | None = None
    scope: Scope | None = None
    """What this key may do; None: everything the role allows."""
    rate_limit_rps: float | None = None
    """This key's inference rate limit; None: the server's ``rate_limit_rps``."""
    rate_bucket: str | None = None
    """The token bucket this key draws from: its own id, or that of the key it was minted or rotated
    from (so minting more keys never multiplies a rate); None: never rate limited (auth turned off)."""
    max_concurrent_jobs: int | None = None
    """This key's limit on queued plus running jobs; None: the server's default."""
    max_storage_bytes: int | None = None
    """The storage quota in force for this request (set at the API edge from Settings); None: none."""

    @property
    def is_admin(self) -> bool:
        """An admin key whose scope includes ``admin``: every admin check asks this."""
        return self.role == "admin" and (self.scope is None or self.scope.allows("admin"))


ANONYMOUS_ADMIN = Principal(name="anonymous", role="admin")
"""The principal of every request when the operator turned auth off (``MODELPORT_AUTH=false``)."""

SCOPE_WORDS: dict[str, str] = {"infer": "run", "read": "read", "write": "change", "admin": "use"}


def missing_scope(action: KeyAction, target: str) -> PermissionDenied:
    """The 403 for a key whose scope lacks ``action`` (names the scope the key would need)."""
    exc = PermissionDenied(action=SCOPE_WORDS[action], target=f"{target}: this API key lacks the {action!r} scope")
    exc.details["scope"] = action
    return exc


def require_admin(who: Principal) -> Principal:
    """``who`` if it may use admin endpoints, else 403 (naming the ``admin`` scope for an admin key)."""
    if who.is_admin:
        return who
    if who.role == "admin":
        raise missing_scope("admin", "this endpoint (admins only)")
    raise PermissionDenied(action="use", target="this endpoint (admins only)")
