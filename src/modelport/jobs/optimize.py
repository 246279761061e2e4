"""``optimize`` jobs: a chain of prune / finetune / quantize / distill / export steps on a version.

Submit-time checks: the spec (400 with the field path), the source version (the submitter must be
able to read it; 404 otherwise), the data path (as for training) and the target model (writable).
On the worker, :func:`modelport.optimize.run.run_optimize` does the work; this module supplies
its registry callbacks. Each step's result is registered as soon as it is measured, with
``lineage.job`` and ``lineage.transform.step``, so a retry after a crash finds it and goes on from
the next step.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from modelport.auth.principals import Principal
from modelport.config import Settings
from modelport.errors import BadRequest, ModelNotFound, VersionNotFound
from modelport.jobs.kinds import (
    JobStopped,
    Prepared,
    RunEnv,
    check_data_path,
    dataset_resolver,
    register_bundle,
)
from modelport.refs import check_name, parse_ref
from modelport.registry import aliases, lineage, versions

if TYPE_CHECKING:
    from modelport.jobs.queue import Claimed
    from modelport.optimize.run import Registered
    from modelport.optimize.spec import OptimizeSpec
    from modelport.optimize.working import Produced, Working


def check_optimize_spec(raw: Any, principal: Principal, settings: Settings) -> OptimizeSpec:
    from modelport.optimize.spec import load_optimize_spec

    spec = load_optimize_spec(raw)
    ref = parse_ref(spec.source)  # 400 for a malformed reference
    check_name(spec.registration.model or ref.name)
    if spec.registration.alias:
        check_name(spec.registration.alias, kind="alias")
    if spec.data is not None:
        if spec.data.source == "dataset":
            check_name(str(spec.data.name), kind="dataset")
        if spec.data.path is not None:
            check_data_path(spec.data.path, principal, settings)
    return spec


def target_of(spec: OptimizeSpec) -> str:
    return spec.registration.model or parse_ref(spec.source).name


class OptimizeKind:
    name = "optimize"

    def prepare(self, spec: dict[str, Any], principal: Principal, settings: Settings) -> Prepared:
        checked = check_optimize_spec(spec, principal, settings)
        data = checked.data
        datasets = (str(data.name),) if data is not None and data.source == "dataset" else ()
        return Prepared(spec=spec, target=target_of(checked), datasets=datasets, sources=(checked.source,))

    def run(self, job: Claimed, env: RunEnv) -> dict[str, Any]:
        from modelport.optimize.run import Callbacks, Stopped, run_optimize
        from modelport.optimize.working import load_examples
        from modelport.training.loop import TrainingCancelled

        spec = check_optimize_spec(job.spec, job.owner, env.settings)
        target = target_of(spec)
        source_view = versions.get_by_ref(env.db, job.owner, parse_ref(spec.source))
        if spec.data is None:
            data = training_data_of(env, job.owner, source_view)
            spec = check_optimize_spec({**job.spec, "data": data}, job.owner, env.settings)
            env.report({"type": "log", "message": f"data: {data.get('source')} (what the source was trained on)"})
        assert spec.data is not None
        source_ref = f"{source_view.model}:{source_view.version}"
        source = _working(env, source_ref, source_view.manifest, source_view.files)
        env.report({"type": "started", "source": source_ref, "steps": [s.kind for s in spec.steps]})
        examples = load_examples(spec.data, source.manifest, source.input_shape, dataset_resolver(env, job.owner))

        def registered(index: int) -> Registered | None:
            return _registered(env, job, target, index)

        def register(index: int, produced: Produced, report: dict[str, Any]) -> Registered:
            return _register(env, job, target, index, produced, report)

        calls = Callbacks(report=env.report, should_stop=env.should_stop, registered=registered, register=register)
        try:
            summaries = run_optimize(spec, source, examples, env.workdir, calls)
        except (Stopped, TrainingCancelled):
            raise JobStopped() from None
        last = summaries[-1]["ref"]
        if spec.registration.alias:
            number = int(last.rsplit(":", 1)[1])
            aliases.set_alias(env.db, job.owner, target, spec.registration.alias, number, client=f"job:{job.id}")
        return {"model": target, "source": source_ref, "versions": [s["ref"] for s in summaries], "steps": summaries}


def training_data_of(env: RunEnv, owner: Principal, version: Any) -> dict[str, Any]:
    """The ``data`` section of the job that made ``version`` or, failing that, its nearest ancestor's.

    Train and optimize jobs keep their spec, so a version they registered knows what it was trained
    and measured on. The owner's rights are checked again on the result (``check_optimize_spec``).
    """
    from modelport.jobs.tables import Job

    for link in lineage.chain(env.db, owner, version.model, version.version):
        job_id = link.get("job")
        if not job_id:
            continue
        with env.db.read() as s:
            found = s.get(Job, str(job_id))
        data = found.spec.get("data") if found is not None and found.kind in ("train", "optimize") else None
        if isinstance(data, dict):
            return data  # a training spec's preprocess is ignored: the version's manifest records it
    raise BadRequest(
        message=f"optimize needs data: {version.model}:{version.version} was not made by a Modelport job, "
        "so give data (e.g. {source: mnist, path: ...}) in the spec or --data-path"
    )


def _working(env: RunEnv, ref: str, manifest: dict[str, Any], files: list[Any]) -> Working:
    from modelport.optimize.working import load_working

    folder = env.workdir / "versions" / ref.replace(":", "-")
    return load_working(env.store, ref, manifest, {f.path: f.sha256 for f in files}, folder)


def _registered(env: RunEnv, job: Claimed, target: str, index: int) -> Registered | None:
    """The version an earlier attempt of this job registered for step ``index``, if any."""
    from modelport.optimize.run import Registered

    try:
        found, _ = versions.list_versions(env.db, job.owner, target, limit=1000)
    except (ModelNotFound, VersionNotFound):
        return None
    for item in found:
        lineage = item.manifest.get("lineage") or {}
        transform = lineage.get("transform") or {}
        if lineage.get("job") == job.id and isinstance(transform, dict) and transform.get("step") == index:
            full = versions.get_version(env.db, job.owner, target, item.version)
            ref = f"{target}:{item.version}"
            return Registered(ref, item.version, _working(env, ref, full.manifest, full.files))
    return None


def _register(
    env: RunEnv, job: Claimed, target: str, index: int, produced: Produced, report: dict[str, Any]
) -> Registered:
    from modelport.optimize.run import Registered
    from modelport.optimize.working import Working
    from modelport.store.bundle import Manifest

    if env.should_stop():
        raise JobStopped()
    manifest = {**produced.manifest, "lineage": {"parent": report["parent"]}}
    done = register_bundle(
        env,
        job.owner,
        job_id=job.id,
        bundle_dir=produced.folder,
        manifest=manifest,
        model=target,
        alias=None,
        transform={**produced.transform, "step": index},
        report=report,
    )
    ref = f"{target}:{done['version']}"
    full = versions.get_version(env.db, job.owner, target, int(done["version"]))
    working = Working(
        ref=ref,
        manifest=Manifest.model_validate(full.manifest),
        folder=produced.folder,
        layers=produced.layers,
        input_shape=produced.input_shape,
        model=produced.model,
    )
    return Registered(ref, int(done["version"]), working)
