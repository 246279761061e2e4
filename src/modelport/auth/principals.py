"""Principals: the identity behind an API key."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Role = Literal["admin", "member"]
ROLES: tuple[Role, ...] = ("admin", "member")


@dataclass(frozen=True, slots=True)
class Principal:
    """A caller. ``name`` is shared by every key issued to the same principal (rotation)."""

    name: str
    role: Role
    key_id: str | None = None

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


ANONYMOUS_ADMIN = Principal(name="anonymous", role="admin")
"""The principal of every request when the operator turned auth off (``MODELPORT_AUTH=false``)."""
