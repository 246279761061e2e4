"""The BlobStore contract: bytes in, sha256 out; bytes back only if they still hash the same."""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO, Protocol


class BlobStore(Protocol):
    """Content-addressed storage. ``put`` is atomic: a blob is visible whole or not at all."""

    def put_file(self, source: Path) -> tuple[str, int]:
        """Store the bytes of ``source``; return (sha256 hex, size). Identical bytes are stored once."""
        ...

    def put_stream(self, stream: BinaryIO) -> tuple[str, int]: ...

    def exists(self, sha256: str) -> bool: ...

    def verify(self, sha256: str) -> int:
        """Re-hash a stored blob; return its size or raise IntegrityError / BlobMissing."""
        ...

    def copy_verified(self, sha256: str, dest: Path) -> None:
        """Write the blob to ``dest`` while hashing; raise IntegrityError (and leave no dest) on mismatch."""
        ...

    def path_of(self, sha256: str) -> Path: ...

    def ping(self) -> None: ...
