"""AES-256-GCM envelope encryption of blobs, and the master key that wraps their data keys.

Why envelope encryption: every blob gets its own random 256-bit data key (DEK), so the master key only
ever encrypts 32-byte DEKs. Rotating the master key then rewrites one small sidecar per blob and never
the data, and a leaked DEK opens exactly one blob.

On-disk format, version 1 (all integers big-endian)::

    <home>/blobs/sha256/ab/<sha256 of the plaintext>      the data file
        header   16 bytes: MAGIC (8: b"MPBLOB\\x00\\x01") | segment size (uint32) | nonce prefix (4 random)
        segment  AES-256-GCM(DEK, nonce, plaintext chunk, aad) = ciphertext | tag (16)
                 nonce = nonce prefix (4) | segment index (uint64)
                 aad   = header (16) | sha256 of the plaintext (32 raw bytes) | segment index (uint64)
                         | last-segment flag (1 byte: 1 on the final segment, else 0)
        Every segment but the last holds exactly ``segment size`` plaintext bytes; the last holds 0 to
        ``segment size`` (an empty blob is one empty final segment, 16 bytes of tag).

    <home>/blobs/keys/ab/<sha256>.key                       the sidecar (compact JSON, no newline)
        {"v":1,"alg":"AES-256-GCM","kid":"<16 hex>","wrapped":"<base64>"}
        wrapped = nonce (12 random) | AES-256-GCM(master key, nonce, DEK, aad = WRAP_AAD | sha256 raw)
        kid     = the first 16 hex digits of sha256(master key): names the key, reveals nothing of it

What the authenticated data buys: a reordered or spliced segment fails (its index is in the nonce and
the AAD), a truncated or extended file fails (the last-segment flag), a data file or sidecar moved to
another blob's name fails (the blob's hash is in both AADs, and each DEK belongs to one blob). Readers
still re-hash the decrypted plaintext against the blob's name, so integrity never rests on the
encryption alone, and plaintext blobs from before encryption (no sidecar) are checked the same way.

The master key comes from ``Settings`` (:func:`load_master_key`): ``MODELPORT_MASTER_KEY``,
``MODELPORT_MASTER_KEY_FILE``, or the home's own ``<home>/secrets/master.key``. Key bytes never appear
in a message, a ``repr`` or a log line; only the key id does.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
import logging
import os
import struct
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from modelport.errors import BadRequest, IntegrityError

if TYPE_CHECKING:
    from modelport.config import Settings

log = logging.getLogger("modelport.store")

MAGIC = b"MPBLOB\x00\x01"
HEADER = struct.Struct(">8sI4s")
TAG = 16
SEGMENT = 1024 * 1024
"""Plaintext bytes per segment: memory per read/write stays near this, whatever the blob's size."""
MAX_SEGMENT = 64 * 1024 * 1024
"""A header claiming more is refused before anything is allocated (the header is only authenticated
with the first segment, so its size field must be bounded before it is trusted)."""
WRAP_AAD = b"modelport-dek-v1:"
SIDECAR_MAX_BYTES = 4096
KEY_BYTES = 32


def damaged(sha256: str, problem: str) -> IntegrityError:
    """The one error for a blob that cannot be served; ``problem`` never holds a path or key material."""
    exc = IntegrityError(what=f"blob {sha256[:12]}… ({problem})")
    exc.details["problem"] = problem
    return exc


class MasterKey:
    """A 256-bit key-encryption key. Holds the secret privately; ``repr`` and messages show the id only."""

    __slots__ = ("_aead", "_secret", "kid")

    def __init__(self, secret: bytes) -> None:
        if len(secret) != KEY_BYTES:
            raise ValueError("a master key is exactly 32 bytes")
        self._secret = secret
        self._aead = AESGCM(secret)
        self.kid = hashlib.sha256(secret).hexdigest()[:16]

    @classmethod
    def generate(cls) -> MasterKey:
        return cls(os.urandom(KEY_BYTES))

    def __repr__(self) -> str:
        return f"MasterKey(kid={self.kid!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, MasterKey) and other.kid == self.kid

    def __hash__(self) -> int:
        return hash(self.kid)

    def raw(self) -> bytes:
        """The secret, for writing a key file (mode 0600); never log or display it."""
        return self._secret

    def wrap(self, dek: bytes, sha256: str) -> str:
        """Encrypt a blob's data key, bound to that blob's hash."""
        nonce = os.urandom(12)
        sealed = self._aead.encrypt(nonce, dek, WRAP_AAD + bytes.fromhex(sha256))
        return base64.b64encode(nonce + sealed).decode("ascii")

    def unwrap(self, wrapped: str, sha256: str) -> bytes:
        """The data key of blob ``sha256``; IntegrityError if it was edited, moved, or wrapped otherwise."""
        try:
            blob = base64.b64decode(wrapped, validate=True)
            dek = self._aead.decrypt(blob[:12], blob[12:], WRAP_AAD + bytes.fromhex(sha256))
        except (InvalidTag, binascii.Error, ValueError):
            raise damaged(sha256, "its data key does not unwrap: the key sidecar was edited or moved") from None
        if len(dek) != KEY_BYTES:
            raise damaged(sha256, "its key sidecar holds a data key of the wrong size")
        return dek


# -- sidecars ---------------------------------------------------------------------------------------
def sidecar_bytes(master: MasterKey, dek: bytes, sha256: str) -> bytes:
    record = {"v": 1, "alg": "AES-256-GCM", "kid": master.kid, "wrapped": master.wrap(dek, sha256)}
    return json.dumps(record, separators=(",", ":")).encode("ascii")


def read_sidecar(path: Path, sha256: str) -> tuple[str, str]:
    """(kid, wrapped) from a sidecar file; IntegrityError when it is not a well-formed version 1 record."""
    try:
        with open(path, "rb") as f:
            data = f.read(SIDECAR_MAX_BYTES + 1)
        record = json.loads(data) if len(data) <= SIDECAR_MAX_BYTES else None
    except FileNotFoundError:
        raise damaged(sha256, "its key sidecar is missing") from None
    except (OSError, ValueError, RecursionError):  # RecursionError: JSON nested thousands deep
        record = None
    ok = (
        isinstance(record, dict)
        and record.get("v") == 1
        and record.get("alg") == "AES-256-GCM"
        and isinstance(record.get("kid"), str)
        and len(record["kid"]) == 16
        and all(c in "0123456789abcdef" for c in record["kid"])
        and isinstance(record.get("wrapped"), str)
    )
    if not ok or not isinstance(record, dict):
        raise damaged(sha256, "its key sidecar is unreadable")
    return record["kid"], record["wrapped"]


def unwrap_sidecar(master: MasterKey | None, path: Path, sha256: str) -> bytes:
    """The data key of an encrypted blob, or IntegrityError saying why it cannot be had."""
    if master is None:
        raise damaged(sha256, "it is encrypted and no master key is configured")
    kid, wrapped = read_sidecar(path, sha256)
    if kid != master.kid:
        raise damaged(sha256, f"its data key is wrapped by another master key (key id {kid})")
    return master.unwrap(wrapped, sha256)


# -- segments ---------------------------------------------------------------------------------------
def _read_exact(stream: BinaryIO, n: int) -> bytes:
    """Up to ``n`` bytes, fewer only at the end: some streams return short reads before their end."""
    first = stream.read(n)
    if len(first) == n or not first:
        return first
    parts = [first]
    got = len(first)
    while got < n and (more := stream.read(n - got)):
        parts.append(more)
        got += len(more)
    return b"".join(parts)


def _nonce(prefix: bytes, index: int) -> bytes:
    return prefix + index.to_bytes(8, "big")


def _aad(header: bytes, digest: bytes, index: int, last: bool) -> bytes:
    return header + digest + index.to_bytes(8, "big") + (b"\x01" if last else b"\x00")


def encrypted_size(plain_size: int, segment_size: int = SEGMENT) -> int:
    """Size of the data file of a ``plain_size``-byte blob (at least one, possibly empty, segment)."""
    segments = max(1, -(-plain_size // segment_size))
    return HEADER.size + plain_size + TAG * segments


def plain_size(stored_size: int, segment_size: int) -> int:
    """Inverse of :func:`encrypted_size` (an estimate for a damaged file: never below 0)."""
    body = stored_size - HEADER.size
    segments = max(1, -(-body // (segment_size + TAG)))
    return max(0, body - TAG * segments)


def read_header(stream: BinaryIO) -> tuple[bytes, int, bytes] | None:
    """(header bytes, segment size, nonce prefix), or None when ``stream`` has no valid version 1 header."""
    header = stream.read(HEADER.size)
    if len(header) != HEADER.size:
        return None
    magic, segment_size, prefix = HEADER.unpack(header)
    if magic != MAGIC or not 1 <= segment_size <= MAX_SEGMENT:
        return None
    return header, segment_size, prefix


def encrypt_stream(
    source: BinaryIO, out: BinaryIO, dek: bytes, sha256: str, *, segment_size: int = SEGMENT
) -> tuple[str, int]:
    """Encrypt ``source`` (whose hash must be ``sha256``) into ``out``; return the hash and size it read.

    The caller compares the returned hash with ``sha256``: a source that changed between hashing and
    encrypting must not be stored under a name it no longer has.
    """
    if not 1 <= segment_size <= MAX_SEGMENT:
        raise ValueError("segment size out of range")
    prefix = os.urandom(4)
    header = HEADER.pack(MAGIC, segment_size, prefix)
    digest = bytes.fromhex(sha256)
    aead = AESGCM(dek)
    hasher = hashlib.sha256()
    size = index = 0
    out.write(header)
    chunk = _read_exact(source, segment_size)
    while True:
        ahead = _read_exact(source, segment_size) if len(chunk) == segment_size else b""
        last = not ahead
        hasher.update(chunk)
        size += len(chunk)
        out.write(aead.encrypt(_nonce(prefix, index), chunk, _aad(header, digest, index, last)))
        if last:
            return hasher.hexdigest(), size
        chunk, index = ahead, index + 1


def decrypt_stream(source: BinaryIO, out: BinaryIO | None, dek: bytes, sha256: str) -> tuple[str, int]:
    """Decrypt a data file into ``out`` (or only check it); return the plaintext's hash and size.

    Raises IntegrityError on a bad header, a segment that fails authentication (tampered, reordered,
    spliced, another key) or a truncated/extended file. ``out`` may have received earlier segments
    when that happens: the caller discards it.
    """
    found = read_header(source)
    if found is None:
        raise damaged(sha256, "its encrypted header is damaged")
    header, segment_size, prefix = found
    digest = bytes.fromhex(sha256)
    aead = AESGCM(dek)
    hasher = hashlib.sha256()
    step = segment_size + TAG
    size = index = 0
    chunk = _read_exact(source, step)
    while True:
        ahead = _read_exact(source, step) if len(chunk) == step else b""
        last = not ahead
        if len(chunk) < TAG:
            raise damaged(sha256, "it is truncated")
        try:
            plain = aead.decrypt(_nonce(prefix, index), chunk, _aad(header, digest, index, last))
        except InvalidTag:
            raise damaged(sha256, f"segment {index} fails authentication: tampered, truncated or reordered") from None
        hasher.update(plain)
        size += len(plain)
        if out is not None:
            out.write(plain)
        if last:
            return hasher.hexdigest(), size
        chunk, index = ahead, index + 1


# -- master keys ------------------------------------------------------------------------------------
def parse_key(data: bytes, *, source: str, raw_ok: bool = False) -> MasterKey:
    """A master key from 64 hex characters or base64 of 32 bytes (whitespace ignored), or, with
    ``raw_ok`` (key files), 32 raw bytes.

    ``source`` names where it came from in the error message; the value itself is never echoed.
    """
    if raw_ok and len(data) == KEY_BYTES:
        return MasterKey(data)
    text = b"".join(data.split())
    candidates = []
    if len(text) == 2 * KEY_BYTES:
        with contextlib.suppress(UnicodeDecodeError, ValueError):
            candidates.append(bytes.fromhex(text.decode("ascii")))
    try:  # standard or URL-safe alphabet, padding optional
        standard = text.translate(bytes.maketrans(b"-_", b"+/"))
        candidates.append(base64.b64decode(standard + b"=" * (-len(standard) % 4), validate=True))
    except (binascii.Error, ValueError):
        pass
    for secret in candidates:
        if len(secret) == KEY_BYTES:
            return MasterKey(secret)
    raise BadRequest(message=f"{source} is not a 256-bit key: give 64 hex characters, or base64 of 32 bytes")


def read_key_file(path: Path) -> MasterKey:
    """A master key from a file (raw 32 bytes, or hex/base64 text); warns when others may read it."""
    try:
        with open(path, "rb") as f:
            data = f.read(1025)
        mode = os.stat(path).st_mode
    except OSError as exc:
        raise BadRequest(message=f"cannot read the master key file {path}: {exc.strerror or exc}") from None
    if mode & 0o077:
        log.warning("the master key file %s can be read by other users; chmod 600 it", path)
    return parse_key(data if len(data) <= 1024 else b"", source=f"the master key file {path}", raw_ok=True)


def write_key_file(path: Path, key: MasterKey, *, replace: bool) -> None:
    """Write ``key`` as 32 raw bytes, mode 0600 in a 0700 folder, atomically.

    With ``replace=False`` an existing file wins (two processes opening a new home at once agree on
    the first key written); with ``replace=True`` it is swapped in whole (rotation).
    """
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(key.raw())
            f.flush()
            os.fsync(f.fileno())
        if replace:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)  # fails if present: never overwrites a key another process wrote
            except FileExistsError:
                return
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    finally:
        tmp.unlink(missing_ok=True)


def home_key_path(home: Path) -> Path:
    """Where a home keeps the master key it generated itself."""
    return home / "secrets" / "master.key"


def load_master_key(settings: Settings, *, may_create: bool) -> MasterKey | None:
    """The master key the settings give, in this order.

    1. ``MODELPORT_MASTER_KEY`` (base64 or 64 hex characters of 32 bytes);
    2. ``MODELPORT_MASTER_KEY_FILE`` (a file holding the key: raw bytes, hex or base64);
    3. the home's ``secrets/master.key``, when it exists;
    4. when ``may_create``: a new random key written to ``secrets/master.key`` (0600, folder 0700).

    Giving both 1 and 2 is refused: which key wraps new blobs must never be a guess. ``None`` means
    no key: plaintext blobs only (an existing home that never had encryption).
    """
    if settings.master_key and settings.master_key_file:
        raise BadRequest(message="set MODELPORT_MASTER_KEY or MODELPORT_MASTER_KEY_FILE, not both")
    if settings.master_key:
        return parse_key(settings.master_key.encode("utf-8"), source="MODELPORT_MASTER_KEY")
    if settings.master_key_file:
        return read_key_file(settings.master_key_file)
    path = home_key_path(settings.home)
    if path.is_file():
        return read_key_file(path)
    if not may_create:
        return None
    write_key_file(path, MasterKey.generate(), replace=False)
    log.info("created a master key for blob encryption in %s; back it up: without it the blobs are lost", path)
    return read_key_file(path)  # the file's key, in case another process created it first
