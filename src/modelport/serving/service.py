"""predict(): THE entry every protocol calls (/v1 predict JSON and raw tensors, V2 infer, the SDK and CLI)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import anyio.to_thread
import numpy as np

from modelport.auth.principals import Principal
from modelport.formats.base import Tensors
from modelport.serving.pipeline import Pipeline
from modelport.serving.router import Resolution, Router, Target
from modelport.serving.runtime import Loaded, ModelRuntime
from modelport.serving.singleflight import SingleFlight

log = logging.getLogger("modelport.serving")

ShadowObserver = Callable[[str, int, str, float], None]
"""(model, shadow version, outcome "agree" | "disagree" | "error", max |difference|)."""
PredictionObserver = Callable[[str, int, float, bool], None]
"""(model, version, seconds, ok): every request that reached a version, from every protocol."""


class Prediction(NamedTuple):
    """A model's answer to one request (a tuple: built on every request, a frozen dataclass cost 1.5 µs)."""

    target: Target
    pipeline: Pipeline
    outputs: Tensors
    single: bool


class InferenceService:
    def __init__(
        self,
        router: Router,
        runtime: ModelRuntime,
        *,
        max_batch: int,
        on_shadow: ShadowObserver | None = None,
        on_prediction: PredictionObserver | None = None,
    ) -> None:
        self.router = router
        self.runtime = runtime
        self.max_batch = max_batch
        self.on_shadow = on_shadow
        self.on_prediction = on_prediction
        self._shadows: set[asyncio.Task[None]] = set()
        self._routes: SingleFlight[Resolution] = SingleFlight()

    async def predict(self, principal: Principal, ref: str, inputs: Any) -> Prediction:
        """Resolve, check read permission, load (once), preprocess, run through the version's batcher.

        The caller hands ``inputs`` over: once they are arrays, the parsed JSON is let go before the
        wait for the batch (unless a shadow needs it). Under load, requests wait together; holding
        their JSON (25,000 Python floats for 32 images) kept ~40 MB of objects alive and cost more
        than the parse itself.

        ``on_prediction`` counts each request that reached a version, answered or failed (bad inputs
        for its schema, a full queue, a timeout, the model failing). A request refused before a version
        is chosen (unknown model, no permission) is not counted per model: its labels would come from
        the caller, and any key could then grow the metrics without bound. The HTTP metrics count it."""
        started = time.perf_counter()
        resolution = await self.route(principal, ref)
        target = resolution.pick()
        shadow = resolution.mirror(target)
        running = self.run(target, inputs)
        mirrored = inputs if shadow is not None else None
        del inputs  # from here run() holds the only reference, until the inputs are arrays
        observe = self.on_prediction
        try:
            prediction = await running
        except Exception:
            if observe is not None:
                observe(target.model, target.version, time.perf_counter() - started, False)
            raise
        if observe is not None:
            observe(target.model, target.version, time.perf_counter() - started, True)
        if shadow is not None:
            task = asyncio.get_running_loop().create_task(self._shadow(shadow, mirrored, prediction))
            self._shadows.add(task)
            task.add_done_callback(self._shadows.discard)
        return prediction

    async def route(self, principal: Principal, ref: str) -> Resolution:
        hit = self.router.cached(principal, ref)
        if hit is None:  # a cache miss reads the database: off the event loop, once for all
            route = self.router.route
            return await self._routes.run((principal, ref), lambda: route(principal, ref))
        resolution, due = hit
        if due:  # half its life gone: looked up again in the background, before any request must wait
            refresh = self.router.refresh
            self._routes.start((principal, ref), lambda: refresh(principal, ref))
        return resolution

    async def run(self, target: Target, inputs: Any) -> Prediction:
        loaded = await self.acquire(target)
        try:
            arrays, single = loaded.pipeline.prepare(inputs, max_batch=self.max_batch)
            del inputs  # not kept while waiting for the batch (see predict)
            outputs = await loaded.batcher(arrays)
        finally:
            loaded.release()
        return Prediction(target=target, pipeline=loaded.pipeline, outputs=outputs, single=single)

    async def acquire(self, target: Target) -> Loaded:
        """The loaded version with a request counted in flight; the caller must ``release()`` it."""
        loaded = self.runtime.acquire(target.version_id)
        if loaded is not None and loaded.device == target.device:
            return loaded  # the common case: no thread hop
        if loaded is not None:
            loaded.release()  # on another device: get() moves it
        return await anyio.to_thread.run_sync(
            self.runtime.get, target.version_id, target.model, target.version, target.manifest, target.device
        )

    async def load(self, target: Target) -> Loaded:
        """Make sure a version is loaded (admin load, V2 ready)."""
        loaded = await self.acquire(target)
        loaded.release()
        return loaded

    async def _shadow(self, shadow: Target, inputs: Any, primary: Prediction) -> None:
        """Run the shadow version on the same inputs; compare, count, log; never return its answer."""
        try:
            mirrored = await self.run(shadow, inputs)
            ours, _ = primary.pipeline.postprocess(primary.outputs)
            theirs, _ = mirrored.pipeline.postprocess(mirrored.outputs)
            a = np.asarray(next(iter(ours.values())), dtype=np.float64)
            b = np.asarray(next(iter(theirs.values())), dtype=np.float64)
            if a.shape != b.shape:
                outcome, diff = "disagree", float("inf")
            else:
                diff = float(np.max(np.abs(a - b))) if a.size else 0.0
                same = a.ndim < 2 or bool((a.argmax(-1) == b.argmax(-1)).all())
                outcome = "agree" if same else "disagree"
        except Exception as exc:  # noqa: BLE001 - a failing shadow must never affect the caller
            log.warning("shadow %s:%d failed: %s", shadow.model, shadow.version, type(exc).__name__)
            outcome, diff = "error", float("nan")
        if self.on_shadow is not None:
            self.on_shadow(shadow.model, shadow.version, outcome, diff)
