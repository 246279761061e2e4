"""``optimize`` jobs: a chain of prune / finetune / quantize / distill / export steps on a version.

Submit-time checks: the spec (400 with the field path), the source version (the submitter must be
able to read it; 404 otherwise), the data path (as for training) and the target model (writable).
In the job's process, :func:`modelport.optimize.run.run_optimize` does the work; this module supplies
its registry callbacks, through ``env.services`` (the worker reads and writes the registry). Each
step's result is registered as soon as it is measured, with ``lineage.job`` and
``lineage.transform.step``, so a retry after a crash finds it and goes on from the next step.
"""

from __future__ import annotations

import shutil
from typing import TYPE_CHECKING, Any

from modelport.auth.principals import Principal
from modelport.config import Settings
from modelport.jobs.kinds import JobStopped, Prepared, RunEnv, check_data_path, dataset_resolver
from modelport.refs import check_name, parse_ref

if TYPE_CHECKING:
    from modelport.jobs.queue import Claimed
    from modelport.jobs.services import VersionInfo
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
        source_info = env.services.resolve(spec.source)
        if spec.data is None:
            data = env.services.training_data(source_info.model, source_info.version)
            spec = check_optimize_spec({**job.spec, "data": data}, job.owner, env.settings)
            env.report({"type": "log", "message": f"data: {data.get('source')} (what the source was trained on)"})
        assert spec.data is not None
        source = _working(env, source_info)
        env.report({"type": "started", "source": source_info.ref, "steps": [s.kind for s in spec.steps]})
        examples = load_examples(spec.data, source.manifest, source.input_shape, dataset_resolver(env))

        def registered(index: int) -> Registered | None:
            return _registered(env, index)

        def register(index: int, produced: Produced, report: dict[str, Any]) -> Registered:
            return _register(env, index, produced, report)

        calls = Callbacks(report=env.report, should_stop=env.should_stop, registered=registered, register=register)
        try:
            summaries = run_optimize(spec, source, examples, env.workdir, calls)
        except (Stopped, TrainingCancelled):
            raise JobStopped() from None
        last = summaries[-1]["ref"]
        if spec.registration.alias:
            env.services.set_alias(spec.registration.alias, int(last.rsplit(":", 1)[1]))
        return {
            "model": target,
            "source": source_info.ref,
            "versions": [s["ref"] for s in summaries],
            "steps": summaries,
        }


def _working(env: RunEnv, version: VersionInfo) -> Working:
    """The version's files, copied (hash-checked) by the worker into the job's folder, and its network."""
    from modelport.optimize.working import load_working

    folder = env.workdir / "versions" / version.ref.replace(":", "-")
    if folder.exists():
        shutil.rmtree(folder)
    env.services.fetch_version(version.model, version.version, folder)
    return load_working(version.ref, version.manifest, folder)


def _registered(env: RunEnv, index: int) -> Registered | None:
    """The version an earlier attempt of this job registered for step ``index``, if any."""
    from modelport.optimize.run import Registered

    found = env.services.registered_step(index)
    if found is None:
        return None
    return Registered(found.ref, found.version, _working(env, found))


def _register(env: RunEnv, index: int, produced: Produced, report: dict[str, Any]) -> Registered:
    from modelport.optimize.run import Registered
    from modelport.optimize.working import Working
    from modelport.store.bundle import Manifest

    if env.should_stop():
        raise JobStopped()
    manifest = {**produced.manifest, "lineage": {"parent": report["parent"]}}
    done = env.services.register(
        produced.folder, manifest, transform={**produced.transform, "step": index}, report=report
    )
    ref = f"{done.model}:{done.version}"
    working = Working(
        ref=ref,
        manifest=Manifest.model_validate(done.manifest),
        folder=produced.folder,
        layers=produced.layers,
        input_shape=produced.input_shape,
        model=produced.model,
    )
    return Registered(ref, done.version, working)
