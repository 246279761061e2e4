"""Names and model references: the one place their grammar lives.

A name matches ``^[a-z0-9][a-z0-9._-]{0,62}$``. A reference is ``name`` (the ``production`` alias if set,
else the latest version), ``name:3`` (version 3) or ``name@staging`` (an alias). Anything else is refused
with :class:`~modelport.errors.InvalidName` or :class:`~modelport.errors.InvalidReference`, so no user
string ever reaches a file system path.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from modelport.errors import InvalidName, InvalidReference

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
DEFAULT_ALIAS = "production"
MAX_VERSION = 2**31 - 1


def check_name(value: str, *, kind: str = "model") -> str:
    """Return ``value`` if it is a valid name, else raise InvalidName. ``..`` is refused too."""
    if not NAME_RE.fullmatch(value) or ".." in value:
        raise InvalidName(kind=kind, value=value)
    return value


@dataclass(frozen=True, slots=True)
class ModelRef:
    """A parsed reference: exactly one of ``version`` and ``alias`` is set, or neither (the default)."""

    name: str
    version: int | None = None
    alias: str | None = None

    def __str__(self) -> str:
        if self.version is not None:
            return f"{self.name}:{self.version}"
        if self.alias is not None:
            return f"{self.name}@{self.alias}"
        return self.name


def parse_version(value: str | int, *, ref: str | None = None) -> int:
    """Parse a version number (1, 2, 3...)."""
    text = str(value)
    if not (text.isascii() and text.isdigit()) or text.startswith("0") or len(text) > 10 or int(text) > MAX_VERSION:
        raise InvalidReference(value=ref or text, reason="a version is a positive whole number")
    return int(text)


def parse_ref(value: str) -> ModelRef:
    """Parse ``name``, ``name:3`` or ``name@alias``."""
    if len(value) > 200:
        raise InvalidReference(value=value, reason="too long")
    if ":" in value and "@" in value:
        raise InvalidReference(value=value, reason="give a version or an alias, not both")
    if ":" in value:
        name, _, version = value.partition(":")
        return ModelRef(name=check_name(name), version=parse_version(version, ref=value))
    if "@" in value:
        name, _, alias = value.partition("@")
        return ModelRef(name=check_name(name), alias=check_name(alias, kind="alias"))
    return ModelRef(name=check_name(value))
