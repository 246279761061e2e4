"""Settings: read once from ``MODELPORT_*`` environment variables, then passed down explicitly."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
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

    max_json_depth: int = Field(default=64, ge=1, le=1000)
    """Deepest nesting of arrays and objects in the JSON body of a control-plane request (and an upload's
    manifest); deeper: 400 ``json_too_deep``. Inference bodies nest only as deep as the model's signature."""

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

    inference_lane: bool = True
    """Answer predict and infer requests at the HTTP protocol level, without an ASGI cycle each
    (``api/lane.py``: about 20 µs less per request); off: every request goes through the ASGI app."""

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

    master_key: str | None = Field(default=None, repr=False)
    """Master key that wraps every blob's data key: 32 bytes as 64 hex characters or base64.

    Kept out of ``repr`` and log lines. ``modelport serve`` hands it to its job workers (they read
    blobs too). Give this or ``master_key_file``, not both; with neither, the home's own
    ``secrets/master.key`` is used (see ``encryption``).
    """

    master_key_file: Path | None = None
    """File holding the master key (32 raw bytes, or hex/base64 text); keep it mode 0600."""

    encryption: Literal["auto", "on", "off"] = "auto"
    """Encrypt new blobs at rest (AES-256-GCM, one data key per blob, wrapped by the master key).

    ``auto``: on when a master key is given or the home has ``secrets/master.key``; a NEW home (no
    blobs, no SQLite database yet) gets a random ``secrets/master.key`` (0600) at first start. An
    existing home of plaintext blobs without a key stays plaintext, so upgrading never locks anyone
    out. ``on``: create the home key if no key is given, whatever the home holds. ``off``: write
    plaintext (existing encrypted blobs stay readable with the key). Reads always accept both: a
    blob without a key sidecar is plaintext, and every blob is re-hashed whichever it is.
    """

    rate_limit_rps: float = Field(default=0.0, ge=0)
    """Inference requests per second each API key may make (a key may carry its own); 0: no limit. Held
    for the whole server, across ``workers`` processes too. Over it: 429 + Retry-After."""

    rate_limit_burst: int = Field(default=0, ge=0)
    """Inference requests a key may make at once before its rate applies; 0: one second's worth (at least 1)."""

    rate_limit_table: Path | None = None
    """Set by ``serve --workers`` for its API processes: the file (under ``<home>/run/``) holding the rate
    buckets they share. Unset: the process keeps its own (a single API process)."""

    max_concurrent_jobs_per_principal: int = Field(default=0, ge=0)
    """Queued plus running jobs one principal may have (a sweep counts once; a key may carry its own
    limit); 0: no limit. Over it, a submit gets 429 + Retry-After."""

    max_storage_bytes_per_principal: int = Field(default=0, ge=0)
    """Bytes of versions a principal uploaded plus datasets it owns; an upload that would pass it gets
    429 + Retry-After before anything is stored; 0: no limit."""

    allowed_hosts: list[str] = Field(default_factory=lambda: ["127.0.0.1", "localhost", "::1", "[::1]"])
    """Host names the server answers to (the request's Host header, port ignored); other names get 400,
    which stops DNS rebinding. IP addresses are always answered (rebinding needs a name); ``host`` is
    added too. ``"*"`` allows any. A JSON list: ``MODELPORT_ALLOWED_HOSTS='["models.example.com"]'``."""

    cors_origins: list[str] = Field(default_factory=list)
    """Browser origins (``scheme://host[:port]``, exact) that may call the API from other sites. Empty
    (the default): no CORS headers; preflights and cross-origin requests are refused with 403."""

    tls_cert: Path | None = None
    """PEM certificate (chain) to serve HTTPS with; needs ``tls_key``."""

    tls_key: Path | None = None
    """PEM private key of ``tls_cert``."""

    request_header_timeout_s: float = Field(default=10.0, gt=0, le=3600)
    """A connection must send a request's line and headers within this many seconds (from connecting,
    or from the first byte of the next request on a kept-alive connection), else it is closed."""

    request_body_timeout_s: float = Field(default=30.0, gt=0, le=86400)
    """A request body must arrive within this many seconds of its first read, plus one second per
    ``request_body_min_rate`` bytes received (a large upload on a good link is never cut); a slower
    body gets 408 and the connection is closed."""

    request_body_min_rate: int = Field(default=64 * 1024, ge=1)
    """Bytes per second a long body must keep up (see ``request_body_timeout_s``)."""

    idle_poll_us: float = Field(default=0.0, ge=0, le=10_000)
    """After an answer at low load (nothing else in flight, no answer just before it), the event loop
    keeps polling its sockets for this many microseconds before it sleeps in the kernel: a request that
    arrives meanwhile skips the wake-up (about 15% of the latency at one connection on one VM here, with
    200; nothing on another). Under load it never starts. Off by default: it burns that window of CPU
    after each lone answer. For a dedicated core serving light traffic that wants the lowest latency."""

    keep_alive_timeout_s: int = Field(default=5, ge=1, le=3600)
    """An idle kept-alive connection is closed after this many seconds."""

    max_header_bytes: int = Field(default=32 * 1024, ge=1024, le=1024 * 1024)
    """Largest request line plus headers; a larger one gets 431 and the connection is closed."""

    max_output_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    """Largest model output one prediction may return (its tensors' bytes, and the encoded answer); a
    larger one gets 413 before it is encoded: ask for fewer examples per request."""

    job_max_memory_bytes: int | None = Field(default=None, ge=1)
    """Memory one job's process may allocate (RLIMIT_DATA: heap and private mappings); past it the job
    fails with a clear message and the worker goes on. Default: half the machine's RAM."""

    job_timeout_s: float | None = Field(default=None, gt=0)
    """Longest one attempt of a job may run (wall clock) before its processes are killed and the job
    fails; unset: no limit."""

    job_sandbox: Literal["required", "best-effort", "off"] = "best-effort"
    """Sandbox each job's process (Landlock, seccomp, no capabilities): it reads only the system and
    Python trees, ``job_data_dirs`` and its own folder, and reaches no TCP port (see docs/security.md).
    ``required``: fail jobs where the kernel lacks Landlock; ``best-effort``: warn once and run them
    with what is available; ``off``: no sandbox. Jobs never hold the database or the master key."""

    @field_validator("cors_origins")
    @classmethod
    def _exact_origins(cls, origins: list[str]) -> list[str]:
        for origin in origins:
            scheme, sep, rest = origin.partition("://")
            if not sep or scheme.lower() not in ("http", "https") or not rest or "/" in rest:
                raise ValueError(f"{origin!r} is not an origin; list each exactly, e.g. 'https://app.example.com'")
        return [o.lower() for o in origins]

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
