"""The services one app wires together (built once by create_app, reached by routers via deps)."""

from __future__ import annotations

from dataclasses import dataclass

from modelport.api.metrics import Metrics
from modelport.auth.keys import KeyAuthenticator
from modelport.config import Settings
from modelport.registry.db import Database
from modelport.serving.router import Router
from modelport.serving.runtime import ModelRuntime
from modelport.serving.service import InferenceService
from modelport.store.local import LocalBlobStore


@dataclass
class AppContext:
    settings: Settings
    db: Database
    store: LocalBlobStore
    keys: KeyAuthenticator
    router: Router
    runtime: ModelRuntime
    inference: InferenceService
    metrics: Metrics
    draining: bool = False

    def forget_caches(self) -> None:
        """After a write in this process: make it visible here at once (others within a second)."""
        self.keys.forget()
        self.router.forget()
