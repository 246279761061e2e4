"""What a running job may ask of the registry and the store: the one door out of its sandbox.

A job's code (the kinds in ``kinds.py``, ``optimize.py``, ``sweep.py``, and whatever a ``model.python``
spec imports) never opens the database or the blob store, which holds the master key. It calls
:class:`JobServices`; the worker answers with :class:`LocalServices`, as the job's owner, for this job
only, with files passing through the job's folder ``<home>/jobs/<id>``::

    job process (sandboxed)                          worker (LocalServices)
    env.services.fetch_dataset("digits-npz") ──────> datasets.get_dataset as the owner, hash-checked
    <── <workdir>/datasets/<sha256>.npz                copy into the job's folder
    env.services.register(bundle, manifest) ───────> uploads.create_version as the owner, of the
    <── Registration(model, version, ...)              job's own target model, from files it opens
                                                       without following links (``_files.py``)

Across processes the calls travel as JSON (``rpc.py``); in one process (tests, direct calls) a kind
gets the LocalServices itself. Either way the owner, the job id and the target model come from the
claimed job, never from the caller, and every path named must lie inside the job's folder.
"""

from __future__ import annotations

import contextlib
import re
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from modelport.config import Settings
from modelport.errors import BadRequest, ModelExists, ModelNotFound, VersionNotFound
from modelport.jobs import _files, events, kinds
from modelport.refs import check_name, parse_ref
from modelport.registry import aliases, datasets, lineage, models, uploads, versions
from modelport.registry.db import Database
from modelport.registry.uploads import UploadedFile
from modelport.registry.views import VersionView
from modelport.store.local import LocalBlobStore

if TYPE_CHECKING:
    from modelport.jobs.queue import Claimed

MAX_OUTCOME_FILE_BYTES = 16 * 1024 * 1024
_SUFFIX = re.compile(r"^(\.[a-z0-9]{1,16}){0,2}$")


@dataclass(frozen=True, slots=True)
class VersionInfo:
    """A version as a job sees it: its manifest and its files (path -> sha256)."""

    model: str
    version: int
    manifest: dict[str, Any]
    files: dict[str, str]

    @property
    def ref(self) -> str:
        return f"{self.model}:{self.version}"


@dataclass(frozen=True, slots=True)
class Registration:
    """A version a job registered; ``manifest`` as stored (with its files and lineage)."""

    model: str
    version: int
    alias: str | None
    manifest: dict[str, Any]

    def as_result(self) -> dict[str, Any]:
        return {"model": self.model, "version": self.version, "alias": self.alias}


@dataclass(frozen=True, slots=True)
class TrialInfo:
    """A sweep's trial as the sweep ranks it."""

    id: str
    status: str
    meta: dict[str, Any]
    result: dict[str, Any] | None
    error: str | None


class JobServices(Protocol):
    """The registry and the store, as one running job may use them (as its owner, for itself only).

    Paths are inside the job's folder (``RunEnv.workdir``). Errors raise ``ModelportError`` in the
    worker's process and ``JobFailed`` with the same message in the job's.
    """

    def report(self, event: dict[str, Any]) -> None:
        """Record a progress/metric/log event of the job (progress events are throttled)."""

    def fetch_dataset(self, name: str) -> Path:
        """A hash-checked copy of the owner's dataset ``name`` in the job's folder."""

    def resolve(self, ref: str) -> VersionInfo:
        """The version ``ref`` names, if the owner may read it."""

    def fetch_version(self, model: str, version: int, folder: Path) -> None:
        """Hash-checked copies of a readable version's files, into ``folder`` of the job's folder."""

    def training_data(self, model: str, version: int) -> dict[str, Any]:
        """The ``data`` section of the job that made the version, or of its nearest ancestor's."""

    def registered_step(self, step: int) -> VersionInfo | None:
        """The version an earlier attempt of this optimize job registered for ``step``, if any."""

    def register(
        self,
        bundle: Path,
        manifest: dict[str, Any],
        *,
        alias: str | None = None,
        transform: dict[str, Any] | None = None,
        report: dict[str, Any] | None = None,
    ) -> Registration:
        """Register the bundle in ``bundle`` (a folder of the job's) as a new version of the job's target."""

    def set_alias(self, alias: str, version: int) -> None:
        """Point ``alias`` of the job's target model at ``version``."""

    def trials(self) -> list[TrialInfo]:
        """This sweep's trials, in trial order."""

    def register_trial(
        self, trial: str, *, alias: str | None = None, transform: dict[str, Any] | None = None
    ) -> Registration:
        """Register what trial ``trial`` of this sweep left in its folder (``kinds.OUTCOME_FILE``)."""

    def remove_trial_folders(self) -> None:
        """Delete the folders of this sweep's trials."""


class LocalServices:
    """The worker's side of :class:`JobServices` for one claimed job."""

    def __init__(
        self,
        db: Database,
        store: LocalBlobStore,
        settings: Settings,
        job: Claimed,
        worker_id: str,
        *,
        on_lost: Callable[[], None],
    ) -> None:
        self.db = db
        self.store = store
        self.settings = settings
        self.job = job
        self.workdir = kinds.workdir_of(settings, job.id)
        self.sink = events.EventSink(db, job.id, worker_id, on_lost=on_lost)
        self._target: str | None = None
        self._client = f"job:{job.id}"

    @property
    def target(self) -> str:
        """The model this job registers to: the one checked writable at submit (``Prepared.target``)."""
        if self._target is None:
            self._target = kinds.get(self.job.kind).prepare(self.job.spec, self.job.owner, self.settings).target
        return self._target

    def report(self, event: dict[str, Any]) -> None:
        self.sink(event)

    def fetch_dataset(self, name: str) -> Path:
        check_name(name, kind="dataset")
        found = datasets.get_dataset(self.db, self.job.owner, name)  # access checked again: it may be gone
        if not _SUFFIX.fullmatch(found.suffix):
            raise BadRequest(message=f"dataset {name}: its file name has an unusable suffix")
        rel = PurePosixPath("datasets", f"{found.sha256}{found.suffix}")
        self._copy_blob(found.sha256, self.workdir, rel)
        self.report({"type": "log", "message": f"dataset {name}: {found.size_bytes} bytes, sha256 {found.sha256[:12]}"})
        return self.workdir / rel

    def resolve(self, ref: str) -> VersionInfo:
        return _info(versions.get_by_ref(self.db, self.job.owner, parse_ref(ref)))

    def fetch_version(self, model: str, version: int, folder: Path) -> None:
        rel = _files.beneath(self.workdir, folder)
        found = versions.get_version(self.db, self.job.owner, model, version)
        for file in found.files:
            self._copy_blob(file.sha256, self.workdir, rel / file.path)

    def training_data(self, model: str, version: int) -> dict[str, Any]:
        from modelport.jobs.tables import Job

        for link in lineage.chain(self.db, self.job.owner, model, version):
            job_id = link.get("job")
            if not job_id:
                continue
            with self.db.read() as s:
                found = s.get(Job, str(job_id))
            data = found.spec.get("data") if found is not None and found.kind in ("train", "optimize") else None
            if isinstance(data, dict):
                return data  # a training spec's preprocess is ignored: the version's manifest records it
        raise BadRequest(
            message=f"optimize needs data: {model}:{version} was not made by a Modelport job, "
            "so give data (e.g. {source: mnist, path: ...}) in the spec or --data-path"
        )

    def registered_step(self, step: int) -> VersionInfo | None:
        try:
            found, _ = versions.list_versions(self.db, self.job.owner, self.target, limit=1000)
        except (ModelNotFound, VersionNotFound):
            return None
        for item in found:
            made = item.manifest.get("lineage") or {}
            transform = made.get("transform") or {}
            if made.get("job") == self.job.id and isinstance(transform, dict) and transform.get("step") == step:
                return _info(versions.get_version(self.db, self.job.owner, self.target, item.version))
        return None

    def register(
        self,
        bundle: Path,
        manifest: dict[str, Any],
        *,
        alias: str | None = None,
        transform: dict[str, Any] | None = None,
        report: dict[str, Any] | None = None,
    ) -> Registration:
        rel = _files.beneath(self.workdir, bundle)
        return self._register(self.workdir, rel, manifest, self.job.id, alias, transform, report)

    def set_alias(self, alias: str, version: int) -> None:
        aliases.set_alias(self.db, self.job.owner, self.target, alias, version, client=self._client)

    def trials(self) -> list[TrialInfo]:
        from modelport.jobs.queue import trials_of

        return [TrialInfo(t.id, t.status, dict(t.meta), t.result, t.error) for t in trials_of(self.db, self.job.id)]

    def register_trial(
        self, trial: str, *, alias: str | None = None, transform: dict[str, Any] | None = None
    ) -> Registration:
        if not any(t.id == trial and t.status == "succeeded" for t in self.trials()):
            raise BadRequest(message=f"{trial} is not a succeeded trial of this sweep")
        folder = kinds.workdir_of(self.settings, trial)
        kept = orjson.loads(_files.read_file(folder, PurePosixPath(kinds.OUTCOME_FILE), MAX_OUTCOME_FILE_BYTES))
        if not isinstance(kept, dict) or not isinstance(kept.get("manifest"), dict):
            raise BadRequest(message=f"trial {trial} left no usable outcome")
        rel = _files.beneath(folder, str(kept.get("bundle", "")))
        return self._register(folder, rel, kept["manifest"], trial, alias, transform, None)

    def remove_trial_folders(self) -> None:
        for trial in self.trials():
            shutil.rmtree(kinds.workdir_of(self.settings, trial.id), ignore_errors=True)

    # -- helpers --------------------------------------------------------------------------------------
    def _copy_blob(self, sha256: str, root: Path, rel: PurePosixPath) -> None:
        with self.store.open_verified(sha256) as source:
            _files.write_file(root, rel, source)

    def _register(
        self,
        root: Path,
        rel: PurePosixPath,
        manifest: dict[str, Any],
        job_id: str,
        alias: str | None,
        transform: dict[str, Any] | None,
        report: dict[str, Any] | None,
    ) -> Registration:
        """Register the files under ``root/rel`` as a version of the target made by job ``job_id``."""
        model = self.target
        if alias:
            check_name(alias, kind="alias")
        made = {**(manifest.get("lineage") or {}), "job": job_id}
        if transform is not None:
            made["transform"] = transform
        given = orjson.dumps({**manifest, "lineage": made}, option=orjson.OPT_SERIALIZE_NUMPY)
        with _opened(root, rel) as files:  # every file opened (no link followed) before anything is written
            with contextlib.suppress(ModelExists):
                models.create_model(self.db, self.job.owner, name=model, client=self._client)
            version = uploads.create_version(
                self.db, self.store, self.job.owner, model, files, given, client=self._client, report=report
            )
        if alias:
            aliases.set_alias(self.db, self.job.owner, model, alias, version.version, client=self._client)
        return Registration(model, version.version, alias, version.manifest)


@contextlib.contextmanager
def _opened(root: Path, rel: PurePosixPath) -> Iterator[list[UploadedFile]]:
    opened = _files.open_tree(root, rel)
    try:
        yield [UploadedFile(filename=name, stream=f) for name, f in opened]
    finally:
        for _, f in opened:
            f.close()


def _info(view: VersionView) -> VersionInfo:
    return VersionInfo(view.model, view.version, view.manifest, {f.path: f.sha256 for f in view.files})
