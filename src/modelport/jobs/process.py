"""One process per job: a memory limit, a time limit, and none of the server's secrets.

The worker claims a job, heartbeats it and ends it; the job's own process only runs the kind's ``run``.
Job processes are forked from a fork server that imported the training stack once, so a job starts in
milliseconds, and whatever it allocated goes back to the system when it ends::

    worker (parent)                              job process (child, its own process group)
    claim; Lease thread: heartbeat, cancel       RLIMIT_DATA = the memory limit; secret variables dropped
    start ─────────── settings, job ──────────>  kinds.get(kind).run(job, env); events go to the database
    lease says stop ──────── "stop" ──────────>  env.should_stop() turns true: checkpoint, JobStopped
    past job_timeout_s: SIGKILL the group        the worker is gone (pipe closed): SIGKILL its own group
    <──────────────────── Outcome ────────────   succeeded + result | stopped | failed + message
    finish / release, fenced by the lease

A job that allocates past its limit gets MemoryError (or torch's "can't allocate memory") and fails with
"job exceeded its memory limit of N bytes"; one past its time fails with "job exceeded its time limit of
N s"; one whose process dies (the kernel's OOM killer, a crash) fails with how it died. The worker runs no
job code, so it stays up and takes the next job.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import resource
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from multiprocessing import forkserver
from multiprocessing.connection import Connection
from typing import Any, Literal

from modelport.config import Settings
from modelport.errors import ModelportError
from modelport.jobs import events, kinds
from modelport.jobs.kinds import JobFailed, JobStopped, RunEnv
from modelport.jobs.queue import Claimed
from modelport.registry.db import Database
from modelport.store.local import open_store

log = logging.getLogger("modelport.worker")

JOB_SECRET_ENV = ("MODELPORT_ADMIN_KEY", "MODELPORT_KEY", "MODELPORT_MASTER_KEY", "MODELPORT_MASTER_KEY_FILE")
"""Environment variables a job's process never has (the worker may need the master key; its jobs do not
read it from the environment: the store they use is opened from the settings they are handed)."""
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
MAX_ERROR_CHARS = 1000
_OOM_TEXT = ("can't allocate memory", "cannot allocate memory", "not enough memory", "std::bad_alloc")
_forkserver_lock = threading.Lock()


def public_message(exc: BaseException, settings: Settings) -> str:
    """What a caller may read about a failure: the message, without server paths."""
    text = exc.message if isinstance(exc, ModelportError) else f"{type(exc).__name__}: {exc}"
    for path, shown in ((settings.home.resolve(), "$MODELPORT_HOME"), (settings.home, "$MODELPORT_HOME")):
        text = text.replace(str(path), shown)
    return text[:MAX_ERROR_CHARS]


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


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a job's process ended, as the worker records it."""

    status: Literal["succeeded", "failed", "stopped"]
    result: dict[str, Any] | None = None
    error: str | None = None
    lost: bool = False
    """For ``stopped``: the job's events found the lease gone (it was requeued or ended elsewhere)."""


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


class JobProcess:
    """A job's process, seen from the worker: start it, relay stop requests, enforce the time limit."""

    def __init__(self, settings: Settings, job: Claimed, worker_id: str) -> None:
        self.limit = memory_limit(settings)
        ctx = start_forkserver()
        control_r, self._control = ctx.Pipe(duplex=False)  # worker -> job: "stop"
        self._outcome, outcome_w = ctx.Pipe(duplex=False)  # job -> worker: the Outcome
        job_settings = settings.model_copy(update={"admin_key": None})
        self.proc = ctx.Process(
            target=_job_main,
            args=(job_settings, job, worker_id, self.limit, control_r, outcome_w),
            name=f"modelport-job-{job.id[:8]}",
        )
        try:
            self.proc.start()
        except BaseException:
            self._control.close()
            self._outcome.close()
            raise
        finally:
            control_r.close()  # the child holds its own copies; ours would hide the child's exit
            outcome_w.close()

    def wait(self, should_stop: Callable[[], bool], timeout_s: float | None) -> Outcome:
        """The job's outcome: what it reported, or why it ended without reporting."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        asked = False
        try:
            while True:
                if self._outcome.poll(POLL_S):
                    return self._received()
                if not asked and should_stop():
                    asked = self._send_stop()
                if deadline is not None and time.monotonic() >= deadline:
                    self.kill()
                    return Outcome("failed", error=time_message(timeout_s or 0.0))
        finally:
            self._close()

    def _received(self) -> Outcome:
        try:
            outcome: Outcome = self._outcome.recv()
        except (EOFError, OSError):  # the process ended without a word
            self.proc.join()
            return Outcome("failed", error=self._death())
        self.proc.join(timeout=30)
        if self.proc.is_alive():  # reported, then hung on the way out (a stuck thread)
            self.kill()
        return outcome

    def _send_stop(self) -> bool:
        with contextlib.suppress(OSError):
            self._control.send("stop")
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
        self._outcome.close()
        if self.proc.exitcode is not None:
            self.proc.close()


# -- the job's side -----------------------------------------------------------------------------------
def _job_main(
    settings: Settings, job: Claimed, worker_id: str, limit: int, control: Connection, outcome: Connection
) -> None:
    """The job process: isolate, limit, listen for "stop", run the job, report how it ended."""
    with contextlib.suppress(OSError):
        os.setpgid(0, 0)  # its own group: the worker kills it whole; the terminal's Ctrl-C stays with the worker
    for name in JOB_SECRET_ENV:
        os.environ.pop(name, None)
    _log_like(settings)
    stop = threading.Event()
    threading.Thread(target=_listen, args=(control, stop), name="job-control", daemon=True).start()
    _limit_memory(limit)
    result = _run(settings, job, worker_id, limit, stop)
    outcome.send(result)


def _log_like(settings: Settings) -> None:
    logger = logging.getLogger("modelport")
    if not logger.handlers:
        logger.setLevel(logging.DEBUG if settings.log_level == "trace" else settings.log_level.upper())
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
        logger.propagate = False


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
            message = control.recv()
        except (EOFError, OSError):
            if os.getpgrp() == os.getpid():
                os.killpg(os.getpid(), signal.SIGKILL)
            os.kill(os.getpid(), signal.SIGKILL)
            return
        if message == "stop":
            stop.set()


def _run(settings: Settings, job: Claimed, worker_id: str, limit: int, stop: threading.Event) -> Outcome:
    db = Database(settings)
    lost = threading.Event()
    try:
        env = RunEnv(
            db,
            open_store(settings, create_key=False),
            settings,
            kinds.workdir_of(settings, job.id),
            events.EventSink(db, job.id, worker_id, on_lost=lost.set),
            lambda: stop.is_set() or lost.is_set(),
        )
        ended = _attempt(job, env, limit)
        if isinstance(ended, str):  # the message of a failure, built after the failing frames were freed
            return Outcome("failed", error=ended)
        return Outcome("stopped", lost=lost.is_set()) if ended is None else ended
    finally:
        db.dispose()


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
