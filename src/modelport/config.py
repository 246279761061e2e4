"""Settings: read once from ``MODELPORT_*`` environment variables, then passed down explicitly."""

from __future__ import annotations

from pathlib import Path

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
    """How many loaded versions one process keeps in memory."""

    log_level: str = "info"
    """Log level of the server (debug, info, warning, error)."""

    graceful_timeout: int = 30
    """Seconds SIGTERM waits for requests in flight before the server exits."""

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
