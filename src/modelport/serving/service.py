"""predict(): THE entry every protocol calls (/v1 predict, V2 infer, the CLI through the SDK)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import anyio.to_thread

from modelport.auth.principals import Principal
from modelport.formats.base import Tensors
from modelport.serving.pipeline import Pipeline
from modelport.serving.router import Router, Target
from modelport.serving.runtime import ModelRuntime


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
        """Resolve, check read permission, load (once), preprocess, run off the event loop."""
        target = self.router.resolve(principal, ref)
        pipeline = await self.pipeline_for(target)
        arrays, single = pipeline.prepare(inputs, max_batch=self.max_batch)
        outputs = await anyio.to_thread.run_sync(pipeline.run, arrays)
        return Prediction(target=target, pipeline=pipeline, outputs=outputs, single=single)

    async def pipeline_for(self, target: Target) -> Pipeline:
        loaded = self.runtime.peek(target.version_id)
        if loaded is not None:
            return loaded  # the common case: no thread hop
        return await anyio.to_thread.run_sync(
            self.runtime.get,
            target.version_id,
            target.model,
            target.version,
            target.manifest,
        )
