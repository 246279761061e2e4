"""Local-folder blob store: ``<home>/blobs/sha256/ab/<hash>``.

Paths are built from hex digests only (validated), never from user strings. A write goes to a temp file
under ``<home>/tmp``, is fsynced, renamed into place and the directory fsynced, so a crash at any point
leaves either no blob or the whole blob; leftover temp files are removed by ``clean_tmp()`` at start.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from pathlib import Path
from typing import BinaryIO

from modelport.errors import IntegrityError
from modelport.store.bundle import SHA256_RE

CHUNK = 1024 * 1024


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalBlobStore:
    def __init__(self, root: Path, tmp: Path) -> None:
        self.root = root / "sha256"
        self.tmp = tmp
        self.root.mkdir(parents=True, exist_ok=True)
        self.tmp.mkdir(parents=True, exist_ok=True)

    def clean_tmp(self) -> int:
        """Remove every leftover temp file and staging folder (from a crash); return how many."""
        count = 0
        for entry in self.tmp.iterdir():
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            count += 1
        return count

    def new_tmp_path(self, suffix: str = "") -> Path:
        return self.tmp / f"{uuid.uuid4().hex}{suffix}"

    def path_of(self, sha256: str) -> Path:
        if not SHA256_RE.fullmatch(sha256):
            raise ValueError("not a sha256 hex digest")
        return self.root / sha256[:2] / sha256

    def exists(self, sha256: str) -> bool:
        return self.path_of(sha256).is_file()

    def put_stream(self, stream: BinaryIO) -> tuple[str, int]:
        tmp = self.new_tmp_path(".part")
        digest = hashlib.sha256()
        size = 0
        try:
            with open(tmp, "wb") as out:
                while chunk := stream.read(CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
                    size += len(chunk)
                out.flush()
                os.fsync(out.fileno())
            sha = digest.hexdigest()
            final = self.path_of(sha)
            if final.is_file() and final.stat().st_size == size:
                return sha, size  # already stored: identical bytes are kept once
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, final)
            _fsync_dir(final.parent)
            return sha, size
        finally:
            tmp.unlink(missing_ok=True)

    def put_file(self, source: Path) -> tuple[str, int]:
        with open(source, "rb") as f:
            return self.put_stream(f)

    def _hash_file(self, path: Path, out: BinaryIO | None = None) -> tuple[str, int]:
        digest = hashlib.sha256()
        size = 0
        with open(path, "rb") as f:
            while chunk := f.read(CHUNK):
                digest.update(chunk)
                size += len(chunk)
                if out is not None:
                    out.write(chunk)
        return digest.hexdigest(), size

    def verify(self, sha256: str) -> int:
        path = self.path_of(sha256)
        if not path.is_file():
            raise IntegrityError(what=f"blob {sha256[:12]}… (missing from the store)")
        actual, size = self._hash_file(path)
        if actual != sha256:
            raise IntegrityError(what=f"blob {sha256[:12]}…")
        return size

    def copy_verified(self, sha256: str, dest: Path) -> None:
        path = self.path_of(sha256)
        if not path.is_file():
            raise IntegrityError(what=f"blob {sha256[:12]}… (missing from the store)")
        dest.parent.mkdir(parents=True, exist_ok=True)
        with open(dest, "wb") as out:
            actual, _ = self._hash_file(path, out)
        if actual != sha256:
            dest.unlink(missing_ok=True)
            raise IntegrityError(what=f"blob {sha256[:12]}…")

    def read_verified(self, sha256: str) -> bytes:
        data = self.path_of(sha256).read_bytes() if self.exists(sha256) else None
        if data is None:
            raise IntegrityError(what=f"blob {sha256[:12]}… (missing from the store)")
        if hashlib.sha256(data).hexdigest() != sha256:
            raise IntegrityError(what=f"blob {sha256[:12]}…")
        return data

    def ping(self) -> None:
        probe = self.new_tmp_path(".ping")
        probe.write_bytes(b"ok")
        probe.unlink()
