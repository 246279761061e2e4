"""Check a home's blob store against its registry, offline: what ``modelport doctor`` reports.

Serving already refuses a damaged blob when it is loaded; this finds one before anyone asks for it
(after a disk fault, a restore from backup, a lost master key), and finds what no row uses any more.
Every blob a row references is decrypted and re-hashed in full, once however many rows share it.
Nothing is written or deleted.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select

from modelport.errors import IntegrityError
from modelport.registry.db import Database
from modelport.registry.tables import Dataset, Model, Version, VersionFile
from modelport.store.local import LocalBlobStore


@dataclass
class Problem:
    """A referenced blob that cannot be served: ``problem`` says why, ``used_by`` who needs it."""

    sha256: str
    used_by: list[str]
    problem: str

    def to_dict(self) -> dict[str, Any]:
        return {"sha256": self.sha256, "used_by": self.used_by, "problem": self.problem}


@dataclass
class DoctorReport:
    """The outcome; ``healthy`` is false when any referenced blob is missing or damaged."""

    key_id: str | None
    checked: int = 0
    ok: int = 0
    encrypted: int = 0
    plaintext: int = 0
    missing: list[Problem] = field(default_factory=list)
    damaged: list[Problem] = field(default_factory=list)
    orphans: dict[str, int] = field(default_factory=dict)
    """Stored blobs no row references (sha256 -> stored bytes): harmless, only space."""
    stray: list[str] = field(default_factory=list)
    leftovers: list[str] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        return not self.missing and not self.damaged

    def to_dict(self) -> dict[str, Any]:
        return {
            "healthy": self.healthy,
            "key_id": self.key_id,
            "checked": self.checked,
            "ok": self.ok,
            "encrypted": self.encrypted,
            "plaintext": self.plaintext,
            "missing": [p.to_dict() for p in self.missing],
            "damaged": [p.to_dict() for p in self.damaged],
            "orphans": [{"sha256": sha, "bytes": size} for sha, size in self.orphans.items()],
            "stray": self.stray,
            "leftovers": self.leftovers,
        }


def references(db: Database) -> dict[str, list[str]]:
    """Every blob the registry points at -> who points at it (``model:3 file x.onnx``, ``dataset d``)."""
    refs: dict[str, list[str]] = defaultdict(list)
    with db.read() as s:
        versions = s.execute(select(Model.name, Version.number, Version.manifest_sha256).join(Version.model))
        for model, number, sha in versions:
            refs[sha].append(f"{model}:{number} manifest")
        files = s.execute(
            select(Model.name, Version.number, VersionFile.path, VersionFile.sha256)
            .join(Version, VersionFile.version_id == Version.id)
            .join(Version.model)
        )
        for model, number, path, sha in files:
            refs[sha].append(f"{model}:{number} file {path}")
        for name, sha in s.execute(select(Dataset.name, Dataset.sha256)):
            refs[sha].append(f"dataset {name}")
    return dict(refs)


def check_home(db: Database, store: LocalBlobStore) -> DoctorReport:
    """Verify every referenced blob (decrypt + hash); list orphans, strays and temp leftovers."""
    refs = references(db)
    contents = store.contents()
    report = DoctorReport(key_id=store.master.kid if store.master is not None else None)
    report.stray, report.leftovers = contents.stray, contents.leftovers
    for sha in sorted(refs):
        report.checked += 1
        used_by = sorted(refs[sha])
        if sha not in contents.blobs:
            report.missing.append(Problem(sha, used_by, "missing from the store"))
            continue
        try:
            store.verify(sha)
        except IntegrityError as exc:
            report.damaged.append(Problem(sha, used_by, str(exc.details.get("problem", exc.message))))
        else:
            report.ok += 1
    for sha, encrypted in contents.blobs.items():
        if encrypted:
            report.encrypted += 1
        else:
            report.plaintext += 1
        if sha not in refs:
            report.orphans[sha] = store.path_of(sha).stat().st_size
    return report
