"""Worker processes: claim a queued job, run it with a heartbeat, end it; never lose one.

A worker is one process running one job at a time (``modelport worker``; ``modelport serve`` starts
``--job-workers N`` of them). Jobs never run in the API's process, so training cannot stall inference,
and not in the worker's either: each runs in a process of its own (``process.py``) under a memory and a
time limit, so a job that runs out of either is failed and the worker takes the next one.

While a job runs, a :class:`Lease` thread marks it alive every ``job_heartbeat_s`` and reads its
``cancel_requested`` flag. The job polls ``should_stop``, which turns true on a cancel request, on
shutdown (SIGTERM: the job is requeued, not counted as an attempt, and resumes from its checkpoint on
the next worker) and when the lease is lost. A worker killed outright (``kill -9``) stops heartbeating;
any worker then requeues the job once its heartbeat is older than ``job_heartbeat_timeout_s``, or fails
it after ``job_max_attempts`` starts.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable

from modelport.config import Settings
from modelport.jobs import kinds, queue, sandbox
from modelport.jobs.process import MAX_ERROR_CHARS as MAX_ERROR_CHARS
from modelport.jobs.process import JobProcess, start_forkserver
from modelport.jobs.process import public_message as public_message
from modelport.jobs.rpc import Outcome
from modelport.jobs.services import LocalServices
from modelport.registry.db import Database
from modelport.store.local import open_store

log = logging.getLogger("modelport.worker")

SECRET_ENV = ("MODELPORT_ADMIN_KEY", "MODELPORT_KEY")
"""Never handed to a worker process: a job runs code from a spec and must not hold the server's keys."""


def new_worker_id() -> str:
    return f"{socket.gethostname()[:40]}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class Lease(threading.Thread):
    """Heartbeats one claimed job; says why it should stop: ``cancel``, ``shutdown`` or ``lost``."""

    def __init__(self, db: Database, job: queue.Claimed, every_s: float, shutdown: Callable[[], bool]) -> None:
        super().__init__(name=f"lease-{job.id[:8]}", daemon=True)
        self.db = db
        self.job = job
        self.every_s = every_s
        self.shutdown = shutdown
        self.cancelled = False
        self.lost = False
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.wait(self.every_s):
            try:
                alive, cancel = queue.heartbeat(self.db, self.job.id, self.job.worker)
            except Exception as exc:  # noqa: BLE001 - a database hiccup: try again next beat
                log.warning("heartbeat of job %s failed (%s)", self.job.id, type(exc).__name__)
                continue
            self.lost = self.lost or not alive
            self.cancelled = self.cancelled or cancel

    def mark_lost(self) -> None:
        self.lost = True

    def reason(self) -> str | None:
        if self.lost:
            return "lost"
        if self.cancelled:
            return "cancel"
        if self.shutdown():
            return "shutdown"
        return None

    def should_stop(self) -> bool:
        return self.reason() is not None

    def close(self) -> None:
        self._done.set()
        self.join(timeout=10)


class Worker:
    """The loop of one worker process: reap lost jobs, claim one, run it, repeat until stopped."""

    def __init__(self, settings: Settings, *, worker_id: str | None = None, parent_pid: int | None = None) -> None:
        self.settings = settings
        self.id = worker_id or new_worker_id()
        self.parent_pid = parent_pid
        self.db = Database(settings)
        self.store = open_store(settings)  # the same master key as the server: it reads and writes blobs for its jobs
        self._stop = threading.Event()
        self._last_reap = 0.0

    def stop(self) -> None:
        """Ask the loop to end; a running job is checkpointed and requeued."""
        self._stop.set()

    def stopping(self) -> bool:
        if self.parent_pid is not None and os.getppid() != self.parent_pid:
            self._stop.set()  # the server that started us is gone
        return self._stop.is_set()

    def run_forever(self) -> None:
        log.info("worker %s waiting for jobs", self.id)
        while not self.stopping():
            try:
                busy = self.step()
            except Exception as exc:  # noqa: BLE001 - e.g. the database restarting: keep the worker alive
                log.error("worker %s: %s; retrying", self.id, type(exc).__name__)
                busy = False
                self._stop.wait(1.0)
            if not busy:
                self._stop.wait(self.settings.job_poll_s)
        log.info("worker %s stopped", self.id)

    def step(self) -> bool:
        """Reap when due, then claim and run one job; False when there was nothing to do."""
        now = time.monotonic()
        if now - self._last_reap >= min(5.0, self.settings.job_heartbeat_timeout_s / 2):
            self._last_reap = now
            for job_id in queue.reap(self.db, self.settings.job_heartbeat_timeout_s):
                log.warning("job %s lost its worker; requeued or failed", job_id)
        if not queue.has_queued(self.db):
            return False
        job = queue.claim(self.db, self.id)
        if job is None:
            return False
        self.run_job(job)
        return True

    def run_job(self, job: queue.Claimed) -> str:
        """Run a claimed job to its end; returns the status it ended with (or ``lost``/``queued``)."""
        log.info("job %s (%s) started, attempt %d", job.id, job.kind, job.attempt)
        started = time.monotonic()
        lease = Lease(self.db, job, self.settings.job_heartbeat_s, self.stopping)
        lease.start()
        workdir = kinds.workdir_of(self.settings, job.id)
        workdir.mkdir(parents=True, exist_ok=True)
        try:
            status = self._run(job, lease)
        finally:
            lease.close()
        if status in ("failed", "cancelled") or (status == "succeeded" and job.parent_id is None):
            shutil.rmtree(workdir, ignore_errors=True)  # a trial's folder is kept for its sweep
        log.info("job %s ended %s after %.1fs", job.id, status, time.monotonic() - started)
        return status

    def _run(self, job: queue.Claimed, lease: Lease) -> str:
        outcome = self._outcome(job, lease)
        if outcome.status == "stopped":
            return self._stopped(job, lease)
        if outcome.status == "failed":
            log.warning("job %s failed: %s", job.id, outcome.error)
            return self._end(job, "failed", error=outcome.error)
        if lease.lost:
            return "lost"
        return self._end(job, "succeeded", result=outcome.result)

    def _outcome(self, job: queue.Claimed, lease: Lease) -> Outcome:
        """Run the job in its own sandboxed process (memory and time limits), serving its registry and
        store requests meanwhile, and say how it ended."""
        refused = sandbox.check(self.settings.job_sandbox)
        if refused is not None:
            return Outcome("failed", error=refused)
        services = LocalServices(self.db, self.store, self.settings, job, self.id, on_lost=lease.mark_lost)
        try:
            child = JobProcess(self.settings, job, services)
        except Exception as exc:  # noqa: BLE001 - e.g. no memory left to fork: the job fails, the worker stays
            log.error("job %s: could not start its process (%s)", job.id, type(exc).__name__)
            return Outcome("failed", error=f"could not start the job's process ({type(exc).__name__})")
        return child.wait(lease.should_stop, self.settings.job_timeout_s)

    def _stopped(self, job: queue.Claimed, lease: Lease) -> str:
        reason = lease.reason()
        if reason == "lost":
            return "lost"
        if reason == "shutdown":
            queue.release(self.db, job.id, self.id, reason="the worker shut down; resumes from its checkpoint")
            return "queued"
        return self._end(job, "cancelled")

    def _end(self, job: queue.Claimed, status: str, **fields: object) -> str:
        ok = queue.finish(self.db, job.id, self.id, status, **fields)  # type: ignore[arg-type]  # result/error
        return status if ok else "lost"

    def close(self) -> None:
        self.db.dispose()


def warm_up() -> None:
    """Start the job processes' fork server now (it imports the training stack once), so a claimed job
    starts training at once."""
    with contextlib.suppress(OSError):
        start_forkserver()


def worker_env(settings: Settings) -> dict[str, str]:
    """The environment of a worker process: the server's, without keys, with this server's settings."""
    env = {k: v for k, v in os.environ.items() if k not in SECRET_ENV}
    env["MODELPORT_HOME"] = str(settings.home.resolve())
    if settings.database_url:
        env["MODELPORT_DATABASE_URL"] = settings.database_url
    for name in Settings.model_fields:
        value = getattr(settings, name)
        if name.startswith("job_") and name != "job_data_dirs" and value is not None:
            env[f"MODELPORT_{name.upper()}"] = str(value)
    env["MODELPORT_LOG_LEVEL"] = settings.log_level
    # Workers decrypt blobs (datasets, source versions) and store new ones, so they get the server's
    # master key exactly: the value in effect, not whatever the environment happens to hold. It is
    # passed in the environment (readable by this user only, never on a command line or in a log).
    env.pop("MODELPORT_MASTER_KEY", None)
    env.pop("MODELPORT_MASTER_KEY_FILE", None)
    if settings.master_key:
        env["MODELPORT_MASTER_KEY"] = settings.master_key
    if settings.master_key_file:
        env["MODELPORT_MASTER_KEY_FILE"] = str(settings.master_key_file.resolve())
    env["MODELPORT_ENCRYPTION"] = settings.encryption
    return env


class WorkerProcesses:
    """The worker processes of ``modelport serve``: started with the server, stopped with it.

    A worker that exits on its own is started again (at most once per ``restart_after_s``).
    """

    def __init__(self, settings: Settings, count: int, *, restart_after_s: float = 5.0) -> None:
        self.settings = settings
        self.count = count
        self.restart_after_s = restart_after_s
        self.procs: list[subprocess.Popen[bytes]] = []
        self._started: list[float] = []
        self._closing = threading.Event()
        self._lock = threading.Lock()
        self._watch = threading.Thread(target=self._supervise, name="job-workers", daemon=True)

    def _spawn(self) -> subprocess.Popen[bytes]:
        args = [sys.executable, "-m", "modelport", "worker", "--exit-with-parent", str(os.getpid())]
        return subprocess.Popen(args, env=worker_env(self.settings), stdin=subprocess.DEVNULL)

    def start(self) -> None:
        for _ in range(self.count):
            self.procs.append(self._spawn())
            self._started.append(time.monotonic())
        if self.count:
            self._watch.start()

    def _supervise(self) -> None:
        while not self._closing.wait(1.0):
            for i, proc in enumerate(self.procs):
                due = time.monotonic() - self._started[i] >= self.restart_after_s
                if proc.poll() is None or not due:
                    continue
                with self._lock:  # never start one after stop() began
                    if self._closing.is_set():
                        return
                    log.warning("job worker %d exited with %s; starting it again", proc.pid, proc.returncode)
                    self.procs[i], self._started[i] = self._spawn(), time.monotonic()

    def stop(self) -> None:
        """SIGTERM every worker (each requeues its job), wait ``job_stop_timeout_s``, then kill."""
        with self._lock:
            self._closing.set()
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.settings.job_stop_timeout_s
        for proc in self.procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("job worker %d did not stop in time; killing it", proc.pid)
                proc.kill()
                proc.wait()
        if self._watch.is_alive():
            self._watch.join(timeout=5)
