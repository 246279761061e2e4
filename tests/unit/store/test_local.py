"""The local blob store: atomic, deduplicated, verified."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import pytest

from modelport.errors import IntegrityError
from modelport.store.local import LocalBlobStore


@pytest.fixture
def store(tmp_path: Path) -> LocalBlobStore:
    return LocalBlobStore(tmp_path / "blobs", tmp_path / "tmp")


def test_put_is_content_addressed_and_deduplicated(store: LocalBlobStore) -> None:
    data = b"hello" * 1000
    sha, size = store.put_stream(io.BytesIO(data))
    assert sha == hashlib.sha256(data).hexdigest() and size == len(data)
    assert store.path_of(sha).read_bytes() == data
    assert store.put_stream(io.BytesIO(data)) == (sha, size)
    assert len([p for p in store.root.rglob("*") if p.is_file()]) == 1
    assert not list(store.tmp.iterdir())


def test_verify_and_copy_refuse_tampered_blobs(store: LocalBlobStore, tmp_path: Path) -> None:
    sha, _ = store.put_stream(io.BytesIO(b"weights"))
    store.path_of(sha).write_bytes(b"weightz")
    with pytest.raises(IntegrityError):
        store.verify(sha)
    with pytest.raises(IntegrityError):
        store.copy_verified(sha, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    store.path_of(sha).unlink()
    with pytest.raises(IntegrityError):
        store.verify(sha)


def test_paths_come_from_digests_only(store: LocalBlobStore) -> None:
    for bad in ["../../etc/passwd", "ab", "G" * 64, "a" * 63]:
        with pytest.raises(ValueError, match="sha256"):
            store.path_of(bad)


def test_clean_tmp_removes_leftovers(store: LocalBlobStore) -> None:
    (store.tmp / "x.part").write_bytes(b"partial")
    (store.tmp / "y.stage").mkdir()
    (store.tmp / "y.stage" / "f").write_bytes(b"1")
    assert store.clean_tmp() == 2
    assert not list(store.tmp.iterdir())
