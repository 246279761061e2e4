"""create_app(settings): the composition root. Tests call it too, with Settings(home=tmp_path)."""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.datastructures import State
from starlette.types import Receive, Scope, Send

from modelport import __version__
from modelport.api import errors
from modelport.api.context import AppContext
from modelport.api.fastpath import FastPath
from modelport.api.lane import Lane
from modelport.api.metrics import Metrics
from modelport.api.middleware import EdgeMiddleware
from modelport.api.routers import (
    aliases,
    audit,
    datasets,
    health,
    keys,
    models,
    permissions,
    predict,
    v2,
    versions,
)
from modelport.api.routers import deployments as deployment_routes
from modelport.api.routers import jobs as jobs_routes
from modelport.api.routers import runtime as runtime_routes
from modelport.auth.keys import KeyAuthenticator, ensure_admin_key
from modelport.config import Settings
from modelport.registry.changes import ChangeWatch
from modelport.registry.db import Database
from modelport.serving.router import Router
from modelport.serving.runtime import BatchPolicy, ModelRuntime
from modelport.serving.service import InferenceService
from modelport.store.local import LocalBlobStore, open_store

log = logging.getLogger("modelport")


class ModelportApp:
    """The ASGI application: the edge (request ids, body limits, metrics, the inference fast path, the
    last-resort 500) in FRONT of the FastAPI app, so inference requests skip FastAPI's own per-request
    layers entirely. ``state`` and ``api`` give tests and tools the FastAPI side."""

    def __init__(self, api: FastAPI, edge: EdgeMiddleware, lane: Lane | None = None) -> None:
        self.api = api
        self.edge = edge
        self.lane = lane
        """Inference requests answered at the HTTP protocol level, by ``modelport serve``'s server
        (``cli/server.py``); None: all of them go through the ASGI app."""

    @property
    def state(self) -> State:
        return self.api.state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.edge(scope, receive, send)

    def drain(self) -> None:
        """Stop admitting requests (503, health probes excepted) while those in flight finish: on SIGTERM."""
        self.api.state.ctx.draining = True


def open_home(settings: Settings) -> tuple[Database, LocalBlobStore]:
    """Create the data home if needed and apply migrations (idempotent, safe on every start).

    The store is opened first: whether a home is new (and so gets its own master key under
    ``encryption=auto``) is judged before the database file is created.
    """
    settings.home.mkdir(parents=True, exist_ok=True)
    store = open_store(settings)
    db = Database(settings)
    db.migrate()
    return db, store


def bootstrap(settings: Settings) -> str | None:
    """First-start work of `modelport serve`: migrate, drop crash leftovers, ensure an admin key.

    Returns a newly generated admin key (to print once), or None.
    """
    db, store = open_home(settings)
    try:
        removed = store.clean_tmp()
        if removed:
            log.info("removed %d leftover temporary file(s) from an earlier run", removed)
        return ensure_admin_key(db, settings.admin_key)
    finally:
        db.dispose()


def create_app(settings: Settings) -> ModelportApp:
    db, store = open_home(settings)
    ensure_admin_key(db, settings.admin_key)
    policy = BatchPolicy(
        max_batch=settings.batch_max_size,
        max_wait_s=settings.batch_max_wait_ms / 1000,
        queue_limit=settings.batch_queue_limit,
        timeout_s=settings.request_timeout_s,
        inline_below_s=settings.inline_below_us / 1e6,
    )
    metrics = Metrics()
    runtime = ModelRuntime(
        store,
        capacity=settings.model_cache_size,
        memory_budget=settings.memory_budget,
        policy=policy,
        on_batch=metrics.observe_batch,
    )
    metrics.watch_runtime(runtime)
    watch = ChangeWatch(db)  # one read of the registry's change counter serves both caches
    router = Router(db, watch)
    ctx = AppContext(
        settings=settings,
        db=db,
        store=store,
        keys=KeyAuthenticator(db, watch),
        router=router,
        runtime=runtime,
        inference=InferenceService(
            router,
            runtime,
            max_batch=settings.max_batch,
            on_shadow=metrics.observe_shadow,
            on_prediction=metrics.observe_prediction,
        ),
        metrics=metrics,
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        # Everything imported and built so far (FastAPI, SQLAlchemy, ONNX protobufs...) lives as long
        # as the process: move it out of the collector's sight, so the full collections that request
        # garbage triggers do not rescan it (they showed up as 10-80 ms stalls at the 99th percentile).
        gc.freeze()
        yield
        ctx.draining = True
        runtime.close()
        db.dispose()

    app = FastAPI(
        title="Modelport",
        version=__version__,
        description="Self-hosted model-as-a-service: registry, versions, aliases, keys and inference.",
        lifespan=lifespan,
    )
    app.state.ctx = ctx
    errors.install(app)
    for module in (
        health,
        models,
        versions,
        aliases,
        permissions,
        predict,
        runtime_routes,
        deployment_routes,
        v2,
        keys,
        audit,
        jobs_routes,
        datasets,
    ):
        app.include_router(module.router)
    fast = FastPath(ctx)
    edge = EdgeMiddleware(app, ctx=ctx, metrics=ctx.metrics, access_log=settings.access_log, fast=fast)
    return ModelportApp(app, edge, Lane(edge, fast) if settings.inference_lane else None)
