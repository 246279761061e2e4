"""Blobs encrypted at rest: round trips, every way to damage one, legacy plaintext, key rotation."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
from pathlib import Path

import pytest

from modelport.errors import BadRequest, IntegrityError
from modelport.store import crypto
from modelport.store.crypto import HEADER, TAG, MasterKey
from modelport.store.local import LocalBlobStore

SEGMENT = 64  # small segments, so "several segments" costs a few hundred bytes
STEP = SEGMENT + TAG


@pytest.fixture
def key() -> MasterKey:
    return MasterKey.generate()


@pytest.fixture
def store(tmp_path: Path, key: MasterKey) -> LocalBlobStore:
    return LocalBlobStore(tmp_path / "blobs", tmp_path / "tmp", master=key, segment_size=SEGMENT)


def reopen(store: LocalBlobStore, key: MasterKey | None) -> LocalBlobStore:
    return LocalBlobStore(store.root.parent, store.tmp, master=key, segment_size=SEGMENT)


def secrets_of(key: MasterKey) -> list[str]:
    raw = key.raw()
    return [raw.hex(), base64.b64encode(raw).decode(), base64.urlsafe_b64encode(raw).decode().rstrip("="), repr(raw)]


def refused(store: LocalBlobStore, sha: str, key: MasterKey, tmp_path: Path) -> str:
    """Every read path refuses the blob, leaves no output, and says nothing of the key; the problem."""
    with pytest.raises(IntegrityError) as caught:
        store.verify(sha)
    with pytest.raises(IntegrityError):
        store.copy_verified(sha, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(IntegrityError):
        store.read_verified(sha)
    with pytest.raises(IntegrityError):
        store.open_verified(sha)
    text = f"{caught.value} {caught.value.details} {caught.value!r}"
    assert not any(secret in text for secret in secrets_of(key))
    assert str(store.root) not in text
    return str(caught.value.details["problem"])


@pytest.mark.parametrize("size", [0, 1, SEGMENT - 1, SEGMENT, SEGMENT + 1, 3 * SEGMENT, 5 * SEGMENT + 17])
def test_round_trip(store: LocalBlobStore, tmp_path: Path, size: int) -> None:
    data = os.urandom(size)
    sha, stored = store.put_stream(io.BytesIO(data))
    assert (sha, stored) == (hashlib.sha256(data).hexdigest(), size)
    on_disk = store.path_of(sha).read_bytes()
    assert len(on_disk) == crypto.encrypted_size(size, SEGMENT)
    assert on_disk.startswith(crypto.MAGIC)
    assert size < 8 or data[:8] not in on_disk
    assert store.verify(sha) == size == store.size_of(sha)
    assert store.read_verified(sha) == data
    store.copy_verified(sha, tmp_path / "copy")
    assert (tmp_path / "copy").read_bytes() == data
    with store.open_verified(sha) as f:
        assert f.read() == data
    assert not list(store.tmp.iterdir())  # nothing left behind, the plaintext copy included


def test_sidecar_format(store: LocalBlobStore, key: MasterKey) -> None:
    sha, _ = store.put_stream(io.BytesIO(b"weights"))
    record = json.loads(store.key_path_of(sha).read_bytes())
    assert list(record) == ["v", "alg", "kid", "wrapped"]
    assert (record["v"], record["alg"], record["kid"]) == (1, "AES-256-GCM", key.kid)
    assert key.kid == hashlib.sha256(key.raw()).hexdigest()[:16]
    assert len(base64.b64decode(record["wrapped"])) == 12 + 32 + 16
    assert store.key_path_of(sha).parent.parent == store.root.parent / "keys"


def test_identical_bytes_are_stored_once(store: LocalBlobStore) -> None:
    data = b"same" * 100
    first = store.put_stream(io.BytesIO(data))
    data_file = store.path_of(first[0]).read_bytes()
    assert store.put_file(_write(store.tmp.parent / "again", data)) == first
    assert store.path_of(first[0]).read_bytes() == data_file  # kept, not re-encrypted
    assert len([p for p in store.root.rglob("*") if p.is_file()]) == 1


def test_a_stream_that_cannot_seek_is_staged_then_stored(store: LocalBlobStore) -> None:
    class OneWay(io.RawIOBase):
        def __init__(self, data: bytes) -> None:
            self.left = data

        def readable(self) -> bool:
            return True

        def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]  # bytearray and memoryview both come
            n = min(len(buffer), len(self.left), 7)  # short reads, as a socket gives
            buffer[:n] = self.left[:n]
            self.left = self.left[n:]
            return n

    data = os.urandom(3 * SEGMENT + 5)
    sha, size = store.put_stream(OneWay(data))  # type: ignore[arg-type]  # a raw binary stream
    assert store.read_verified(sha) == data and size == len(data)
    assert not list(store.tmp.iterdir())


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _three_segments(store: LocalBlobStore) -> tuple[str, bytes]:
    sha, _ = store.put_stream(io.BytesIO(os.urandom(2 * SEGMENT + 10)))
    return sha, store.path_of(sha).read_bytes()


@pytest.mark.parametrize("segment", [0, 1, 2])
def test_a_changed_byte_in_any_segment_is_refused(
    store: LocalBlobStore, key: MasterKey, tmp_path: Path, segment: int
) -> None:
    sha, data = _three_segments(store)
    for offset in (0, 20, STEP - 1):  # first byte, a middle one, a tag byte
        at = HEADER.size + segment * STEP + offset
        if at >= len(data):
            continue
        broken = bytearray(data)
        broken[at] ^= 0x01
        store.path_of(sha).write_bytes(bytes(broken))
        assert "authentication" in refused(store, sha, key, tmp_path)


def test_a_changed_header_is_refused(store: LocalBlobStore, key: MasterKey, tmp_path: Path) -> None:
    sha, data = _three_segments(store)
    for at in (0, 9, HEADER.size - 1):  # magic, segment size, nonce prefix
        broken = bytearray(data)
        broken[at] ^= 0x01
        store.path_of(sha).write_bytes(bytes(broken))
        refused(store, sha, key, tmp_path)


def test_swapped_segments_are_refused(store: LocalBlobStore, key: MasterKey, tmp_path: Path) -> None:
    sha, data = _three_segments(store)
    head, first, second = data[: HEADER.size], data[HEADER.size : HEADER.size + STEP], data[HEADER.size + STEP :]
    store.path_of(sha).write_bytes(head + second[:STEP] + first + second[STEP:])
    assert "authentication" in refused(store, sha, key, tmp_path)


@pytest.mark.parametrize("cut", ["last segment", "partial tag", "header only", "empty", "extended"])
def test_truncated_or_extended_files_are_refused(
    store: LocalBlobStore, key: MasterKey, tmp_path: Path, cut: str
) -> None:
    sha, data = _three_segments(store)
    changed = {
        "last segment": data[: HEADER.size + 2 * STEP],  # ends on a boundary: only the last flag notices
        "partial tag": data[:-5],
        "header only": data[: HEADER.size],
        "empty": b"",
        "extended": data + data[HEADER.size : HEADER.size + STEP],
    }[cut]
    store.path_of(sha).write_bytes(changed)
    refused(store, sha, key, tmp_path)


def test_a_data_file_moved_to_another_name_is_refused(store: LocalBlobStore, key: MasterKey, tmp_path: Path) -> None:
    a, _ = store.put_stream(io.BytesIO(b"a" * 100))
    b, _ = store.put_stream(io.BytesIO(b"b" * 100))
    store.path_of(b).write_bytes(store.path_of(a).read_bytes())  # same length, same key: still refused
    assert "authentication" in refused(store, b, key, tmp_path)
    store.key_path_of(b).write_bytes(store.key_path_of(a).read_bytes())  # with its sidecar too
    assert "unwrap" in refused(store, b, key, tmp_path)


def test_a_wrong_master_key_is_refused(store: LocalBlobStore, key: MasterKey, tmp_path: Path) -> None:
    sha, _ = store.put_stream(io.BytesIO(b"secret weights"))
    other = MasterKey.generate()
    problem = refused(reopen(store, other), sha, other, tmp_path)
    assert key.kid in problem  # names the key that is needed, by id only
    assert "no master key" in refused(reopen(store, None), sha, key, tmp_path)
    # a sidecar that claims the right key id but was wrapped by another key
    record = json.loads(store.key_path_of(sha).read_bytes())
    record["wrapped"] = other.wrap(os.urandom(32), sha)
    store.key_path_of(sha).write_text(json.dumps(record))
    assert "unwrap" in refused(store, sha, key, tmp_path)


@pytest.mark.parametrize(
    "edit",
    [
        lambda r: {**r, "wrapped": r["wrapped"][:-6] + ("AAAA==" if r["wrapped"][-6:] != "AAAA==" else "BBBB==")},
        lambda r: {**r, "kid": "0" * 16},
        lambda r: {**r, "v": 2},
        lambda r: {**r, "alg": "none"},
        lambda r: {k: v for k, v in r.items() if k != "wrapped"},
        lambda r: "not an object",
    ],
)
def test_an_edited_sidecar_is_refused(store: LocalBlobStore, key: MasterKey, tmp_path: Path, edit: object) -> None:
    sha, _ = store.put_stream(io.BytesIO(b"weights" * 30))
    record = json.loads(store.key_path_of(sha).read_bytes())
    store.key_path_of(sha).write_text(json.dumps(edit(record)))  # type: ignore[operator]  # the lambdas above
    refused(store, sha, key, tmp_path)
    store.key_path_of(sha).write_bytes(b"\xff" * 5000)
    refused(store, sha, key, tmp_path)


def test_a_missing_sidecar_is_refused(store: LocalBlobStore, key: MasterKey, tmp_path: Path) -> None:
    sha, _ = store.put_stream(io.BytesIO(b"weights" * 30))
    store.key_path_of(sha).unlink()
    assert "sidecar is missing" in refused(store, sha, key, tmp_path)


def test_plaintext_blobs_from_before_encryption_stay_readable(tmp_path: Path, key: MasterKey) -> None:
    legacy = LocalBlobStore(tmp_path / "blobs", tmp_path / "tmp", master=None)
    old = b"stored before encryption" * 10
    old_sha, _ = legacy.put_stream(io.BytesIO(old))
    assert legacy.path_of(old_sha).read_bytes() == old
    store = reopen(legacy, key)
    assert store.read_verified(old_sha) == old and store.size_of(old_sha) == len(old)
    assert store.put_stream(io.BytesIO(old)) == (old_sha, len(old))  # dedupe keeps the plaintext copy
    new_sha, _ = store.put_stream(io.BytesIO(b"stored after"))
    assert store.key_path_of(new_sha).is_file() and not store.key_path_of(old_sha).exists()
    assert store.read_verified(new_sha) == b"stored after"
    legacy.path_of(old_sha).write_bytes(old[:-1] + b"!")
    assert "does not match" in refused(store, old_sha, key, tmp_path)


def test_a_plaintext_blob_that_looks_encrypted_is_still_plaintext(store: LocalBlobStore) -> None:
    legacy = reopen(store, None)
    data = crypto.MAGIC + b"\x00\x00\x00\x40" + b"user content that happens to start with the magic"
    sha, _ = legacy.put_stream(io.BytesIO(data))
    assert store.read_verified(sha) == data


def test_encryption_off_writes_plaintext_and_still_reads_encrypted(store: LocalBlobStore, key: MasterKey) -> None:
    enc, _ = store.put_stream(io.BytesIO(b"encrypted"))
    off = LocalBlobStore(store.root.parent, store.tmp, master=key, encrypt=False)
    plain, _ = off.put_stream(io.BytesIO(b"plain"))
    assert off.path_of(plain).read_bytes() == b"plain"
    assert off.read_verified(enc) == b"encrypted"


def test_rotation_rewraps_keys_and_leaves_data_untouched(store: LocalBlobStore, key: MasterKey, tmp_path: Path) -> None:
    blobs = {store.put_stream(io.BytesIO(os.urandom(n)))[0] for n in (0, 10, 3 * SEGMENT)}
    legacy, _ = reopen(store, None).put_stream(io.BytesIO(b"plaintext stays plaintext"))
    before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in store.root.rglob("*") if p.is_file()}
    new = MasterKey.generate()
    result = store.rewrap(key, new)
    assert (result.rewrapped, result.already, result.failed) == (3, 0, {})
    after = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in store.root.rglob("*") if p.is_file()}
    assert after == before  # not one byte of data rewritten
    rotated = reopen(store, new)
    for sha in [*blobs, legacy]:
        rotated.verify(sha)
        if sha != legacy:
            assert "another master key" in refused(store, sha, key, tmp_path)  # the old key opens nothing
    again = rotated.rewrap(key, new)  # resumable: a second run finds everything done
    assert (again.rewrapped, again.already) == (0, 3)
    assert not list(store.tmp.iterdir())


def test_rotation_reports_keys_it_cannot_move(store: LocalBlobStore, key: MasterKey) -> None:
    good, _ = store.put_stream(io.BytesIO(b"good"))
    bad, _ = store.put_stream(io.BytesIO(b"bad"))
    store.key_path_of(bad).write_text("{}")
    new = MasterKey.generate()
    result = store.rewrap(key, new)
    assert result.rewrapped == 1 and set(result.failed) == {bad}
    assert reopen(store, new).read_verified(good) == b"good"


def test_master_keys_parse_from_hex_base64_and_raw_files(tmp_path: Path) -> None:
    raw = os.urandom(32)
    kid = MasterKey(raw).kid
    for text in (raw.hex(), base64.b64encode(raw).decode(), base64.urlsafe_b64encode(raw).decode().rstrip("=")):
        assert crypto.parse_key(f" {text}\n".encode(), source="X").kid == kid
        key_file = _write(tmp_path / "k", text.encode())
        assert crypto.read_key_file(key_file).kid == kid
    assert crypto.read_key_file(_write(tmp_path / "raw", raw)).kid == kid
    weak = b"a" * 32  # 32 characters of text are not 32 random bytes: only files may hold raw bytes
    for bad in (weak, b"", b"zz" * 32, base64.b64encode(os.urandom(16)), b"a" * 2000):
        with pytest.raises(BadRequest) as caught:
            crypto.parse_key(bad, source="MODELPORT_MASTER_KEY")
        assert "MODELPORT_MASTER_KEY" in str(caught.value)
        assert bad.decode(errors="replace")[:20] not in str(caught.value) or not bad
    assert repr(MasterKey(raw)) == f"MasterKey(kid='{kid}')"
    assert not any(secret in repr(MasterKey(raw)) for secret in secrets_of(MasterKey(raw)))


def test_a_new_key_file_is_private_and_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "home" / "secrets" / "master.key"
    first, second = MasterKey.generate(), MasterKey.generate()
    crypto.write_key_file(path, first, replace=False)
    crypto.write_key_file(path, second, replace=False)  # a second process starting at once
    assert crypto.read_key_file(path) == first
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o777 == 0o700
    crypto.write_key_file(path, second, replace=True)
    assert crypto.read_key_file(path) == second
    assert [p.name for p in path.parent.iterdir()] == ["master.key"]
