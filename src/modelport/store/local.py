"""Local-folder blob store: ``<home>/blobs/sha256/ab/<hash>``, encrypted at rest when a master key is set.

A blob is named by the sha256 of its plaintext, so identical bytes are stored once whether or not they
are encrypted. Paths are built from validated hex digests only, never from user strings.

Encryption (``store/crypto.py`` has the exact format): the data file holds AES-256-GCM segments under a
random per-blob data key, which is wrapped by the master key in a sidecar ``<home>/blobs/keys/ab/
<hash>.key``. The sidecars live in their own tree so that rotating the master key rewrites that tree
only, and the data tree holds exactly one file per blob. A data file without a sidecar is a plaintext
blob (from before encryption, or with ``encryption=off``); every read re-hashes the plaintext either way.

Crash safety: a write goes to temp files under ``<home>/tmp`` that are fsynced, then, under a store-wide
lock (other API and job processes share the store), the sidecar and then the data file are renamed
into place and their folders fsynced. A blob exists when its data file does, so a crash leaves either
no blob (perhaps a stray sidecar, overwritten by the next write of that blob) or the whole blob.
Leftover temp files are removed by ``clean_tmp()`` at start.

``tmp`` also holds plaintext for a moment: staged uploads and the decrypted copies that loads and
downloads read. Downloads use anonymous files that vanish when closed.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, BinaryIO, Literal

from modelport.errors import IntegrityError
from modelport.store import crypto
from modelport.store.bundle import SHA256_RE
from modelport.store.crypto import MasterKey, damaged

if TYPE_CHECKING:
    from modelport.config import Settings

CHUNK = 1024 * 1024


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _copy_hash(source: BinaryIO, out: BinaryIO | None) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    while chunk := source.read(CHUNK):
        digest.update(chunk)
        size += len(chunk)
        if out is not None:
            out.write(chunk)
    return digest.hexdigest(), size


@dataclass
class StoreContents:
    """What is on disk, for ``modelport doctor``: names only, nothing read or verified."""

    blobs: dict[str, bool] = field(default_factory=dict)
    """sha256 -> whether it has a key sidecar (is encrypted)."""
    stray: list[str] = field(default_factory=list)
    """Files in the blob trees that are not blobs (bad names, sidecars without data), relative paths."""
    leftovers: list[str] = field(default_factory=list)
    """Entries of ``tmp/``: a crash's leftovers, or work in progress when a server is running."""


@dataclass
class Rewrapped:
    """What :meth:`LocalBlobStore.rewrap` did; ``failed`` lists blobs whose key it could not move."""

    rewrapped: int = 0
    already: int = 0
    failed: dict[str, str] = field(default_factory=dict)


class LocalBlobStore:
    """Blobs in a folder. ``master`` wraps data keys; ``encrypt`` says whether new blobs use it.

    ``master="home"`` (the default) takes ``<root>/../secrets/master.key`` when it exists, so a tool
    that opens a home's store directly reads that home's encrypted blobs; the server passes the key
    from its settings instead (:func:`open_store`).
    """

    def __init__(
        self,
        root: Path,
        tmp: Path,
        *,
        master: MasterKey | Literal["home"] | None = "home",
        encrypt: bool = True,
        segment_size: int = crypto.SEGMENT,
    ) -> None:
        self.root = root / "sha256"
        self.keys_root = root / "keys"
        self.tmp = tmp
        self._lock_path = root / ".lock"
        self.root.mkdir(parents=True, exist_ok=True)
        self.tmp.mkdir(parents=True, exist_ok=True)
        if master == "home":
            home_key = crypto.home_key_path(root.parent)
            master = crypto.read_key_file(home_key) if home_key.is_file() else None
        self.master = master
        self.encrypt = encrypt and master is not None
        self.segment_size = segment_size

    # -- names ------------------------------------------------------------------------------------
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
        """The data file (ciphertext when encrypted): for listing and sizes, never to serve directly."""
        if not SHA256_RE.fullmatch(sha256):
            raise ValueError("not a sha256 hex digest")
        return self.root / sha256[:2] / sha256

    def key_path_of(self, sha256: str) -> Path:
        """The sidecar holding the blob's wrapped data key."""
        if not SHA256_RE.fullmatch(sha256):
            raise ValueError("not a sha256 hex digest")
        return self.keys_root / sha256[:2] / f"{sha256}.key"

    def exists(self, sha256: str) -> bool:
        return self.path_of(sha256).is_file()

    def size_of(self, sha256: str) -> int:
        """The plaintext size from the file's size and header, unverified (0 when missing): an estimate."""
        path = self.path_of(sha256)
        try:
            with open(path, "rb") as f:
                stored = os.fstat(f.fileno()).st_size
                header = crypto.read_header(f)
        except FileNotFoundError:
            return 0
        if header is None or not self.key_path_of(sha256).is_file():
            return stored
        return crypto.plain_size(stored, header[1])

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """Serialize installs across processes: a sidecar and its data file must come from one writer."""
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def _install(self, tmp: Path, final: Path) -> None:
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, final)
        _fsync_dir(final.parent)

    def _write_tmp(self, data: bytes, suffix: str) -> Path:
        tmp = self.new_tmp_path(suffix)
        with open(tmp, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        return tmp

    # -- writing ----------------------------------------------------------------------------------
    def put_stream(self, stream: BinaryIO) -> tuple[str, int]:
        """Store the bytes of ``stream``; return (sha256 of the plaintext, size). Atomic; stored once."""
        if not self.encrypt:
            return self._put_plain(stream)
        if not stream.seekable():  # two passes are needed (hash, then encrypt bound to the hash)
            staged = self.new_tmp_path(".stage")
            try:
                with open(staged, "wb") as out:
                    _copy_hash(stream, out)
                return self.put_file(staged)
            finally:
                staged.unlink(missing_ok=True)
        start = stream.tell()
        sha, size = _copy_hash(stream, None)
        if self.size_of(sha) == size and self.exists(sha):
            return sha, size  # already stored: identical bytes are kept once
        stream.seek(start)
        return self._put_encrypted(stream, sha, size)

    def put_file(self, source: Path) -> tuple[str, int]:
        with open(source, "rb") as f:
            return self.put_stream(f)

    def _put_encrypted(self, stream: BinaryIO, sha: str, size: int) -> tuple[str, int]:
        assert self.master is not None  # self.encrypt implies a key
        dek = os.urandom(crypto.KEY_BYTES)
        tmp = self.new_tmp_path(".part")
        side: Path | None = None
        try:
            with open(tmp, "wb") as out:
                read = crypto.encrypt_stream(stream, out, dek, sha, segment_size=self.segment_size)
                out.flush()
                os.fsync(out.fileno())
            if read != (sha, size):
                raise damaged(sha, "the source changed while it was being stored")
            side = self._write_tmp(crypto.sidecar_bytes(self.master, dek, sha), ".key")
            with self._locked():
                if self.size_of(sha) == size and self.exists(sha):
                    return sha, size  # another process stored it meanwhile
                self._install(side, self.key_path_of(sha))  # sidecar first: data without it reads as plaintext
                self._install(tmp, self.path_of(sha))
            return sha, size
        finally:
            tmp.unlink(missing_ok=True)
            if side is not None:
                side.unlink(missing_ok=True)

    def _put_plain(self, stream: BinaryIO) -> tuple[str, int]:
        tmp = self.new_tmp_path(".part")
        try:
            with open(tmp, "wb") as out:
                sha, size = _copy_hash(stream, out)
                out.flush()
                os.fsync(out.fileno())
            with self._locked():
                if self.size_of(sha) == size and self.exists(sha):
                    return sha, size  # already stored: identical bytes are kept once
                self.key_path_of(sha).unlink(missing_ok=True)  # a stray sidecar from a crashed write
                self._install(tmp, self.path_of(sha))
            return sha, size
        finally:
            tmp.unlink(missing_ok=True)

    # -- reading ----------------------------------------------------------------------------------
    def _read(self, sha256: str, out: BinaryIO | None) -> int:
        """Decrypt (when encrypted) and re-hash a blob into ``out``; its size, or IntegrityError."""
        try:
            source = open(self.path_of(sha256), "rb")  # noqa: SIM115 - closed by the with below
        except FileNotFoundError:
            raise damaged(sha256, "missing from the store") from None
        with source:
            encrypted = crypto.read_header(source) is not None
            source.seek(0)
            sidecar = self.key_path_of(sha256)
            if encrypted and sidecar.is_file():
                dek = crypto.unwrap_sidecar(self.master, sidecar, sha256)
                actual, size = crypto.decrypt_stream(source, out, dek, sha256)
            else:
                actual, size = _copy_hash(source, out)
                if actual != sha256 and encrypted:
                    raise damaged(sha256, "it is encrypted and its key sidecar is missing")
        if actual != sha256:
            raise damaged(sha256, "its content does not match its sha256")
        return size

    def verify(self, sha256: str) -> int:
        """Decrypt and re-hash a stored blob; return its size or raise IntegrityError."""
        return self._read(sha256, None)

    def copy_verified(self, sha256: str, dest: Path) -> None:
        """Write the plaintext to ``dest`` while checking it; on any failure no ``dest`` is left."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            with open(dest, "wb") as out:
                self._read(sha256, out)
        except BaseException:
            dest.unlink(missing_ok=True)
            raise

    def read_verified(self, sha256: str) -> bytes:
        """The checked plaintext in memory: for small blobs (manifests)."""
        out = io.BytesIO()
        self._read(sha256, out)
        return out.getvalue()

    def open_verified(self, sha256: str) -> IO[bytes]:
        """The checked plaintext as an open file at offset 0, for sending without holding it in memory.

        The whole blob is decrypted and hashed BEFORE this returns, so a damaged blob raises here and
        no byte of it is ever sent. The file is anonymous (unlinked under ``tmp``): the plaintext
        disappears when the caller closes it, or when the process dies.
        """
        out = tempfile.TemporaryFile(dir=self.tmp)  # noqa: SIM115 - handed to the caller, who closes it
        try:
            self._read(sha256, out)
            out.flush()
            out.seek(0)
        except BaseException:
            out.close()
            raise
        return out

    # -- maintenance ------------------------------------------------------------------------------
    def contents(self) -> StoreContents:
        """Every blob, stray file and temp leftover on disk (for ``modelport doctor``)."""
        found = StoreContents()
        sidecars: set[str] = set()
        for path in sorted(self.keys_root.rglob("*")) if self.keys_root.is_dir() else []:
            name = path.name.removesuffix(".key")
            if (
                path.is_file()
                and path.name.endswith(".key")
                and SHA256_RE.fullmatch(name)
                and path.parent.name == name[:2]
            ):
                sidecars.add(name)
            elif path.is_file():
                found.stray.append(str(path.relative_to(self.root.parent)))
        for path in sorted(self.root.rglob("*")):
            if not path.is_file():
                continue
            if SHA256_RE.fullmatch(path.name) and path.parent.name == path.name[:2]:
                found.blobs[path.name] = path.name in sidecars
            else:
                found.stray.append(str(path.relative_to(self.root.parent)))
        for name in sorted(sidecars - found.blobs.keys()):
            found.stray.append(str(self.key_path_of(name).relative_to(self.root.parent)))
        found.leftovers = sorted(str(p.relative_to(self.tmp.parent)) for p in self.tmp.iterdir())
        return found

    def rewrap(self, old: MasterKey, new: MasterKey) -> Rewrapped:
        """Re-wrap every data key from ``old`` to ``new``: sidecars only, data files untouched.

        Each sidecar is replaced atomically, so this can be run again after a crash: sidecars already
        under ``new`` are counted in ``already``. Run it with the server stopped: a process still
        holding ``old`` cannot read re-wrapped blobs.
        """
        done = Rewrapped()
        for sha in sorted(n for n, encrypted in self.contents().blobs.items() if encrypted):
            sidecar = self.key_path_of(sha)
            try:
                with self._locked():
                    kid, _ = crypto.read_sidecar(sidecar, sha)
                    if kid == new.kid:
                        done.already += 1
                        continue
                    dek = crypto.unwrap_sidecar(old, sidecar, sha)
                    self._install(self._write_tmp(crypto.sidecar_bytes(new, dek, sha), ".key"), sidecar)
                done.rewrapped += 1
            except IntegrityError as exc:
                done.failed[sha] = str(exc.details.get("problem", "damaged"))
        return done

    def ping(self) -> None:
        probe = self.new_tmp_path(".ping")
        probe.write_bytes(b"ok")
        probe.unlink()


def _has_blobs(store_root: Path) -> bool:
    return store_root.is_dir() and any(p.is_file() for p in store_root.rglob("*"))


def _sqlite_file(settings: Settings) -> Path | None:
    url = settings.db_url
    prefix = "sqlite:///"
    return Path(url[len(prefix) :]) if url.startswith(prefix) and len(url) > len(prefix) else None


def is_new_home(settings: Settings) -> bool:
    """No blobs stored yet and no SQLite database: nothing written before encryption existed."""
    db_file = _sqlite_file(settings)
    return not _has_blobs(settings.blobs_dir / "sha256") and not (db_file is not None and db_file.exists())


def open_store(settings: Settings, *, create_key: bool = True) -> LocalBlobStore:
    """The home's store, with the master key and encryption mode the settings give.

    With ``create_key`` a new home (``encryption=auto``) or any home (``encryption=on``) without a key
    gets a random ``secrets/master.key``; ``modelport doctor`` passes False and never writes.
    """
    creates = settings.encryption == "on" or (settings.encryption == "auto" and is_new_home(settings))
    key = crypto.load_master_key(settings, may_create=create_key and creates)
    return LocalBlobStore(settings.blobs_dir, settings.tmp_dir, master=key, encrypt=settings.encryption != "off")
