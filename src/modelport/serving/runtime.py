"""Loaded versions, kept in a process-wide cache so each version is loaded once per process.

Loading copies the version's files out of the blob store into a private temp folder while re-hashing
them (a tampered blob is refused there), hands the folder to the format's ``load``, then deletes it:
every supported runtime holds the model in memory after load.
"""

from __future__ import annotations

import shutil
import threading
from collections import OrderedDict
from dataclasses import dataclass

from modelport import formats
from modelport.serving.pipeline import Pipeline
from modelport.store.bundle import Manifest
from modelport.store.local import LocalBlobStore


@dataclass(frozen=True, slots=True)
class LoadedInfo:
    model: str
    version: int
    format: str
    memory_bytes: int


class ModelRuntime:
    """An LRU cache of Pipelines keyed by version id, with one loader lock per version."""

    def __init__(self, store: LocalBlobStore, *, capacity: int) -> None:
        self.store = store
        self.capacity = max(1, capacity)
        self._loaded: OrderedDict[int, tuple[LoadedInfo, Pipeline]] = OrderedDict()
        """Keyed by version id; ids are never reused and versions never change, so a hit is always right."""
        self._lock = threading.Lock()
        self._loading: dict[int, threading.Lock] = {}

    def get(self, version_id: int, model: str, number: int, manifest: Manifest) -> Pipeline:
        """The loaded pipeline for a version, loading it (once, even under concurrency) if needed."""
        with self._lock:
            hit = self._loaded.get(version_id)
            if hit is not None:
                self._loaded.move_to_end(version_id)
                return hit[1]
            loader = self._loading.setdefault(version_id, threading.Lock())
        with loader:
            with self._lock:
                hit = self._loaded.get(version_id)
                if hit is not None:
                    return hit[1]
            pipeline = self._load(manifest)
            info = LoadedInfo(
                model=model,
                version=number,
                format=manifest.format,
                memory_bytes=pipeline.predictor.memory_bytes,
            )
            with self._lock:
                self._loaded[version_id] = (info, pipeline)
                self._loading.pop(version_id, None)
                evicted = []
                while len(self._loaded) > self.capacity:
                    evicted.append(self._loaded.popitem(last=False)[1][1])
            for old in evicted:
                old.predictor.unload()
            return pipeline

    def _load(self, manifest: Manifest) -> Pipeline:
        folder = self.store.new_tmp_path(".load")
        try:
            for path, sha in manifest.files.items():
                self.store.copy_verified(sha, folder / path)
            predictor = formats.get(manifest.format).load(folder, manifest)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        return Pipeline(manifest, predictor)

    def peek(self, version_id: int) -> Pipeline | None:
        """The pipeline if already loaded (no loading, no LRU update: a dict read on the hot path)."""
        hit = self._loaded.get(version_id)
        return hit[1] if hit is not None else None

    def unload(self, version_id: int) -> bool:
        with self._lock:
            hit = self._loaded.pop(version_id, None)
        if hit is None:
            return False
        hit[1].predictor.unload()
        return True

    def loaded(self) -> list[LoadedInfo]:
        with self._lock:
            return [info for info, _ in self._loaded.values()]

    def close(self) -> None:
        with self._lock:
            items = list(self._loaded.values())
            self._loaded.clear()
        for _, pipeline in items:
            pipeline.predictor.unload()
