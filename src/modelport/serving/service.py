"""predict(): THE entry every protocol calls (/v1 predict JSON and raw tensors, V2 infer, the SDK and CLI)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import anyio.to_thread

from modelport.auth.principals import Principal
from modelport.formats.base import Tensors
from modelport.serving.pipeline import Pipeline
from modelport.serving.router import Router, Target
from modelport.serving.runtime import Loaded, ModelRuntime


@dataclass(frozen=True, slots=True)
class Prediction:
    target: Target
    pipeline: Pipeline
    outputs: Tensors
    single: bool


class InferenceService:
    def __init__(self, router: Router, runtime: ModelRuntime, *, max_batch: int) -> None:
        self.router = router
        self.runtime = runtime
        self.max_batch = max_batch

    async def predict(self, principal: Principal, ref: str, inputs: Any) -> Prediction:
        """Resolve, check read permission, load (once), preprocess, run through the version's batcher."""
        target = self.router.resolve(principal, ref)
        loaded = await self.acquire(target)
        try:
            arrays, single = loaded.pipeline.prepare(inputs, max_batch=self.max_batch)
            outputs = await loaded.batcher(arrays)
        finally:
            loaded.release()
        return Prediction(target=target, pipeline=loaded.pipeline, outputs=outputs, single=single)

    async def acquire(self, target: Target) -> Loaded:
        """The loaded version with a request counted in flight; the caller must ``release()`` it."""
        loaded = self.runtime.acquire(target.version_id)
        if loaded is not None:
            return loaded  # the common case: no thread hop
        return await anyio.to_thread.run_sync(
            self.runtime.get, target.version_id, target.model, target.version, target.manifest
        )

    async def load(self, target: Target) -> Loaded:
        """Make sure a version is loaded (admin load, V2 ready)."""
        loaded = await self.acquire(target)
        loaded.release()
        return loaded
