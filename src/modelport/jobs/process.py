"""One process per job: a memory limit, a time limit, a sandbox, and nothing of the server's secrets.

The worker claims a job, heartbeats it, does all of its registry and store work, and ends it; the job's
own process only runs the kind's ``run``, in a sandbox, holding no database connection and no master
key. Job processes are forked from a fork server that imported the training stack once, so a job starts
in milliseconds, and whatever it allocated goes back to the system when it ends::

    worker (parent): Database, store, master key      job process (child, its own process group)
    claim; Lease thread: heartbeat, cancel            RLIMIT_DATA = the memory limit; secrets dropped;
    sandbox policy: workdir, data paths, forbidden    TMPDIR in its folder; sandbox.apply(policy)
    start ───── settings (no keys), job, policy ────> kinds.get(kind).run(job, env)
    rpc.receive: check, serve as the owner  <── JSON ── {"call": "register", "args": {...}}, {"event": ...}
                 ──────────────── JSON ────────────>  {"ok": ...} | {"error": ...}
    lease says stop ──────── b"stop" ─────────────>   env.should_stop() turns true: checkpoint, JobStopped
    past job_timeout_s: SIGKILL the group             the worker is gone (pipe closed): SIGKILL its own group
    bad message (pickle, not JSON, half of one,
    answers left unread): SIGKILL, fail
    <──────────────────── JSON outcome ─────────────  succeeded + result | stopped | failed + message
    finish / release, fenced by the lease

The worker never unpickles anything the job sends (``rpc.py``). A job that allocates past its limit gets
MemoryError (or torch's "can't allocate memory") and fails with "job exceeded its memory limit of N
bytes"; one past its time fails with "job exceeded its time limit of N s"; one whose process dies (the
kernel's OOM killer, a crash) fails with how it died. The worker runs no job code, so it stays up and
takes the next job.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import resource
import signal
import socket
import struct
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from multiprocessing import forkserver
from multiprocessing.connection import Connection
from pathlib import Path

from sqlalchemy.engine import make_url

from modelport.config import Settings
from modelport.errors import ModelportError
from modelport.jobs import kinds, rpc, sandbox
from modelport.jobs.kinds import JobFailed, JobStopped, RunEnv
from modelport.jobs.queue import Claimed
from modelport.jobs.rpc import MAX_ERROR_CHARS as MAX_ERROR_CHARS
from modelport.jobs.rpc import Outcome, ProtocolError, ServicesClient
from modelport.jobs.rpc import public_message as public_message
from modelport.jobs.services import LocalServices

log = logging.getLogger("modelport.worker")

JOB_SECRET_ENV = ("MODELPORT_ADMIN_KEY", "MODELPORT_KEY", "MODELPORT_MASTER_KEY", "MODELPORT_MASTER_KEY_FILE")
"""Environment variables a job's process never has."""
JOB_SETTINGS = ("home", "log_level", "job_python_modules", "job_data_dirs", "job_sandbox")
"""The settings a job's process is given; every other one (keys, database URL, TLS) is left at its default."""
PRELOAD = [
    "__main__",
    "modelport.jobs.worker",
    "modelport.jobs.optimize",
    "modelport.jobs.sweep",
    "modelport.training.run",
    "modelport.training.data.builtin",  # scikit-learn's data sets: 2 s to import
    "modelport.formats.onnx",
    "torch.onnx.utils",
    "torch._dynamo",  # what torch.onnx.export imports at its first call: 1-2 s
]
"""Imported once by the fork server, so a job process starts with them loaded (a tiny training run then
takes 0.1 s instead of 5 s of imports)."""
POLL_S = 0.1
IO_TIMEOUT_S = 10.0
"""Longest the worker waits for the rest of a message the job began, or for room to send an answer."""
_OOM_TEXT = ("can't allocate memory", "cannot allocate memory", "not enough memory", "std::bad_alloc")
_forkserver_lock = threading.Lock()


def memory_limit(settings: Settings) -> int:
    """Bytes one job's process may allocate: ``job_max_memory_bytes``, by default half the machine's RAM."""
    if settings.job_max_memory_bytes is not None:
        return settings.job_max_memory_bytes
    try:
        with open("/proc/meminfo") as f:
            return int(f.readline().split()[1]) * 1024 // 2
    except (OSError, ValueError, IndexError):
        return 8 << 30


def memory_message(limit: int) -> str:
    return f"job exceeded its memory limit of {limit} bytes"


def time_message(limit_s: float) -> str:
    return f"job exceeded its time limit of {limit_s:g} s"


def protocol_message(why: str) -> str:
    return f"the job's process broke the services protocol ({why}); it was stopped"


# -- the worker's side --------------------------------------------------------------------------------
@contextlib.contextmanager
def _without_secrets() -> Iterator[None]:
    """Drop the secret variables from this process's environment for a moment (the fork server and
    the resource tracker start with the environment of the moment, and keep it)."""
    saved = {name: os.environ.pop(name) for name in JOB_SECRET_ENV if name in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def start_forkserver() -> multiprocessing.context.ForkServerContext:
    """The fork server job processes come from, started (once per process) without the secrets."""
    ctx = multiprocessing.get_context("forkserver")
    with _forkserver_lock, _without_secrets():
        ctx.set_forkserver_preload(PRELOAD)  # used only by a fork server not yet running
        forkserver.ensure_running()
    return ctx


def job_settings(settings: Settings) -> Settings:
    """The settings a job's process gets: :data:`JOB_SETTINGS` only (no key, no database URL)."""
    return Settings.model_construct(**{name: getattr(settings, name) for name in JOB_SETTINGS})


def job_policy(settings: Settings, services: LocalServices) -> sandbox.Policy:
    """The sandbox of one job: its folder; job_data_dirs and its spec's data read-only; never the home,
    the key files or the database file; TCP and /dev/shm only for parallel training."""
    forbidden: list[Path | None] = [settings.home, settings.master_key_file, settings.tls_key, _sqlite_file(settings)]
    paths, parallel = _needs(services)
    read: list[str | Path] = [*settings.job_data_dirs, *paths]
    return sandbox.Policy(
        mode=settings.job_sandbox,
        workdir=str(services.workdir.resolve()),
        read=tuple(str(Path(p).resolve()) for p in read),
        forbidden=tuple(str(Path(p).resolve()) for p in forbidden if p is not None),
        parallel=parallel,
    )


def _sqlite_file(settings: Settings) -> Path | None:
    if not settings.database_url:
        return None
    url = make_url(settings.database_url)
    return Path(url.database) if url.drivername.startswith("sqlite") and url.database else None


def _needs(services: LocalServices) -> tuple[list[str], bool]:
    """The data paths the job's spec names, and whether it trains in parallel (gloo/NCCL over TCP).

    A spec that no longer parses needs nothing: the job fails on it with the proper message."""
    job = services.job
    try:
        if job.kind == "train":
            from modelport.training.spec import load_spec

            spec = load_spec(job.spec)
            return [spec.data.path] if spec.data.path else [], spec.train.parallel.strategy != "none"
        if job.kind == "optimize":
            from modelport.optimize.spec import load_optimize_spec

            opt = load_optimize_spec(job.spec)
            if opt.data is not None:
                return [opt.data.path] if opt.data.path else [], False
            source = services.resolve(opt.source)
            path = services.training_data(source.model, source.version).get("path")
            return [path] if isinstance(path, str) else [], False
    except (ModelportError, ValueError):
        pass
    return [], False


class JobProcess:
    """A job's process, seen from the worker: start it, serve its requests, relay stop requests,
    enforce the time limit."""

    def __init__(self, settings: Settings, job: Claimed, services: LocalServices) -> None:
        self.limit = memory_limit(settings)
        self.services = services
        policy = job_policy(settings, services)
        ctx = start_forkserver()
        control_r, self._control = ctx.Pipe(duplex=False)  # worker -> job: b"stop"
        self._channel, channel_child = ctx.Pipe(duplex=True)  # JSON both ways (rpc.py)
        _bound_io(self._channel)
        self.proc = ctx.Process(
            target=_job_main,
            args=(job_settings(settings), job, self.limit, control_r, channel_child, policy),
            name=f"modelport-job-{job.id[:8]}",
        )
        try:
            self.proc.start()
        except BaseException:
            self._control.close()
            self._channel.close()
            raise
        finally:
            control_r.close()  # the child holds its own copies; ours would hide the child's exit
            channel_child.close()

    def wait(self, should_stop: Callable[[], bool], timeout_s: float | None) -> Outcome:
        """The job's outcome: what it reported, or why it ended without reporting."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        asked = False
        try:
            while True:
                if self._channel.poll(POLL_S):
                    ended = self._serve_one()
                    if ended is not None:
                        return ended
                if not asked and should_stop():
                    asked = self._send_stop()
                if deadline is not None and time.monotonic() >= deadline:
                    self.kill()
                    return Outcome("failed", error=time_message(timeout_s or 0.0))
        finally:
            self._close()

    def _serve_one(self) -> Outcome | None:
        """Read and handle one message of the job; its Outcome when it has ended."""
        try:
            raw = self._channel.recv_bytes(rpc.MAX_MESSAGE_BYTES)
        except EOFError:  # the process ended without a word
            self.proc.join()
            return Outcome("failed", error=self._death())
        except OSError:  # too long, cut short (IO_TIMEOUT_S), or the pipe broke as the process died
            return self._broken(f"a message over {rpc.MAX_MESSAGE_BYTES} bytes, or one it did not finish")
        try:
            answer = rpc.receive(self.services, raw)
        except ProtocolError as exc:
            return self._violation(str(exc))
        if isinstance(answer, Outcome):
            self.proc.join(timeout=30)
            if self.proc.is_alive():  # reported, then hung on the way out (a stuck thread)
                self.kill()
            return answer
        if answer is not None:
            try:
                self._channel.send_bytes(answer)
            except OSError:  # died meanwhile, or stopped reading its answers (IO_TIMEOUT_S)
                return self._broken("it does not read the answers")
        return None

    def _broken(self, why: str) -> Outcome:
        self.proc.join(timeout=0.5)
        if self.proc.exitcode is not None:
            return Outcome("failed", error=self._death())
        return self._violation(why)

    def _violation(self, why: str) -> Outcome:
        log.warning("job %s: its process broke the services protocol (%s); killed", self.services.job.id, why)
        self.kill()
        return Outcome("failed", error=protocol_message(why))

    def _send_stop(self) -> bool:
        with contextlib.suppress(OSError):
            self._control.send_bytes(b"stop")
        return True

    def _death(self) -> str:
        code = self.proc.exitcode
        if code is not None and code < 0:
            name = signal.Signals(-code).name
            if -code == signal.SIGKILL:
                return f"the job's process was killed ({name}), most likely by the system for using too much memory"
            return f"the job's process died ({name})"
        return f"the job's process exited with status {code} before reporting"

    def kill(self) -> None:
        """SIGKILL the job's process group (its own training processes too), then reap it."""
        pid = self.proc.pid
        if pid is not None and self.proc.is_alive():
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):  # not (yet) a group of its own
                self.proc.kill()
        self.proc.join(timeout=30)

    def _close(self) -> None:
        self._control.close()
        self._channel.close()
        if self.proc.exitcode is not None:
            self.proc.close()


def _bound_io(conn: Connection) -> None:
    """A read or write on the worker's end of the channel waits at most IO_TIMEOUT_S (it is a socket
    pair): a job that sends half a message, or never reads its answers, cannot hang its worker."""
    with socket.socket(fileno=os.dup(conn.fileno())) as sock:
        timeval = struct.pack("ll", int(IO_TIMEOUT_S), int(IO_TIMEOUT_S % 1 * 1e6))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)


# -- the job's side -----------------------------------------------------------------------------------
def _job_main(
    settings: Settings, job: Claimed, limit: int, control: Connection, channel: Connection, policy: sandbox.Policy
) -> None:
    """The job process: isolate, limit, sandbox, listen for "stop", run the job, report how it ended."""
    with contextlib.suppress(OSError):
        os.setpgid(0, 0)  # its own group: the worker kills it whole; the terminal's Ctrl-C stays with the worker
    for name in JOB_SECRET_ENV:
        os.environ.pop(name, None)
    _log_like(settings)
    workdir = kinds.workdir_of(settings, job.id)
    _private_tmp(workdir)
    _limit_memory(limit)
    refused = _sandbox(policy)  # before any thread starts: the sandbox binds this thread and its offspring
    services = ServicesClient(channel, workdir)
    stop = threading.Event()
    threading.Thread(target=_listen, args=(control, stop), name="job-control", daemon=True).start()
    outcome = Outcome("failed", error=refused) if refused else _run(settings, job, services, limit, stop)
    services.finish(outcome)


def _log_like(settings: Settings) -> None:
    logger = logging.getLogger("modelport")
    if not logger.handlers:
        logger.setLevel(logging.DEBUG if settings.log_level == "trace" else settings.log_level.upper())
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
        logger.propagate = False


def _private_tmp(workdir: Path) -> None:
    """Temporary files go to the job's own folder (other jobs' temporary files are out of its sandbox)."""
    tmp = workdir / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    os.environ["TMPDIR"] = str(tmp)
    tempfile.tempdir = str(tmp)


def _sandbox(policy: sandbox.Policy) -> str | None:
    """Apply the sandbox; the job's failure message when ``required`` cannot be met."""
    try:
        applied = sandbox.apply(policy)
    except sandbox.SandboxError as exc:
        return str(exc)
    for warning in applied.warnings:
        log.warning("job sandbox (best-effort): %s", warning)
    return None


def _limit_memory(limit: int) -> None:
    """RLIMIT_DATA: heap and private anonymous mappings, the memory a job allocates (not the address
    space, which CUDA and big libraries reserve far beyond what they use). Hard too: a job cannot lift it."""
    _, hard = resource.getrlimit(resource.RLIMIT_DATA)
    value = limit if hard == resource.RLIM_INFINITY else min(limit, hard)
    resource.setrlimit(resource.RLIMIT_DATA, (value, value))


def _listen(control: Connection, stop: threading.Event) -> None:
    """Relay the worker's "stop"; when the worker is gone (pipe closed), end this job's whole group."""
    while True:
        try:
            message = control.recv_bytes()
        except (EOFError, OSError):
            if os.getpgrp() == os.getpid():
                os.killpg(os.getpid(), signal.SIGKILL)
            os.kill(os.getpid(), signal.SIGKILL)
            return
        if message == b"stop":
            stop.set()


def _run(settings: Settings, job: Claimed, services: ServicesClient, limit: int, stop: threading.Event) -> Outcome:
    env = RunEnv(services, settings, services.workdir, services.report, stop.is_set)
    ended = _attempt(job, env, limit)
    if isinstance(ended, str):  # the message of a failure, built after the failing frames were freed
        return Outcome("failed", error=ended)
    return Outcome("stopped") if ended is None else ended


def _attempt(job: Claimed, env: RunEnv, limit: int) -> Outcome | str | None:
    """The job's success, None when it stopped early, or the message of its failure."""
    try:
        return Outcome("succeeded", result=kinds.get(job.kind).run(job, env))
    except JobStopped:
        return None
    except MemoryError:
        return memory_message(limit)
    except (JobFailed, ModelportError) as exc:
        return public_message(exc, env.settings)
    except Exception as exc:  # any failure of the job ends the job
        if any(text in str(exc).lower() for text in _OOM_TEXT):
            return memory_message(limit)
        log.error("job %s failed: %s", job.id, type(exc).__name__)
        log.debug("job %s traceback", job.id, exc_info=True)
        return public_message(exc, env.settings)
