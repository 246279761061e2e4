"""Loaded versions in one process: loaded once, kept within a memory budget, least recently used first out.

Loading copies the version's files out of the blob store into a private temp folder while re-hashing
them (a tampered blob is refused there), hands the folder to the format's ``load``, then deletes it:
every supported runtime holds the model in memory after load.

Memory: before a load the runtime estimates the version's size from its files (x2, for the runtime's own
copies), evicts least-recently-used unpinned versions until the estimate fits the budget, and refuses
with a clear 503 when it cannot fit even then (instead of running out of memory). After the load the
format's own estimate replaces it when larger. (Resident-set growth was tried and dropped: with loads
running in parallel threads it charges one model for another's allocations.) A version evicted while
requests are still running on it is unloaded when the last of them finishes.
"""

from __future__ import annotations

import contextlib
import shutil
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from modelport import formats
from modelport.errors import Unavailable
from modelport.serving.batcher import Arrivals, Batcher
from modelport.serving.devices import Device
from modelport.serving.pipeline import Pipeline
from modelport.store.bundle import Manifest
from modelport.store.local import LocalBlobStore


@dataclass(frozen=True, slots=True)
class LoadedInfo:
    model: str
    version: int
    format: str
    memory_bytes: int
    pinned: bool = False
    device: Device = "cpu"


@dataclass(frozen=True, slots=True)
class BatchPolicy:
    max_batch: int
    max_wait_s: float
    queue_limit: int
    timeout_s: float
    inline_below_s: float = 0.0


@dataclass(eq=False)
class Loaded:
    """A loaded version: its pipeline, its batcher, and the bookkeeping the cache needs."""

    version_id: int
    model: str
    version: int
    pipeline: Pipeline
    batcher: Batcher
    memory_bytes: int
    pinned: bool = False
    device: Device = "cpu"
    in_flight: int = 0
    evicted: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def info(self) -> LoadedInfo:
        manifest = self.pipeline.manifest
        return LoadedInfo(self.model, self.version, manifest.format, self.memory_bytes, self.pinned, self.device)

    def acquire(self) -> None:
        with self._lock:
            self.in_flight += 1

    def release(self) -> None:
        with self._lock:
            self.in_flight -= 1
            free = self.evicted and self.in_flight == 0
        if free:
            self.pipeline.predictor.unload()


class ModelRuntime:
    def __init__(
        self,
        store: LocalBlobStore,
        *,
        capacity: int,
        memory_budget: int,
        policy: BatchPolicy,
        on_batch: Callable[[str, int, int], None] | None = None,
    ) -> None:
        self.store = store
        self.capacity = max(1, capacity)
        self.memory_budget = memory_budget
        self.policy = policy
        self.on_batch = on_batch
        self._loaded: OrderedDict[int, Loaded] = OrderedDict()
        """Keyed by version id; ids are never reused and versions never change, so a hit is always right."""
        self._lock = threading.Lock()
        self._loading: dict[int, threading.Lock] = {}
        self._pins: set[int] = set()
        self.arrivals = Arrivals()
        """Requests on their way to the batchers this turn of the loop (counted by the protocol lane)."""

    # -- lookups ----------------------------------------------------------------------------------
    def acquire(self, version_id: int) -> Loaded | None:
        """The loaded version with one more request in flight (release() it), or None if not loaded.

        Atomic with eviction: a version found here is not unloaded until its last request releases it.
        """
        with self._lock:
            hit = self._loaded.get(version_id)
            if hit is not None:
                self._loaded.move_to_end(version_id)  # least-recently-USED order for the budget
                hit.acquire()
            return hit

    def peek(self, version_id: int) -> Loaded | None:
        return self._loaded.get(version_id)

    def get(self, version_id: int, model: str, number: int, manifest: Manifest, device: Device = "cpu") -> Loaded:
        """Like acquire(), loading the version first (once, even under concurrency) if needed. A
        version loaded on another device (its model's deployment moved it) is unloaded and loaded
        again on ``device``."""
        hit = self._on(self.acquire(version_id), device)
        if hit is not None:
            return hit
        with self._lock:
            loader = self._loading.setdefault(version_id, threading.Lock())
        with loader:
            hit = self._on(self.acquire(version_id), device)
            if hit is not None:
                return hit
            estimate = 2 * sum(self._file_sizes(manifest))
            self._make_room(estimate)
            pipeline = self._load(manifest, device)
            memory = max(estimate, pipeline.predictor.memory_bytes)
            loaded = Loaded(
                version_id,
                model,
                number,
                pipeline,
                self._batcher(model, number, pipeline, device),
                memory,
                pinned=version_id in self._pins,
                device=device,
            )
            loaded.acquire()
            with self._lock:
                self._loaded[version_id] = loaded
                self._loading.pop(version_id, None)
            with contextlib.suppress(Unavailable):  # over budget only by the pinned: keep serving it
                self._make_room(0)
            return loaded

    def _on(self, hit: Loaded | None, device: Device) -> Loaded | None:
        """``hit`` if it runs on ``device``; else None, once it is released and unloaded."""
        if hit is None or hit.device == device:
            return hit
        hit.release()
        with self._lock:
            if self._loaded.get(hit.version_id) is hit:
                del self._loaded[hit.version_id]
            else:
                return None  # another request moved it already
        self._retire(hit)
        return None

    # -- memory -----------------------------------------------------------------------------------
    @property
    def used_bytes(self) -> int:
        with self._lock:
            return sum(item.memory_bytes for item in self._loaded.values())

    def _make_room(self, needed: int) -> None:
        """Evict least-recently-used unpinned versions until ``needed`` more bytes fit the budget."""
        evicted: list[Loaded] = []
        with self._lock:
            used = sum(item.memory_bytes for item in self._loaded.values())
            for version_id in list(self._loaded):
                over_budget = used + needed > self.memory_budget
                over_count = len(self._loaded) + (1 if needed else 0) > self.capacity
                if not (over_budget or over_count):
                    break
                item = self._loaded[version_id]
                if item.pinned:
                    continue
                del self._loaded[version_id]
                used -= item.memory_bytes
                evicted.append(item)
            fits = used + needed <= self.memory_budget
        for item in evicted:
            self._retire(item)
        if not fits:
            raise _no_room(needed, self.memory_budget, pinned=used)

    def _retire(self, item: Loaded) -> None:
        with item._lock:
            item.evicted = True
            idle = item.in_flight == 0
        if idle:
            item.pipeline.predictor.unload()

    # -- loading ----------------------------------------------------------------------------------
    def _file_sizes(self, manifest: Manifest) -> list[int]:
        return [self.store.size_of(sha) for sha in manifest.files.values()]

    def _load(self, manifest: Manifest, device: Device = "cpu") -> Pipeline:
        folder = self.store.new_tmp_path(".load")
        try:
            for path, sha in manifest.files.items():
                self.store.copy_verified(sha, folder / path)
            predictor = formats.get(manifest.format).load(folder, manifest, device)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        return Pipeline(manifest, predictor)

    def _batcher(self, model: str, number: int, pipeline: Pipeline, device: Device = "cpu") -> Batcher:
        cfg = pipeline.manifest.serving
        policy = self.policy
        on_batch = self.on_batch

        def observe(rows: int) -> None:
            if on_batch is not None:
                on_batch(model, number, rows)

        return Batcher(
            pipeline.run,
            max_batch=cfg.max_batch_size or policy.max_batch,
            max_wait_s=(cfg.max_wait_ms / 1000) if cfg.max_wait_ms is not None else policy.max_wait_s,
            queue_limit=cfg.queue_limit or policy.queue_limit,
            timeout_s=cfg.timeout_s or policy.timeout_s,
            on_batch=observe,
            # a GPU call's thread CPU time says nothing of its wall time (the copy back waits): never inline
            inline_below_s=policy.inline_below_s if device == "cpu" else 0.0,
            arrivals=self.arrivals,
        )

    # -- admin ------------------------------------------------------------------------------------
    def pin(self, version_id: int, pinned: bool) -> None:
        with self._lock:
            if pinned:
                self._pins.add(version_id)
            else:
                self._pins.discard(version_id)
            item = self._loaded.get(version_id)
            if item is not None:
                item.pinned = pinned

    def unload(self, version_id: int) -> bool:
        with self._lock:
            item = self._loaded.pop(version_id, None)
            self._pins.discard(version_id)
        if item is None:
            return False
        self._retire(item)
        return True

    def loaded(self) -> list[LoadedInfo]:
        with self._lock:
            return [item.info() for item in self._loaded.values()]

    def batchers(self) -> list[tuple[str, int, Batcher]]:
        with self._lock:
            return [(item.model, item.version, item.batcher) for item in self._loaded.values()]

    def close(self) -> None:
        with self._lock:
            items = list(self._loaded.values())
            self._loaded.clear()
        for item in items:
            item.pipeline.predictor.unload()


def _no_room(needed: int, budget: int, *, pinned: int) -> Unavailable:
    """The 503 for a version that cannot fit: alone larger than the budget, or crowded out by pins."""
    if pinned:
        why = f"{_size(pinned)} of it is taken by pinned models; unpin or unload one"
    else:
        why = "raise MODELPORT_MEMORY_BUDGET_BYTES to serve it"
    message = f"cannot load this model: it needs about {_size(needed)} and the memory budget is {_size(budget)}; {why}"
    details = {"needed_bytes": needed, "budget_bytes": budget, "pinned_bytes": pinned}
    return Unavailable(message=message, details=details)


def _size(n: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            return f"{n / (1 << shift):.1f} {unit}"
    return f"{n} bytes"
