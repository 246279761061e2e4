"""Files in a job's folder, read and written by the worker without following a link the job planted.

A job's process may put anything in its folder, symlinks included, and may change it while the worker
works. So the worker names paths lexically (never ``resolve``, which would follow the job's links),
and opens each component relative to its parent's descriptor with ``O_NOFOLLOW``: a link anywhere on
the way is an error, never a way out of the folder (to the master key, the database or another job).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import IO, BinaryIO

from modelport.errors import BadRequest

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class UnsafePath(BadRequest):
    """A path that leaves the folder, passes through a link, or is not a plain file or folder."""

    def __init__(self, *, problem: str) -> None:
        super().__init__(message=f"unsafe path in the job's folder: {problem}")


def beneath(root: Path, raw: str | Path) -> PurePosixPath:
    """``raw`` (absolute, or relative to ``root``) as a path inside ``root``, decided lexically."""
    text = str(raw)
    if "\x00" in text:
        raise UnsafePath(problem="a path with a NUL byte")
    path = PurePosixPath(os.path.normpath(text))
    if path.is_absolute():
        base = PurePosixPath(os.path.normpath(str(root)))
        if not path.is_relative_to(base):
            raise UnsafePath(problem="a path outside the job's folder")
        path = path.relative_to(base)
    if path.parts[:1] == ("..",) or path == PurePosixPath("."):
        raise UnsafePath(problem="a path outside the job's folder")
    return path


@contextlib.contextmanager
def open_dir(root: Path, rel: PurePosixPath | None = None, *, create: bool = False) -> Iterator[int]:
    """A descriptor of folder ``root/rel``, reached without following links (created if asked)."""
    fd = os.open(root, _DIR_FLAGS)
    try:
        for part in rel.parts if rel is not None else ():
            if create:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, 0o755, dir_fd=fd)
            try:
                child = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                raise UnsafePath(problem=f"{rel} is not a folder of the job's ({exc.strerror})") from None
            os.close(fd)
            fd = child
        yield fd
    finally:
        os.close(fd)


def open_file(dir_fd: int, name: str) -> BinaryIO:
    """A regular file in the folder ``dir_fd``, for reading; links, FIFOs and devices refused."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError as exc:
        raise UnsafePath(problem=f"{name} cannot be read ({exc.strerror})") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UnsafePath(problem=f"{name} is not a regular file")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def read_file(root: Path, rel: PurePosixPath, limit: int) -> bytes:
    """The bytes of ``root/rel``, at most ``limit`` of them (more is an error)."""
    with open_dir(root, rel.parent) as fd, open_file(fd, rel.name) as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise UnsafePath(problem=f"{rel} is larger than {limit} bytes")
    return data


def open_tree(root: Path, rel: PurePosixPath) -> list[tuple[str, BinaryIO]]:
    """Every regular file under ``root/rel`` (sorted by path), opened; any link or special file is an
    error. The caller closes the files."""
    opened: list[tuple[str, BinaryIO]] = []
    try:
        with open_dir(root, rel) as fd:
            _walk(fd, PurePosixPath(), opened)
    except BaseException:
        for _, f in opened:
            f.close()
        raise
    return sorted(opened, key=lambda item: item[0])


def _walk(dir_fd: int, prefix: PurePosixPath, out: list[tuple[str, BinaryIO]]) -> None:
    for entry in sorted(os.listdir(dir_fd)):
        mode = os.stat(entry, dir_fd=dir_fd, follow_symlinks=False).st_mode
        if stat.S_ISDIR(mode):
            child = os.open(entry, _DIR_FLAGS, dir_fd=dir_fd)
            try:
                _walk(child, prefix / entry, out)
            finally:
                os.close(child)
        elif stat.S_ISREG(mode):
            out.append(((prefix / entry).as_posix(), open_file(dir_fd, entry)))
        else:
            raise UnsafePath(problem=f"{prefix / entry} is not a regular file or folder")


def write_file(root: Path, rel: PurePosixPath, source: IO[bytes]) -> None:
    """Write ``source`` to ``root/rel`` as a new file (whatever had that name is removed first)."""
    with open_dir(root, rel.parent, create=True) as fd:
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISDIR(os.stat(rel.name, dir_fd=fd, follow_symlinks=False).st_mode):
                raise UnsafePath(problem=f"{rel} is a folder")
            os.unlink(rel.name, dir_fd=fd)
        out = os.open(rel.name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=fd)
        try:
            with os.fdopen(out, "wb", closefd=False) as f:
                shutil.copyfileobj(source, f, 1 << 20)
        except BaseException:
            os.unlink(rel.name, dir_fd=fd)
            raise
        finally:
            os.close(out)
