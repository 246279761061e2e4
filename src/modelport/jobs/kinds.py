"""Job kinds: what a job of each kind checks at submit time and does on a worker.

A kind is a small object with two verbs, called in this order::

    prepared = kind.prepare(spec, principal, settings)   # API process: validate; 400 names the field
    result = kind.run(claimed, env)                      # worker process: do the work, return the result

``run`` runs in the job's sandboxed process (``process.py``): it reaches the registry and the store
only through ``env.services`` (``services.py``: fetch a dataset or a version into ``env.workdir``,
register a bundle from it), reports events through ``env.report``, polls ``env.should_stop`` (cancel
or shutdown) and raises ``JobStopped`` when it stops early. Example of a kind::

    class Echo:
        name = "echo"

        def prepare(self, spec, principal, settings):
            return Prepared(spec=spec, target="echo")

        def run(self, job, env):
            env.report({"type": "log", "message": "hello"})
            return {"echo": job.spec}
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import orjson
from sqlalchemy import select

from modelport.auth.principals import Principal
from modelport.config import Settings
from modelport.errors import BadRequest, InvalidJobSpec, PermissionDenied
from modelport.refs import check_name, parse_ref
from modelport.registry import datasets, models, versions
from modelport.registry.db import Database
from modelport.registry.tables import Model

if TYPE_CHECKING:
    from modelport.jobs.queue import Claimed
    from modelport.jobs.services import JobServices
    from modelport.training.spec import TrainSpec

Event = dict[str, Any]
KIND_NAMES = ("train", "sweep", "optimize")
OUTCOME_FILE = "outcome.json"
"""What a sweep's trial leaves in its folder for the sweep to register: manifest, metrics, bundle."""


class JobStopped(Exception):
    """The job stopped early because ``should_stop`` said so (cancel, shutdown or a lost lease)."""


class JobFailed(Exception):
    """The job cannot produce a result; the message says why and is shown to the caller."""


@dataclass(frozen=True, slots=True)
class Trial:
    spec: dict[str, Any]
    params: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Prepared:
    spec: dict[str, Any]
    """What is stored and later handed to ``run``."""
    target: str
    """The model the result is registered to (the submitter must be able to write it)."""
    meta: dict[str, Any] = field(default_factory=dict)
    trials: list[Trial] = field(default_factory=list)
    """For a sweep: the child jobs to queue with it."""
    datasets: tuple[str, ...] = ()
    """Uploaded datasets the job reads (the submitter must be able to read each one)."""
    sources: tuple[str, ...] = ()
    """Model references the job reads (the submitter must be able to read each one)."""


@dataclass(frozen=True, slots=True)
class RunEnv:
    """What a kind's ``run`` gets. No database and no store: the registry and blobs are reached through
    ``services`` (the worker answers, as the job's owner), so the job's process holds no secret."""

    services: JobServices
    settings: Settings
    workdir: Path
    """``MODELPORT_HOME/jobs/<job id>``: checkpoints and bundles; kept across attempts, so runs resume."""
    report: Callable[[Event], None]
    should_stop: Callable[[], bool]


class JobKind(Protocol):
    name: str

    def prepare(self, spec: dict[str, Any], principal: Principal, settings: Settings) -> Prepared: ...

    def run(self, job: Claimed, env: RunEnv) -> dict[str, Any]: ...


def get(kind: str) -> JobKind:
    """The kind named ``kind``, or a 400 listing the kinds there are."""
    if kind == "train":
        return TrainKind()
    if kind == "sweep":
        from modelport.jobs.sweep import SweepKind  # sweep builds on this module

        return SweepKind()
    if kind == "optimize":
        from modelport.jobs.optimize import OptimizeKind

        return OptimizeKind()
    raise BadRequest(message=f"job kind must be one of {', '.join(KIND_NAMES)}")


def workdir_of(settings: Settings, job_id: str) -> Path:
    """The job's folder; ``job_id`` is a server-made uuid, checked again here before it names a path."""
    from modelport.jobs.queue import canonical_id

    return settings.jobs_dir.resolve() / canonical_id(job_id)


# -- train specs -----------------------------------------------------------------------------------
def check_train_spec(raw: Any, principal: Principal, settings: Settings, *, where: str = "spec") -> TrainSpec:
    """Validate a training spec and what it may touch: data paths and python modules."""
    from modelport.training.spec import SpecError, load_spec

    if not isinstance(raw, dict):
        raise InvalidJobSpec(field=where, problem="must be a mapping with name, data, model and train")
    try:
        spec = load_spec(raw)
    except SpecError as exc:
        if where == "spec":
            raise
        raise InvalidJobSpec(field=where, problem=exc.message.removeprefix("invalid training spec: ")) from None
    if spec.uses_python_module and not principal.is_admin and settings.job_python_modules == "admins":
        raise PermissionDenied(action="import a python module (model.python) in", target="a job (admins only)")
    if spec.data.source == "dataset":
        check_name(str(spec.data.name), kind="dataset")  # readable by the submitter: check_datasets
    if spec.data.path is not None:
        check_data_path(spec.data.path, principal, settings)
    check_name(target_of(spec))
    if spec.registration is not None and spec.registration.alias:
        check_name(spec.registration.alias, kind="alias")
    return spec


def check_data_path(path: str, principal: Principal, settings: Settings) -> None:
    """Members read data only under ``job_data_dirs``; admins anywhere (paths as the worker sees them)."""
    if principal.is_admin:
        return
    resolved = Path(path).resolve()
    if not any(resolved.is_relative_to(root.resolve()) for root in settings.job_data_dirs):
        raise PermissionDenied(
            action="read training data from",
            target="that path (allowed: the server's job_data_dirs, or a builtin set)",
        )


def target_of(spec: TrainSpec) -> str:
    return spec.registration.model if spec.registration is not None else spec.name


def check_target(db: Database, principal: Principal, model: str) -> None:
    """Fail at submit time when the result could not be registered: the model exists and is not writable."""
    with db.read() as s:
        if s.scalar(select(Model.id).where(Model.name == model)) is not None:
            models.visible_model(s, principal, model, "write")  # 404 if unreadable, 403 if read-only


def check_sources(db: Database, principal: Principal, refs: tuple[str, ...]) -> None:
    """Fail at submit time when a source version is missing or unreadable (404, as if missing)."""
    for ref in dict.fromkeys(refs):
        versions.get_by_ref(db, principal, parse_ref(ref))


def datasets_of(spec: TrainSpec) -> tuple[str, ...]:
    """The uploaded datasets a checked spec reads (``data: {source: dataset, name: ...}``)."""
    return (str(spec.data.name),) if spec.data.source == "dataset" else ()


def check_datasets(db: Database, principal: Principal, names: tuple[str, ...]) -> None:
    """Fail at submit time when a dataset is missing or not the submitter's (404, as if missing)."""
    for name in dict.fromkeys(names):
        datasets.get_dataset(db, principal, name)


def dataset_resolver(env: RunEnv) -> Callable[[str], Path]:
    """``resolve_dataset`` for training: a hash-checked copy of the owner's dataset in the job's folder."""
    return env.services.fetch_dataset


class TrainKind:
    """``train``: run ``training.run.run_training`` on the spec, then register the bundle."""

    name = "train"

    def prepare(self, spec: dict[str, Any], principal: Principal, settings: Settings) -> Prepared:
        checked = check_train_spec(spec, principal, settings)
        return Prepared(spec=spec, target=target_of(checked), datasets=datasets_of(checked))

    def run(self, job: Claimed, env: RunEnv) -> dict[str, Any]:
        from modelport.training.run import TrainingCancelled, run_training

        spec = check_train_spec(job.spec, job.owner, env.settings)
        try:
            outcome = run_training(
                spec,
                workdir=env.workdir,
                report=env.report,
                should_stop=env.should_stop,
                resolve_dataset=dataset_resolver(env),
            )
        except TrainingCancelled:
            raise JobStopped() from None
        bundle = _keep_bundle(outcome.bundle_dir, env.workdir)
        metrics = {k: v for k, v in outcome.metrics.items() if isinstance(v, int | float | str | None)}
        if job.parent_id is not None:  # a sweep's trial: the sweep registers only its best trial
            kept = {
                "manifest": outcome.manifest,
                "metrics": metrics,
                "bundle": bundle.relative_to(env.workdir).as_posix(),
            }
            (env.workdir / OUTCOME_FILE).write_bytes(orjson.dumps(kept, option=orjson.OPT_SERIALIZE_NUMPY))
            return {"metrics": metrics}
        if env.should_stop():
            raise JobStopped()
        registration = spec.registration
        done = env.services.register(bundle, outcome.manifest, alias=registration.alias if registration else None)
        return {**done.as_result(), "metrics": metrics}


def _keep_bundle(bundle_dir: Path, workdir: Path) -> Path:
    """The bundle inside the job's folder (copied there if the trainer wrote it elsewhere)."""
    if bundle_dir.resolve().is_relative_to(workdir.resolve()):
        return bundle_dir
    target = workdir / "bundle"
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(bundle_dir, target)
    return target
