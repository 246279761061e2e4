"""Networks for ``model.python`` that try, while they are built in a job's process, what hostile code would.

Used by ``test_job_isolation.py``. :class:`EscapeProbe` tries to reach the server's secrets and other
tenants' data, records what each attempt gave as a ``probe`` log event of its job (through the job's own
services client, the one door it has), then trains like any network. :class:`PipeAbuse` sends the worker
something that is not a valid request on the services channel.
"""

from __future__ import annotations

import gc
import json
import os
import socket
import sqlite3
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn


def _services() -> Any:
    return next(o for o in gc.get_objects() if type(o).__name__ == "ServicesClient")


def _attempt(fn: Callable[[], object]) -> str:
    try:
        fn()
    except Exception as exc:  # noqa: BLE001 - every failure is the expected answer
        return f"refused: {type(exc).__name__}"
    return "ALLOWED"


def _read_memory(pid: int) -> bytes:
    with open(f"/proc/{pid}/maps") as maps:
        start = int(maps.readline().split("-")[0], 16)
    with open(f"/proc/{pid}/mem", "rb") as mem:
        mem.seek(start)
        return mem.read(64)


def _connect(address: tuple[str, int]) -> None:
    with socket.create_connection(address, timeout=2):
        pass


def _unix(path: str) -> None:
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(path)


def _in_memory() -> list[str]:
    """Names of the registry's and the store's objects found in this process (there should be none)."""
    wanted = {"Database", "Engine", "LocalBlobStore", "MasterKey", "Worker", "LocalServices"}
    return sorted({type(o).__name__ for o in gc.get_objects() if type(o).__name__ in wanted})


def _open_files(home: Path) -> list[str]:
    """Files this process holds open inside the home, outside its own job folder."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        with_target = os.readlink(f"/proc/self/fd/{fd}") if os.path.exists(f"/proc/self/fd/{fd}") else ""
        if with_target.startswith(str(home)) and "/jobs/" not in with_target:
            found.append(with_target)
    return found


class EscapeProbe(nn.Linear):
    def __init__(self, home: str, worker_pid: int, forkserver_socket: str) -> None:
        root = Path(home)
        attempts = {
            "read master.key": lambda: (root / "secrets" / "master.key").read_bytes(),
            "open the sqlite file": lambda: (
                sqlite3.connect(f"file:{root / 'modelport.db'}?mode=rw", uri=True)
                .execute("select count(*) from api_keys")
                .fetchall()
            ),
            "list blobs": lambda: os.listdir(root / "blobs"),
            "write in the home": lambda: (root / "planted").write_text("x"),
            "read another job's folder": lambda: os.listdir(root / "jobs"),
            "connect to 127.0.0.1:5432": lambda: _connect(("127.0.0.1", 5432)),
            "read the worker's environ": lambda: Path(f"/proc/{worker_pid}/environ").read_bytes(),
            "read the fork server's memory": lambda: _read_memory(os.getppid()),
            "signal the worker": lambda: os.kill(worker_pid, 0),
            "connect to the fork server's socket": lambda: _unix(forkserver_socket),
        }
        record: dict[str, Any] = {name: _attempt(fn) for name, fn in attempts.items()}
        record["objects in memory"] = _in_memory()
        record["open files in the home"] = _open_files(root)
        record["secret variables"] = sorted(k for k in os.environ if "KEY" in k and k.startswith("MODELPORT"))
        _services().report({"type": "log", "message": "probe " + json.dumps(record)})
        super().__init__(64, 10)


class PipeAbuse(nn.Linear):
    """Sends ``how`` on the services channel: a pickle that would create ``marker`` if unpickled, bytes
    that are not JSON, a request naming another owner, half a message, or requests whose answers it
    never reads; then waits for an answer that never comes."""

    def __init__(self, how: str, marker: str) -> None:
        services = _services()
        conn = services._conn
        with services._lock:
            if how == "pickle":
                conn.send(_Planter(marker))  # Connection.send pickles it
            elif how == "not-json":
                conn.send_bytes(b'{"call": "register", "args": {"bundle": ')
            elif how == "another-owner":
                args = {"alias": "prod", "version": 1, "owner": "admin"}
                conn.send_bytes(json.dumps({"call": "set_alias", "args": args}).encode())
            elif how == "half-a-message":
                os.write(conn.fileno(), struct.pack("!i", 1000) + b'{"event": ')
            else:
                while True:
                    conn.send_bytes(json.dumps({"call": "resolve", "args": {"ref": "not a ref!"}}).encode())
            conn.recv_bytes()
        super().__init__(64, 10)


class _Planter:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.marker, "w"))
