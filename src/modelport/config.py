"""Settings: read once from ``MODELPORT_*`` environment variables, then passed down explicitly."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Every knob of a Modelport process. Build one at startup; never read os.environ elsewhere."""

    model_config = SettingsConfigDict(env_prefix="MODELPORT_", extra="ignore")

    home: Path = Field(default=Path("./modelport-data"))
    """Data home: the SQLite database, the blob store and secrets live under it."""

    database_url: str | None = None
    """SQLAlchemy URL of the registry database; default ``sqlite:///<home>/modelport.db``."""

    host: str = "127.0.0.1"
    """Address `modelport serve` binds to."""

    port: int = 8000
    """Port `modelport serve` listens on."""

    workers: int = Field(default=1, ge=1, le=256)
    """API processes `modelport serve` runs on the one port; each has its own loaded models."""

    admin_key: str | None = None
    """Admin API key to install at first start; when unset a random one is printed once."""

    auth: bool = True
    """Require an API key on every endpoint but /healthz and /readyz. Turn off only on purpose."""

    max_predict_bytes: int = 32 * 1024 * 1024
    """Largest accepted body of a predict/infer request."""

    max_upload_bytes: int = 2 * 1024 * 1024 * 1024
    """Largest accepted version upload (streamed to disk, never held in memory)."""

    max_json_bytes: int = 1024 * 1024
    """Largest accepted body of other JSON requests (models, keys, aliases...)."""

    max_batch: int = 65536
    """Largest number of examples in one predict request."""

    model_cache_size: int = 64
    """How many loaded versions one process keeps in memory at most."""

    memory_budget_bytes: int | None = None
    """Memory loaded models may take in one process (default: half the machine's RAM); least recently
    used versions are unloaded to make room, and a model that cannot fit is refused with a 503."""

    batch_max_size: int = 1024
    """Default most examples the dynamic batcher merges into one model call (per version: manifest)."""

    batch_max_wait_ms: float = 0.0
    """Default wait for a batch to fill when the model is idle; 0 runs an idle model's request at once."""

    batch_queue_limit: int = 16384
    """Default most examples queued per version before requests get 429 with Retry-After."""

    inline_below_us: float = 300.0
    """Model calls measured to take less than this (microseconds) run on the event loop instead of a
    worker thread, where the hand-off would cost more than the call; 0 sends every call to a thread."""

    request_timeout_s: float = 30.0
    """Default longest wait of a prediction (queue + compute) before a 503."""

    access_log: bool = False
    """Log one line per request (request id, route, status, time). Off by default: metrics carry the
    aggregate, and a log line per request costs more than the model itself on small models."""

    log_level: str = "info"
    """Log level of the server (debug, info, warning, error)."""

    graceful_timeout: int = 30
    """Seconds SIGTERM waits for requests in flight before the server exits."""

    job_workers: int = Field(default=1, ge=0, le=64)
    """Job worker processes `modelport serve` starts beside the API (0: none; run `modelport worker`)."""

    job_poll_s: float = Field(default=0.2, gt=0, le=60)
    """How often an idle worker looks for a queued job, in seconds (the dispatch latency)."""

    job_heartbeat_s: float = Field(default=2.0, gt=0, le=300)
    """How often a worker marks its running job alive, in seconds."""

    job_heartbeat_timeout_s: float = Field(default=15.0, gt=0, le=3600)
    """A running job whose heartbeat is older than this is taken to have lost its worker and is requeued."""

    job_max_attempts: int = Field(default=3, ge=1, le=100)
    """How many workers may start a job (lost workers count); then the job fails."""

    job_stop_timeout_s: float = Field(default=20.0, gt=0, le=3600)
    """On shutdown, how long a worker may take to checkpoint and requeue its job before it is killed."""

    job_python_modules: Literal["writers", "admins"] = "writers"
    """Who may train a ``model.python`` network (imports an installed module in the worker): anyone who
    may write the target model (the default, as the training design asks), or admins only."""

    job_data_dirs: list[Path] = Field(default_factory=list)
    """Folders a member's training spec may read ``data.path`` from (admins may read any path).

    Empty: members train on built-in sets only. Relative ``data.path`` values resolve against the
    worker's working directory.
    """

    @property
    def memory_budget(self) -> int:
        if self.memory_budget_bytes is not None:
            return self.memory_budget_bytes
        try:
            with open("/proc/meminfo") as f:
                total_kib = int(f.readline().split()[1])
            return total_kib * 1024 // 2
        except (OSError, ValueError, IndexError):
            return 8 << 30

    @property
    def db_url(self) -> str:
        """The database URL in effect."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.home.resolve() / 'modelport.db'}"

    @property
    def blobs_dir(self) -> Path:
        return self.home / "blobs"

    @property
    def tmp_dir(self) -> Path:
        return self.home / "tmp"

    @property
    def jobs_dir(self) -> Path:
        """Working folders of jobs (checkpoints, bundles), one per job id."""
        return self.home / "jobs"
