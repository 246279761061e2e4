"""Plain records the registry hands out; the API turns them into JSON, the SDK back into these."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any


@dataclass(frozen=True, slots=True)
class ModelView:
    name: str
    description: str
    tags: list[str]
    owner: str
    created_at: datetime
    updated_at: datetime
    latest_version: int | None
    aliases: dict[str, int]
    your_role: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class FileView:
    path: str
    sha256: str
    size_bytes: int


@dataclass(frozen=True, slots=True)
class VersionView:
    model: str
    version: int
    format: str
    status: str
    description: str
    size_bytes: int
    created_by: str
    created_at: datetime
    aliases: list[str]
    manifest: dict[str, Any]
    manifest_sha256: str
    files: list[FileView] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class AliasView:
    model: str
    alias: str
    version: int
    updated_by: str
    updated_at: datetime

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
