"""Turning uploaded files into a version: check everything first, then store blobs, then commit the row.

Order matters for safety: name, format and content checks (pickle refused, signature inferred, the model
actually loads) run on a private staging copy before any blob or row is written, so a refused upload
leaves nothing behind; blobs are stored before the version row commits, so a crash can leave an orphan
blob but never a version pointing at a missing one.
"""

from __future__ import annotations

import io
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from modelport import formats
from modelport.auth.principals import Principal
from modelport.errors import BadRequest, InvalidManifest, UnsupportedFormat
from modelport.registry import quotas, versions
from modelport.registry.db import Database
from modelport.registry.models import visible_model
from modelport.registry.views import VersionView
from modelport.store.bundle import (
    Manifest,
    ManifestInput,
    check_bundle_path,
    parse_manifest_input,
)
from modelport.store.local import LocalBlobStore


@dataclass(frozen=True, slots=True)
class UploadedFile:
    filename: str
    """The name the client gave; becomes the path inside the bundle once validated."""
    stream: BinaryIO
    """The bytes, as spooled by the server (read once, from the start)."""


def _stage(store: LocalBlobStore, files: list[UploadedFile]) -> tuple[Path, list[str]]:
    if not files:
        raise BadRequest(message="no file uploaded: send the model as multipart field 'file'")
    names = [check_bundle_path(f.filename) for f in files]
    if len(set(names)) != len(names):
        raise BadRequest(message="two uploaded files have the same name")
    staging = store.new_tmp_path(".stage")
    staging.mkdir()
    for name, f in zip(names, files, strict=True):
        dest = staging / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        f.stream.seek(0)
        with open(dest, "wb") as out:
            shutil.copyfileobj(f.stream, out, 1024 * 1024)
    return staging, names


def _check_files(staging: Path, names: list[str], entry: str, fmt_name: str | None) -> str:
    """Detect the entry's format; refuse any file that is a pickle in disguise."""
    detected = fmt_name
    for name in names:
        try:
            kind = formats.detect(name, staging / name)
        except UnsupportedFormat:
            if name == entry and fmt_name is None:
                raise
            continue  # a data file beside the model (e.g. ONNX external weights)
        if name == entry and detected is None:
            detected = kind
    assert detected is not None
    return detected


def check_bundle(folder: Path, given: ManifestInput) -> Manifest:
    """The manifest a folder of files would be registered with, after the same checks and trial load."""
    names = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    return _build_manifest(folder, [check_bundle_path(n) for n in names], given)


def _build_manifest(staging: Path, names: list[str], given: ManifestInput) -> Manifest:
    entry = check_bundle_path(given.entrypoint) if given.entrypoint else names[0]
    if entry not in names:
        raise InvalidManifest(message=f"entrypoint {entry!r} is not one of the uploaded files")
    fmt_name = _check_files(staging, names, entry, given.format)
    fmt = formats.get(fmt_name)
    inspection = fmt.inspect(staging, entry, given)
    signature = inspection.signature or given.signature  # inspect already merged what was given
    if signature is None or not signature.inputs:
        raise InvalidManifest(message=f"format {fmt_name!r} does not record input names and shapes; give a signature")
    metrics = {**inspection.extra, **given.metrics}
    manifest = Manifest(
        format=fmt_name,  # type: ignore[arg-type]  # validated by formats.get above
        entrypoint=entry,
        signature=signature,
        preprocess=given.preprocess,
        postprocess=given.postprocess,
        labels=given.labels,
        metrics=metrics,
        description=given.description,
        lineage=given.lineage,
        architecture=given.architecture,
        serving=given.serving,
        files={},
    )
    # The version must be servable: load it once from the staging copy before anything is stored.
    predictor = fmt.load(staging, manifest)
    predictor.unload()
    return manifest


def create_version(
    db: Database,
    store: LocalBlobStore,
    principal: Principal,
    model_name: str,
    files: list[UploadedFile],
    manifest_json: bytes | str | None,
    *,
    client: str | None = None,
    report: dict[str, Any] | None = None,
) -> VersionView:
    """Check, store and register an uploaded version (atomic; the row commits after all blobs).

    ``report`` comes from the platform (an optimize job), never from the uploader's manifest.
    """
    with db.read() as s:
        visible_model(s, principal, model_name, "write")  # fail before any work
    quotas.check_storage(db, principal, [f.stream for f in files])
    given = parse_manifest_input(manifest_json)
    staging, names = _stage(store, files)
    try:
        manifest = _build_manifest(staging, names, given)
        hashes: dict[str, str] = {}
        sizes: dict[str, int] = {}
        for name in names:
            hashes[name], sizes[name] = store.put_file(staging / name)
        manifest = manifest.model_copy(update={"files": hashes, "report": report})
        manifest_sha, _ = store.put_stream(io.BytesIO(manifest.to_json()))
        return versions.commit_version(
            db,
            principal,
            model_name,
            manifest=manifest,
            manifest_sha256=manifest_sha,
            file_sizes=sizes,
            client=client,
        )
    finally:
        shutil.rmtree(staging, ignore_errors=True)
